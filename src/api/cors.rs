//! Cross-origin resource sharing as TorchServe configures it: off unless
//! `cors_allowed_origin` is set; `cors_allowed_methods` and `cors_allowed_headers` answer
//! preflight requests.

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::config::Cors;

/// The CORS layer for `cors`, or `None` when no origin is allowed.
pub fn layer(cors: &Cors) -> Option<CorsLayer> {
    let origin = cors.allowed_origin.as_deref()?.trim();
    let origin = if origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(list::<HeaderValue>(origin))
    };
    let methods = match cors.allowed_methods.as_deref() {
        Some("*") => AllowMethods::any(),
        Some(methods) => AllowMethods::list(list::<Method>(methods)),
        None => AllowMethods::list([]),
    };
    let headers = match cors.allowed_headers.as_deref() {
        Some("*") => AllowHeaders::any(),
        Some(headers) => AllowHeaders::list(list::<HeaderName>(headers)),
        None => AllowHeaders::list([]),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(methods)
            .allow_headers(headers),
    )
}

/// The comma-separated items of `text` that parse as `T` (a bad one is skipped with a warning).
fn list<T: std::str::FromStr>(text: &str) -> Vec<T> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .filter_map(|item| {
            let parsed = item.parse().ok();
            if parsed.is_none() {
                tracing::warn!("CORS setting {item:?} is not valid and is left out");
            }
            parsed
        })
        .collect()
}
