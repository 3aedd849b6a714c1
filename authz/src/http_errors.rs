//! One JSON error shape for every service: a response layer that gives any error status a
//! `{"error": "..."}` body — the router's own 405, and axum's plain-text 404/413/415 rejections —
//! so clients and operators never meet an empty or plain-text error.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::Response;

/// axum's rejections are one short sentence; a longer body is not one of them and is cut.
const MAX_TEXT: usize = 4096;

/// Use as `router.layer(axum::middleware::map_response(json_error_body))`. JSON bodies and
/// success responses pass through untouched.
pub async fn json_error_body(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = serde_json::json!({ "error": error, "status": status.as_u16() }).to_string();
    Response::from_parts(parts, Body::from(body))
}
