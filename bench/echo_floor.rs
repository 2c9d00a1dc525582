//! The floor of the big-body bench (bench/bigbody.py): an HTTP server of the same stack as
//! torchyard (tokio, hyper through axum) that answers a POST's body itself, with no worker
//! behind it (and a `/ping` to wait for). What wrk measures against it is what the client, the loopback TCP and the HTTP
//! layer cost on this machine before any model server does anything.
//!
//! `cargo run --release --example echo_floor -- PORT`

use axum::{
    body::Bytes,
    extract::DefaultBodyLimit,
    routing::{get, post},
    serve::ListenerExt,
    Router,
};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18190);
    let app = Router::new()
        .route("/ping", get(|| async { "{}" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .layer(DefaultBodyLimit::max(64 << 20));
    // No Nagle delay on answers, as torchyard's listeners.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await
}
