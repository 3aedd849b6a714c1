//! ARDS's part in the operations listener (`authz::ops`): ready when its rule store answers;
//! its gauges are each PEP's stream lag — revisions issued to it that it has not acknowledged
//! (the `since` of its last poll) — refreshed at every scrape.

use authz::ops::{Probe, ProbeFuture};

use crate::service::Ards;

/// Revisions of a PEP's stream issued but not acknowledged by its last poll, label `pep`.
pub const PEP_LAG: &str = "csap_ards_pep_revisions_behind";
/// Latest revision issued to a PEP, label `pep`.
pub const PEP_REVISION: &str = "csap_ards_pep_revision";
/// Seconds since a PEP last polled, label `pep` (a PEP that stopped polling grows here).
pub const PEP_SILENCE: &str = "csap_ards_pep_seconds_since_poll";

impl Probe for Ards {
    fn name(&self) -> &'static str {
        "ards"
    }

    fn ready(&self) -> ProbeFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.peps()
                .await
                .map(|_| ())
                .map_err(|e| format!("its rule store does not answer: {e}"))
        })
    }

    fn collect(&self) -> ProbeFuture<'_, ()> {
        Box::pin(async move {
            let Ok(peps) = self.peps().await else { return };
            let now = self.clock().now().ok();
            for pep in peps {
                let label = [("pep", pep.pep_id.clone())];
                metrics::gauge!(PEP_REVISION, &label).set(pep.revision as f64);
                // A PEP that never polled since ARDS started is behind by all of its stream.
                let acked = pep.acknowledged.unwrap_or(0);
                metrics::gauge!(PEP_LAG, &label).set(pep.revision.saturating_sub(acked) as f64);
                if let (Some(now), Some(seen)) = (now, pep.last_seen) {
                    metrics::gauge!(PEP_SILENCE, &label).set((now - seen).max(0) as f64);
                }
            }
        })
    }
}
