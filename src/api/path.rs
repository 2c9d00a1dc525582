//! Path parameters that answer a malformed path (say `/predictions/%FF`) with the JSON error
//! body, not axum's plain-text rejection.

use axum::extract::{FromRequestParts, Path as AxumPath};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Path`, rejecting with a 400 [`ApiError`].
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AxumPath::<T>::from_request_parts(parts, state)
            .await
            .map(|AxumPath(value)| Path(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("Invalid path parameter: {}", rejection.body_text()))
            })
    }
}
