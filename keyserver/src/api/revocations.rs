//! `GET /v1/revocations?since=SEQ&wait=SECS`: the identity revocation stream as a long poll
//! (see [`crate::revocation`]).

use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::Json;
use serde::Deserialize;

use super::peers::DevicePeer;
use super::S;
use crate::error::ApiError;
use crate::revocation::{RevocationsResponse, MAX_WAIT_SECS};
use crate::server::State;

/// Most events in one answer (a client asks again from the last one).
const PAGE: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevocationsQuery {
    /// Last sequence number the client applied; absent: only the head is returned.
    since: Option<i64>,
    /// Seconds to wait for an event when there is none after `since` (default 0).
    wait: Option<u64>,
}

/// `GET /v1/revocations`: for enrolled, unrevoked devices only (mTLS peer).
pub(crate) async fn list(
    AxState(st): AxState<S>,
    DevicePeer(_device): DevicePeer,
    q: Result<Query<RevocationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RevocationsResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    if q.since.is_some_and(|s| s < 0) {
        return Err(ApiError::bad(
            "since",
            "must be a sequence number (0 or more)",
        ));
    }
    let wait_secs = q.wait.unwrap_or(0);
    if wait_secs > MAX_WAIT_SECS {
        return Err(ApiError::bad(
            "wait",
            format!("at most {MAX_WAIT_SECS} seconds"),
        ));
    }
    // Answer before the request timeout cuts the wait off with a 503.
    let wait = Duration::from_secs(wait_secs).min(
        st.limits
            .request_timeout
            .saturating_sub(Duration::from_secs(1)),
    );
    // Subscribed before the read: an event committed after the read still wakes this request.
    let mut woken = st.store.watch_revocations();
    let first = read(&st, q.since).await?;
    let Some(since) = q.since else {
        return Ok(Json(first));
    };
    // `since` beyond the head is a gap the client must see at once, not after a wait.
    if !first.events.is_empty() || since > first.head || wait.is_zero() {
        return Ok(Json(first));
    }
    if tokio::time::timeout(wait, woken.changed()).await.is_err() {
        return Ok(Json(first));
    }
    Ok(Json(read(&st, Some(since)).await?))
}

/// The head and, with `since`, the events after it.
async fn read(st: &State, since: Option<i64>) -> Result<RevocationsResponse, ApiError> {
    Ok(st.store.revocations(since, PAGE).await?)
}
