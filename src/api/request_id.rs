//! TorchServe's request ids: each HTTP request gets a fresh id, the handler sees it in
//! `context.request_ids`, and the response carries it as `x-request-id`, errors included.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The response header that names the request.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware: runs the request with a new id and puts that id on its response.
pub async fn tag(request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let value = HeaderValue::from_str(&id);
    let mut response = REQUEST_ID.scope(id, next.run(request)).await;
    if let Ok(value) = value {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// The id of the HTTP request being handled; a fresh one outside [`tag`].
pub fn current() -> String {
    REQUEST_ID
        .try_with(String::clone)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handler_and_the_response_share_the_id() {
        use axum::{routing::get, Router};
        use tower::ServiceExt;

        let app = Router::new()
            .route("/", get(|| async { current() }))
            .layer(axum::middleware::from_fn(tag));
        let response = app
            .oneshot(Request::get("/").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let header = response.headers()[&X_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(body, header.as_bytes());
        assert_ne!(current(), header);
    }
}
