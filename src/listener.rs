//! The listeners' connection handling: one accept loop per listener, for HTTP and HTTPS, that
//! caps open connections, drops clients that are slow to send their request headers, backs off
//! on accept errors instead of spinning, and on shutdown stops accepting while open connections
//! finish their requests.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// File descriptors kept out of the connection budget: worker sockets and pipes, archives,
/// downloads, logs. At least this many, or a quarter of the limit when that is more.
const RESERVED_FDS: u64 = 256;
/// The default connection cap per listener never goes above this, however high the fd limit:
/// each idle connection still costs buffers and a task.
const MAX_DEFAULT_CONNECTIONS: u64 = 10_000;
/// How long the accept loop pauses after an error such as EMFILE before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How each listener treats its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a client has to send a complete request head once the server waits for one
    /// (a new connection, or a kept-alive one after its previous response); also bounds the
    /// TLS handshake.
    pub header_read_timeout: Duration,
    /// Connections open at once on one listener; further clients wait in the accept backlog.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits from the configuration. Raises the soft open-file limit to the hard one and,
    /// when `max_connections` is not configured, derives it from that limit.
    pub fn new(header_read_timeout: Duration, max_connections: Option<usize>) -> Self {
        let fd_limit = raise_fd_limit();
        let max_connections = max_connections.unwrap_or_else(|| default_cap(fd_limit));
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
/// the three listeners.
fn default_cap(fd_limit: u64) -> usize {
    let reserve = RESERVED_FDS.max(fd_limit / 4);
    let per_listener = fd_limit.saturating_sub(reserve) / 3;
    per_listener.clamp(1, MAX_DEFAULT_CONNECTIONS) as usize
}

/// The TLS acceptor for a PEM certificate chain and private key; speaks HTTP/1.1 only.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cannot = || format!("cannot load {} and {}", cert.display(), key.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(cannot)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(cannot)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(cannot)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until `stop` is cancelled, then
/// stops accepting and waits for the open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
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
        let (http, router, tls, watcher) = (
            http.clone(),
            router.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, client, &http, router, watcher).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, client, &http, router, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves HTTP/1.1 on one accepted connection until it closes; each request carries the
/// client's address as `ConnectInfo<SocketAddr>`.
async fn serve_connection<I>(
    io: I,
    client: SocketAddr,
    http: &http1::Builder,
    router: Router,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(client));
        request
    });
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection closed: {e}");
    }
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
        assert_eq!(default_cap(1024), 256);
        assert_eq!(default_cap(4096), 1024);
        assert_eq!(default_cap(100), 1);
        assert_eq!(default_cap(1 << 20), 10_000);
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
