//! The service's error type and its mapping to HTTP: client mistakes keep their status and say
//! what is wrong (and in which field); internal failures become a generic 500, detail logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;
use crate::wire::ErrorBody;

/// Everything an ARDS operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ArdsError {
    /// Malformed input (HTTP 400).
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    /// Unknown issuer or bad signature (HTTP 403).
    #[error("{message}")]
    Untrusted { message: String, field: String },
    /// A rule id already held with other content (HTTP 409).
    #[error("{message}")]
    Conflict { message: String, field: String },
    /// Per-PEP exception rate limit hit (HTTP 429).
    #[error("too many exception reports from {pep_id}; slow down")]
    Throttled { pep_id: String },
    /// No such route (HTTP 404).
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// Wrong method for an existing route (HTTP 405).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Body over the route's limit (HTTP 413).
    #[error("request body too large")]
    TooLarge,
    /// Store failure (HTTP 500, detail only in the log).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data directory locked by another process or not private-able (start-up only).
    #[error(transparent)]
    StateDir(#[from] authz::statedir::StateDirError),
    /// The wall clock is unusable: no time-driven decision is made (HTTP 503).
    #[error("ARDS cannot tell the time: {0}")]
    Clock(#[from] authz::clock::ClockError),
    /// Anything else internal (HTTP 500, detail only in the log).
    #[error("internal error: {0}")]
    Internal(String),
    /// No active client certificate (401) or a role that may not do this (403).
    #[error("{}", .0.message())]
    Caller(authz::principal::Refusal),
}

impl From<authz::principal::Refusal> for ArdsError {
    fn from(r: authz::principal::Refusal) -> Self {
        ArdsError::Caller(r)
    }
}

impl ArdsError {
    pub(crate) fn bad(message: impl Into<String>, field: impl Into<String>) -> Self {
        ArdsError::BadRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            ArdsError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ArdsError::Untrusted { .. } => StatusCode::FORBIDDEN,
            ArdsError::Conflict { .. } => StatusCode::CONFLICT,
            ArdsError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ArdsError::NotFound(_) => StatusCode::NOT_FOUND,
            ArdsError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ArdsError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ArdsError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            ArdsError::Clock(_) => StatusCode::SERVICE_UNAVAILABLE,
            ArdsError::Store(_) | ArdsError::Internal(_) | ArdsError::StateDir(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ArdsError::Caller(r) => r.status(),
        }
    }

    fn body(&self) -> ErrorBody {
        match self {
            ArdsError::BadRequest { message, field } => ErrorBody {
                error: message.clone(),
                field: field.clone(),
            },
            ArdsError::Untrusted { message, field } | ArdsError::Conflict { message, field } => {
                ErrorBody {
                    error: message.clone(),
                    field: Some(field.clone()),
                }
            }
            ArdsError::Store(StoreError::Conflict { .. }) => ErrorBody {
                error: self.to_string(),
                field: None,
            },
            ArdsError::Store(_) | ArdsError::Internal(_) | ArdsError::StateDir(_) => ErrorBody {
                error: "internal error; see the ARDS log".into(),
                field: None,
            },
            other => ErrorBody {
                error: other.to_string(),
                field: None,
            },
        }
    }
}

impl IntoResponse for ArdsError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        (status, Json(self.body())).into_response()
    }
}
