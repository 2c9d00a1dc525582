//! The `total` entry of `Server-Timing`: how long the server spent on an inference request,
//! from its arrival to its answer's headers, on every answer, errors included.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::timing::{entry, SERVER_TIMING};

/// Middleware: appends `total;dur=MS` to the answer's `Server-Timing` (creating it when the
/// answer has none).
pub async fn total(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let total = entry("total", started.elapsed());
    let value = match response
        .headers()
        .get(SERVER_TIMING)
        .and_then(|v| v.to_str().ok())
    {
        Some(timings) => format!("{timings}, {total}"),
        None => total,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(SERVER_TIMING, value);
    }
    response
}
