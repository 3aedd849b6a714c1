//! Identity revocation events: every disabled user, revoked device, revoked application digest
//! and revoked key version becomes a row of the `revocations` table (written in the same
//! transaction as the change, by the store), served to devices as a long-poll stream
//! (`GET /v1/revocations?since=SEQ&wait=SECS`, `crate::api::revocations`) so each mount drops
//! what it holds at once.
//!
//! Sequence numbers are strictly increasing and never reused (SQLite: `AUTOINCREMENT` keys).
//! Rows are never deleted, so a client that asks from a sequence number the server has (its own `head`
//! or below) misses nothing; one that asks from beyond `head` (a restored or replaced database)
//! must treat that as a gap and drop everything it holds.

// The event types are the wire's: devices parse them (keyserver-client).
pub use keyserver_client::revocation::*;
