//! The wire types of identity revocation events: every disabled user, revoked device, revoked
//! application digest and revoked key version becomes a row of the key server's `revocations`
//! table (written in the same transaction as the change), served to devices as a long-poll
//! stream (`GET /v1/revocations?since=SEQ&wait=SECS`) so each mount drops what it holds at once.
//!
//! Sequence numbers are SQLite `AUTOINCREMENT` keys: strictly increasing, never reused. Rows are
//! never deleted, so a client that asks from a sequence number the server has (its own `head`
//! or below) misses nothing; one that asks from beyond `head` (a restored or replaced database)
//! must treat that as a gap and drop everything it holds.

use serde::{Deserialize, Serialize};

/// What was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// `subject` is a user name (disabled: every token of theirs is void).
    User,
    /// `subject` is a device name (its certificates are revoked).
    Device,
    /// `subject` is an application digest (BLAKE3 hex).
    App,
    /// `subject` is a scope name, `version` the revoked seed version.
    KeyVersion,
}

impl RevocationKind {
    /// The kind's name in the `revocations` table and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::User => "user",
            RevocationKind::Device => "device",
            RevocationKind::App => "app",
            RevocationKind::KeyVersion => "key_version",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => RevocationKind::User,
            "device" => RevocationKind::Device,
            "app" => RevocationKind::App,
            "key_version" => RevocationKind::KeyVersion,
            _ => return None,
        })
    }
}

/// One revocation as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    pub seq: i64,
    /// Unix seconds of the change.
    pub time: i64,
    pub kind: RevocationKind,
    pub subject: String,
    /// The seed version, for [`RevocationKind::KeyVersion`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Answer of `GET /v1/revocations`: events after `since`, oldest first, and the newest sequence
/// number the server has (`0` before any revocation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationsResponse {
    pub head: i64,
    pub events: Vec<RevocationEvent>,
}

/// The longest a request may wait for an event, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
