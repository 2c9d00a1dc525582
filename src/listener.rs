//! The listeners' connection handling, one accept policy for every listener, HTTP/1.1 and gRPC
//! alike: connections are capped per listener out of one open-file budget, accept errors such
//! as EMFILE back off instead of spinning, TLS handshakes and request heads have a deadline,
//! idle connections are closed, and on shutdown accepting stops, idle connections close at
//! once and open ones finish their requests.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// File descriptors kept out of the connection budget: worker sockets and pipes, archives,
/// downloads, logs. At least this many, or a quarter of the limit when that is more.
const RESERVED_FDS: u64 = 256;
/// The default connection cap per listener never goes above this, however high the fd limit:
/// each idle connection still costs buffers and a task.
const MAX_DEFAULT_CONNECTIONS: u64 = 10_000;
/// How long the accept loop pauses after an error such as EMFILE before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a gRPC connection is pinged (HTTP/2 keep-alive) while the server hears nothing,
/// and how long the answer may take before the connection is closed as dead.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a gRPC connection told to go away (GOAWAY) stays open with no call.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Calls open at once on one gRPC connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// How each listener treats its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a client has to send a complete request head once the server waits for one
    /// (a new connection, or a kept-alive one after its previous response); also bounds the
    /// TLS handshake, and how long a gRPC connection may stay open with no call.
    pub header_read_timeout: Duration,
    /// Connections open at once on one listener; further clients wait in the accept backlog.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits from the configuration for `listeners` listeners. Raises the soft open-file
    /// limit to the hard one and, when `max_connections` is not configured, shares that limit
    /// (less a reserve) among the listeners.
    pub fn new(
        header_read_timeout: Duration,
        max_connections: Option<usize>,
        listeners: u64,
    ) -> Self {
        let fd_limit = raise_fd_limit();
        let max_connections = max_connections.unwrap_or_else(|| default_cap(fd_limit, listeners));
        tracing::info!(
            "open-file limit {fd_limit}: at most {max_connections} connections per listener"
        );
        Self {
            header_read_timeout,
            max_connections: max_connections.max(1),
        }
    }
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Connections per listener for an open-file limit: what is left after the reserve, shared by
/// the `listeners` listeners.
fn default_cap(fd_limit: u64, listeners: u64) -> usize {
    let reserve = RESERVED_FDS.max(fd_limit / 4);
    let per_listener = fd_limit.saturating_sub(reserve) / listeners.max(1);
    per_listener.clamp(1, MAX_DEFAULT_CONNECTIONS) as usize
}

/// An accepted connection, over TLS or not.
type Connection = Either<TlsStream<TcpStream>, TcpStream>;

/// Serves `router` over HTTP/1.1 on `listener` (over TLS when `tls` is set) until `stop` is
/// cancelled, then stops accepting and waits for the open connections to finish their
/// requests; idle ones close at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = move |io: Connection, client: SocketAddr, stop: CancellationToken| {
        let service = router.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(client));
                request
            },
        );
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        async move {
            tokio::pin!(conn);
            let closed = tokio::select! {
                closed = conn.as_mut() => closed,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = closed {
                tracing::debug!("connection closed: {e}");
            }
        }
    };
    accept(listener, tls, limits, stop, connection).await;
}

/// Serves gRPC (`routes`, HTTP/2 only) on `listener` as [`serve`] serves HTTP/1.1: HTTP/2
/// keep-alive pings find dead clients, at most [`MAX_CONCURRENT_STREAMS`] calls run at once
/// per connection, and a connection with no call open for `header_read_timeout` (from its
/// start or its last call) is closed, at once on shutdown.
pub async fn serve_grpc<S, B>(
    listener: TcpListener,
    routes: S,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let idle_limit = limits.header_read_timeout;
    let connection = move |io: Connection, client: SocketAddr, stop: CancellationToken| {
        let calls = Arc::new(watch::Sender::new(0usize));
        let mut open_calls = calls.subscribe();
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(ConnectInfo(client));
            let call = Call::open(&calls);
            let answer = routes.clone().oneshot(request);
            async move {
                let response = answer.await?;
                // The call is open until its answer's body has gone out (or was dropped).
                Ok::<_, Infallible>(response.map(|body| {
                    body.map_frame(move |frame| {
                        let _open = &call;
                        frame
                    })
                }))
            }
        });
        let conn = http.serve_connection(TokioIo::new(io), service);
        async move {
            tokio::pin!(conn);
            tokio::select! {
                closed = conn.as_mut() => {
                    if let Err(e) = closed {
                        tracing::debug!("gRPC connection closed: {e}");
                    }
                    return;
                }
                () = idle(&mut open_calls, idle_limit) => {}
                () = stop.cancelled() => {
                    // With no call open, the connection closes at once.
                    if *open_calls.borrow() == 0 {
                        return;
                    }
                }
            }
            // Idle, or shutting down with calls open: GOAWAY lets the calls open finish; the
            // connection goes when none has been open for a moment.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = idle(&mut open_calls, CLOSE_GRACE) => {}
            }
        }
    };
    accept(listener, tls, limits, stop, connection).await;
}

/// A call open on a gRPC connection, counted in its `calls` while it lives.
struct Call(Arc<watch::Sender<usize>>);

impl Call {
    fn open(calls: &Arc<watch::Sender<usize>>) -> Self {
        calls.send_modify(|n| *n += 1);
        Self(calls.clone())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Returns once no call has been open on a connection for `limit`.
async fn idle(calls: &mut watch::Receiver<usize>, limit: Duration) {
    loop {
        if calls.wait_for(|&n| n == 0).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(limit) => return,
            changed = calls.changed() => if changed.is_err() { return },
        }
    }
}

/// The accept loop every listener runs: takes a slot of the listener's cap before it accepts
/// (beyond the cap, clients wait in the backlog), backs off on errors such as EMFILE, gives a
/// TLS handshake `header_read_timeout`, and runs `connection` for each accepted client. When
/// `stop` is cancelled it stops accepting and waits for the connections to end.
async fn accept<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
    connection: F,
) where
    F: Fn(Connection, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, client) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::warn!("accept error: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        let (connection, stopping) = (connection.clone(), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            let io = match tls {
                None => Either::Right(stream),
                Some(tls) => {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(handshake_timeout, handshake).await {
                        Ok(Ok(stream)) => Either::Left(stream),
                        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    }
                }
            };
            connection(io, client, stopping).await
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_leaves_room_for_files_and_workers() {
        assert_eq!(default_cap(1024, 3), 256);
        assert_eq!(default_cap(4096, 3), 1024);
        assert_eq!(default_cap(1024, 5), 153);
        assert_eq!(default_cap(100, 5), 1);
        assert_eq!(default_cap(1 << 20, 5), 10_000);
    }

    #[test]
    fn soft_fd_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed to it.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let hard = limit.rlim_max;
        let soft = raise_fd_limit();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((soft, limit.rlim_cur), (hard, hard));
    }
}
