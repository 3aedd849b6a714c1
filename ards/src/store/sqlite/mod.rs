//! The embedded engine of the ARDS store: one SQLite file (WAL, full fsync on commit) holding
//! signed rules, their per-PEP release state, revocation tombstones, the per-PEP revisioned
//! event log and exception reports. [`Db`] is the synchronous core (one connection, behind a
//! mutex); [`SqliteRuleStore`] runs it on the blocking pool as a [`RuleStore`].

mod db;

use authz::blocking::Serialized;
use authz::SignedRule;
use std::path::Path;

pub use self::db::Db;
use super::{Outcome, Published, Recorded, Revoked, RuleStore, StoreError, Touched, WouldAllow};
use crate::wire::{DenialReport, ExceptionOutcome, ExceptionRecord, ListedRule, RawChanges};

/// [`Db`] as a [`RuleStore`]: each operation on the blocking pool (its commits fsync), one at a
/// time on the one connection.
#[derive(Debug, Clone)]
pub struct SqliteRuleStore {
    db: Serialized<Db>,
}

impl SqliteRuleStore {
    /// Opens (creating and migrating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Serialized::new(Db::open(path)?),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.db
            .run(f)
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

/// The next due time as an [`Outcome`] reports it.
fn due(db: &Db) -> Result<Option<i64>, StoreError> {
    Ok(Some(db.next_due()?.unwrap_or(i64::MAX)))
}

#[async_trait::async_trait]
impl RuleStore for SqliteRuleStore {
    async fn publish(
        &self,
        batch: Vec<(SignedRule, i64)>,
        now: i64,
    ) -> Result<Outcome<Vec<Published>>, StoreError> {
        self.with(move |db| {
            let mut touched = Touched::new();
            let value = db.publish(&batch, now, &mut touched)?;
            Ok(Outcome {
                value,
                touched,
                next_due: due(db)?,
            })
        })
        .await
    }

    async fn revoke(
        &self,
        rule_id: &str,
        issuer: &str,
        reason: &str,
        revoked_at: i64,
        now: i64,
    ) -> Result<Outcome<Revoked>, StoreError> {
        let (rule_id, issuer, reason) = (rule_id.to_owned(), issuer.to_owned(), reason.to_owned());
        self.with(move |db| {
            let mut touched = Touched::new();
            // Checked and revoked under the one connection's lock: nothing runs in between.
            if let Some(owner) = db.rule_issuer(&rule_id)? {
                if owner != issuer {
                    return Ok(Outcome {
                        value: Revoked::NotIssuer { owner },
                        touched,
                        next_due: None,
                    });
                }
            }
            let (known, removed_from) =
                db.revoke(&rule_id, &issuer, &reason, revoked_at, now, &mut touched)?;
            Ok(Outcome {
                value: Revoked::Tombstoned {
                    known,
                    removed_from,
                },
                touched,
                next_due: due(db)?,
            })
        })
        .await
    }

    async fn advance(&self, now: i64) -> Result<Outcome<()>, StoreError> {
        self.with(move |db| {
            let mut touched = Touched::new();
            db.advance(now, &mut touched)?;
            Ok(Outcome {
                value: (),
                touched,
                next_due: due(db)?,
            })
        })
        .await
    }

    async fn changes(&self, pep: &str, since: u64) -> Result<RawChanges, StoreError> {
        let pep = pep.to_owned();
        self.with(move |db| db.changes_raw(&pep, since)).await
    }

    async fn list(&self, pep: Option<&str>) -> Result<Vec<ListedRule>, StoreError> {
        let pep = pep.map(str::to_owned);
        self.with(move |db| db.list(pep.as_deref())).await
    }

    async fn heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(|db| db.heads()).await
    }

    async fn triage_exception(
        &self,
        pep: &str,
        report: &DenialReport,
        now: i64,
        window: i64,
        allows: WouldAllow,
    ) -> Result<Outcome<ExceptionOutcome>, StoreError> {
        let pep = pep.to_owned();
        let report = report.clone();
        self.with(move |db| {
            let mut touched = Touched::new();
            let answer = |value, touched, next_due| Outcome {
                value,
                touched,
                next_due,
            };
            let id = match db.record_exception(&pep, &report, now, window)? {
                Recorded::Duplicate { id, count } => {
                    let value = ExceptionOutcome::Duplicate {
                        exception_id: id,
                        count,
                    };
                    return Ok(answer(value, touched, None));
                }
                Recorded::New(id) => id,
            };
            let mut released = Vec::new();
            for rule in db.pending_for(&pep, now)? {
                if allows(&rule) && db.release_early(&rule.id, &pep, now, &mut touched)? {
                    released.push(rule.id);
                }
            }
            if released.is_empty() {
                let value = ExceptionOutcome::Recorded { exception_id: id };
                return Ok(answer(value, touched, None));
            }
            db.mark_released(id, &released)?;
            let next_due = due(db)?;
            let value = ExceptionOutcome::Released {
                exception_id: id,
                rule_ids: released,
            };
            Ok(answer(value, touched, next_due))
        })
        .await
    }

    async fn exceptions(&self, after: i64, all: bool) -> Result<Vec<ExceptionRecord>, StoreError> {
        self.with(move |db| db.exceptions(after, all)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Removal, RemovalReason};
    use authz::Rule;

    fn signed(id: &str, targets: &[&str], nb: i64, na: i64) -> SignedRule {
        SignedRule {
            rule: Rule {
                delegates_to: None,
                delegated_by: None,
                id: id.into(),
                issuer: "authz".into(),
                request_id: "req".into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
                not_before: nb,
                not_after: na,
                policy: "permit(principal, action, resource);".into(),
            },
            // The store does not verify; the service does before calling it.
            signature: "00".into(),
        }
    }

    #[test]
    fn release_and_expiry_follow_the_clock_and_deltas_compact() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Db::open(&dir.path().join("t.db")).unwrap();
        let mut touched = Touched::new();
        let batch = vec![
            (signed("a", &["p1", "p2"], 100, 200), 90),
            (signed("b", &["p1"], 500, 600), 490),
        ];
        s.publish(&batch, 50, &mut touched).unwrap();
        assert!(touched.is_empty(), "nothing due at 50");
        assert_eq!(s.next_due().unwrap(), Some(90));

        s.advance(90, &mut touched).unwrap();
        assert_eq!(touched.get("p1"), Some(&1));
        assert_eq!(touched.get("p2"), Some(&1));
        assert_eq!(s.next_due().unwrap(), Some(200));
        let at1 = s.changes("p1", 0).unwrap();
        assert!(at1.reset && at1.upserts.len() == 1 && at1.revision == 1);

        // Expiry at 200 removes `a`; a delta from rev 0.. would be a reset, from 1 a removal.
        s.advance(200, &mut touched).unwrap();
        let d = s.changes("p1", 1).unwrap();
        assert!(!d.reset && d.upserts.is_empty());
        assert_eq!(
            d.removals,
            vec![Removal {
                rule_id: "a".into(),
                reason: RemovalReason::Expired
            }]
        );
        assert_eq!(s.next_due().unwrap(), Some(490));

        // A revision newer than the head (store rebuilt) means a full snapshot.
        let r = s.changes("p1", 99).unwrap();
        assert!(r.reset && r.upserts.is_empty());
    }

    #[test]
    fn tombstone_only_blocks_the_same_issuer_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Db::open(&dir.path().join("t.db")).unwrap();
        let mut touched = Touched::new();
        s.revoke("x", "other", "r", 10, 10, &mut touched).unwrap();
        s.revoke("y", "authz", "r", 10, 10, &mut touched).unwrap();
        let out = s
            .publish(
                &[
                    (signed("x", &["p"], 0, 100), 0),
                    (signed("y", &["p"], 0, 100), 0),
                ],
                10,
                &mut touched,
            )
            .unwrap();
        assert_eq!(out, vec![Published::Stored, Published::Inactive]);
        let mut other = signed("x", &["p"], 0, 101);
        other.signature = "01".into();
        assert!(matches!(
            s.publish(&[(other, 0)], 10, &mut touched),
            Err(StoreError::Conflict { .. })
        ));
    }
}
