//! HTTP errors of the key server API: every failure is a JSON body `{"error", "field"?, "reason"?}`
//! with a 4xx status for client mistakes and a generic 500 (detail only in the log) otherwise.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::store::StoreError;
use crate::wire::{ErrorBody, Reason};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("request body too large")]
    TooLarge,
    #[error("denied: {0}")]
    Denied(Reason),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    /// The device's request rate is used up; `retry_after` until it may ask again.
    #[error("rate limited")]
    RateLimited { retry_after: std::time::Duration },
    #[error("request timed out")]
    Timeout,
    #[error("license session unknown or ended: open a new one")]
    SessionUnknown,
    #[error("the key server cannot tell the time, so it grants nothing: {0}")]
    Clock(#[from] crate::ClockError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Denied(Reason::NotAdmin) => StatusCode::FORBIDDEN,
            // The credential itself is not valid here: authenticate again (log in).
            ApiError::Denied(
                Reason::TokenWrongDevice
                | Reason::TokenOutdated
                | Reason::IdTokenExpired
                | Reason::IdTokenWrongAudience
                | Reason::IdTokenWrongIssuer
                | Reason::IdTokenBadSignature
                | Reason::IdTokenInvalid,
            ) => StatusCode::UNAUTHORIZED,
            // Nothing is granted unchecked: the client may try again later.
            ApiError::Denied(Reason::ProviderUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout | ApiError::Clock(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SessionUnknown => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(what),
            StoreError::NotFound(what) => ApiError::NotFound(what),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::BadRequest { message, field } => ErrorBody {
                error: message.clone(),
                field: field.clone(),
                reason: None,
            },
            ApiError::Denied(reason) => ErrorBody {
                error: reason.advice().unwrap_or("denied").into(),
                field: None,
                reason: Some(*reason),
            },
            ApiError::SessionUnknown => ErrorBody {
                error: self.to_string(),
                field: Some("session".into()),
                reason: Some(Reason::SessionUnknown),
            },
            ApiError::RateLimited { .. } => ErrorBody {
                error: self.to_string(),
                field: None,
                reason: Some(Reason::RateLimited),
            },
            ApiError::Internal(detail) => {
                // The detail stays in the server log; clients learn nothing about internals.
                tracing::error!(%detail, "internal error");
                ErrorBody {
                    error: "internal error".into(),
                    field: None,
                    reason: None,
                }
            }
            other => ErrorBody {
                error: other.to_string(),
                field: None,
                reason: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited { retry_after } = &self {
            // Whole seconds (RFC 9110), rounded up: a client that honours it is admitted.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s naming the offending field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rej| {
                if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge
                } else {
                    ApiError::BadRequest {
                        message: rej.body_text(),
                        field: None,
                    }
                }
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ApiError::BadRequest {
                message: format!("malformed JSON: {}", e.inner()),
                field: (path != ".").then_some(path),
            }
        })?;
        Ok(ApiJson(value))
    }
}
