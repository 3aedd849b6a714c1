//! authz's part in the operations listener ([`crate::ops`]): ready when its store answers;
//! its gauge is the delivery outbox (rules signed but not yet accepted by ARDS).

use crate::ops::{Probe, ProbeFuture};
use crate::service::Authz;

/// Entries waiting for ARDS: rules and revocations signed but not delivered yet.
pub const OUTBOX_DEPTH: &str = "csap_authz_outbox_depth";

impl Probe for Authz {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn ready(&self) -> ProbeFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.pending_deliveries()
                .await
                .map(|_| ())
                .map_err(|e| format!("its store does not answer: {e}"))
        })
    }

    fn collect(&self) -> ProbeFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(n) = self.pending_deliveries().await {
                metrics::gauge!(OUTBOX_DEPTH).set(n as f64);
            }
        })
    }
}
