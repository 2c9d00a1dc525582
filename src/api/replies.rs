//! Answers shared by the model and workflow management APIs: status messages, scale replies,
//! and the model-API gate's place among a change's decoding errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::facade::{self, Scaled};
use crate::state::AppState;

/// `{"status": message}`.
pub fn status(message: String) -> Json<Value> {
    Json(json!({ "status": message }))
}

/// The reply to a scale request: 200 when it waited for the workers, 202 otherwise.
pub fn scaled(scaled: Scaled) -> Response {
    let code = match scaled {
        Scaled::Done(_) => StatusCode::OK,
        Scaled::Accepted => StatusCode::ACCEPTED,
    };
    (code, status(scaled.message().to_string())).into_response()
}

/// The decoded parameters of a request that registers or updates. One that does not decode
/// is refused as the change would be: by the model-API gate first, so that no spelling of a
/// parameter learns more than that the model API is off.
pub fn gate_first<T>(state: &AppState, decoded: ApiResult<T>) -> ApiResult<T> {
    decoded.map_err(|e| facade::require_model_api(state).err().unwrap_or(e))
}
