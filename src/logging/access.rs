//! TorchServe's access log: one `ACCESS_LOG` line per request once it is answered,
//! `/127.0.0.1:64003 "POST /predictions/resnet-18 HTTP/1.1" 200 118`: the client, the request
//! line, the status and the milliseconds it took.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

/// The access log middleware of every HTTP listener; the client's address is the
/// `ConnectInfo<SocketAddr>` the listener puts into each request.
pub async fn log_access(request: Request, next: Next) -> Response {
    if !tracing::enabled!(target: "ACCESS_LOG", tracing::Level::INFO) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let client = Client(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    );
    let method = request.method().clone();
    let uri = request.uri().clone();
    let version = request.version();
    let response = next.run(request).await;
    tracing::info!(
        target: "ACCESS_LOG",
        "{client} \"{method} {uri} {version:?}\" {} {}",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

/// A client as Java prints a socket address (`/127.0.0.1:64003`); `127.0.0.1` when unknown,
/// as TorchServe writes it then.
struct Client(Option<SocketAddr>);

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "/{addr}"),
            None => f.write_str("127.0.0.1"),
        }
    }
}
