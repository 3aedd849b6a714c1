//! The audit trail's hash chain: each row's `chain` column is SHA-256 over a label, the
//! previous row's chain and a fixed encoding of every column of the row (its id included), so
//! an edited, removed or reordered row no longer links. Rows written before the chain existed
//! keep a NULL chain; the chain starts at the first row after them, from [`GENESIS`].
//!
//! Both engines compute the links inside the transaction that inserts the rows (SQLite: the
//! one writer; PostgreSQL: under the audit lock), reading the last row's chain in it, so the
//! chain follows id order. [`Verifier`] walks the rows in id order and names the first row that
//! does not link. What it cannot see: rows cut off the end (truncation) and a chain recomputed
//! whole by someone with write access to the database; signed checkpoints of the chain head
//! (a later step) are to close both.

use std::collections::VecDeque;

use ring::digest::{Context, SHA256};

use crate::wire::{AuditTamper, AuditVerification};

/// Domain separation of the link hash; a new encoding gets a new label.
const LABEL: &[u8] = b"csap-audit-v1\0";

/// The chain before its first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit row as stored, every column (the verifier and the writers hash these, not the
/// decoded [`crate::wire::AuditRecord`], so an edit the decoding would hide still shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub id: i64,
    pub time: i64,
    pub user: Option<String>,
    pub app_digest: Option<String>,
    pub device: Option<String>,
    pub asset: Option<String>,
    pub action: String,
    pub decision: String,
    /// The stored JSON text.
    pub rule_ids: String,
    pub reason: Option<String>,
    pub license_id: Option<String>,
    pub path: Option<String>,
    pub source: String,
    pub uid: Option<i64>,
    pub count: i64,
    pub spool: Option<String>,
    pub seq: Option<i64>,
    /// NULL on rows from before the chain.
    pub chain: Option<Vec<u8>>,
}

/// The columns [`ChainRow`] reads, in its field order (`user` is `username` on PostgreSQL).
pub(crate) fn chain_cols(user: &str) -> String {
    format!(
        "id, time, {user}, app_digest, device, asset, action, decision, rule_ids, reason, \
         license_id, path, source, uid, count, spool, seq, chain"
    )
}

/// The chain value of `row` following `prev`.
pub fn link(prev: &[u8; 32], row: &ChainRow) -> [u8; 32] {
    link_as(prev, row.id, row)
}

/// [`link`] as if `row` had id `id` (the verifier's search for a row moved elsewhere).
fn link_as(prev: &[u8; 32], id: i64, row: &ChainRow) -> [u8; 32] {
    let mut h = Context::new(&SHA256);
    h.update(LABEL);
    h.update(prev);
    let int = |h: &mut Context, v: i64| h.update(&v.to_be_bytes());
    let text = |h: &mut Context, s: &str| {
        h.update(&(s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    let opt_text = |h: &mut Context, s: &Option<String>| match s {
        None => h.update(&[0]),
        Some(s) => {
            h.update(&[1]);
            text(h, s);
        }
    };
    let opt_int = |h: &mut Context, v: Option<i64>| match v {
        None => h.update(&[0]),
        Some(v) => {
            h.update(&[1]);
            int(h, v);
        }
    };
    int(&mut h, id);
    int(&mut h, row.time);
    opt_text(&mut h, &row.user);
    opt_text(&mut h, &row.app_digest);
    opt_text(&mut h, &row.device);
    opt_text(&mut h, &row.asset);
    text(&mut h, &row.action);
    text(&mut h, &row.decision);
    text(&mut h, &row.rule_ids);
    opt_text(&mut h, &row.reason);
    opt_text(&mut h, &row.license_id);
    opt_text(&mut h, &row.path);
    text(&mut h, &row.source);
    opt_int(&mut h, row.uid);
    int(&mut h, row.count);
    opt_text(&mut h, &row.spool);
    opt_int(&mut h, row.seq);
    h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The chain to continue from, given the newest row before the ones being inserted: its chain,
/// or [`GENESIS`] when there is none or it predates the chain.
pub(crate) fn continue_from(last_chain: Option<Vec<u8>>) -> [u8; 32] {
    last_chain
        .and_then(|c| <[u8; 32]>::try_from(c.as_slice()).ok())
        .unwrap_or(GENESIS)
}

/// Links `rows` (new rows, in id order) onto `prev`: the (id, chain) pairs to store.
pub(crate) fn link_all(mut prev: [u8; 32], rows: &[ChainRow]) -> Vec<(i64, [u8; 32])> {
    rows.iter()
        .map(|r| {
            prev = link(&prev, r);
            (r.id, prev)
        })
        .collect()
}

/// Rows either side of a break the verifier keeps to tell a moved row from an edited one.
const WINDOW: usize = 16;

/// Checks rows fed in id order ([`Verifier::push`]) and reports the first that does not link
/// ([`Verifier::finish`]).
#[derive(Default)]
pub struct Verifier {
    rows: u64,
    unchained: u64,
    /// The last linked row's chain once the chain started.
    head: Option<[u8; 32]>,
    last_id: Option<i64>,
    /// The last rows seen, at most `2 * WINDOW + 1`.
    recent: VecDeque<ChainRow>,
    /// The first break: the row's place in `recent`, and the id before it.
    broken: Option<(usize, Option<i64>)>,
    tamper: Option<AuditTamper>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the first problem is known (the rest need not be read).
    pub fn done(&self) -> bool {
        self.tamper.is_some()
    }

    pub fn push(&mut self, row: ChainRow) {
        if self.tamper.is_some() {
            return;
        }
        self.rows += 1;
        if self.broken.is_none() {
            self.check(&row);
        }
        self.last_id = Some(row.id);
        self.recent.push_back(row);
        match self.broken {
            Some((at, _)) if self.recent.len() > at + WINDOW => self.classify(),
            Some(_) => {}
            None if self.recent.len() > WINDOW => {
                self.recent.pop_front();
            }
            None => {}
        }
    }

    /// Checks one row against the chain so far; a break is classified once the rows after it
    /// are in.
    fn check(&mut self, row: &ChainRow) {
        let linked = match (&row.chain, self.head) {
            // Before the chain started: rows from before the migration.
            (None, None) => {
                self.unchained += 1;
                return;
            }
            (None, Some(_)) => false,
            (Some(c), head) => {
                let want = link(&head.unwrap_or(GENESIS), row);
                let ok = c.as_slice() == want;
                if ok {
                    self.head = Some(want);
                }
                ok
            }
        };
        if !linked {
            self.broken = Some((self.recent.len(), self.last_id));
        }
    }

    fn classify(&mut self) {
        let Some((at, before)) = self.broken.take() else {
            return;
        };
        let row = &self.recent[at];
        let chains: Vec<[u8; 32]> = std::iter::once(GENESIS)
            .chain(
                self.recent
                    .iter()
                    .filter_map(|r| r.chain.as_deref()?.try_into().ok()),
            )
            .collect();
        // Moved: the row's content links, under another row's id, from some chain nearby, to
        // its own chain or that row's.
        let moved_from = row.chain.as_ref().and_then(|own| {
            self.recent
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != at)
                .find(|(_, other)| {
                    chains.iter().any(|prev| {
                        let h = link_as(prev, other.id, row);
                        own.as_slice() == h || other.chain.as_deref() == Some(&h[..])
                    })
                })
                .map(|(_, other)| other.id)
        });
        self.tamper = Some(match (moved_from, before) {
            (Some(from), _) => AuditTamper::Reordered {
                id: row.id,
                content_of: from,
            },
            (None, Some(prev)) if row.id > prev + 1 => AuditTamper::Deleted {
                id: row.id,
                after: prev,
            },
            _ => AuditTamper::Edited { id: row.id },
        });
        self.recent.clear();
    }

    pub fn finish(mut self) -> AuditVerification {
        self.classify();
        AuditVerification {
            rows: self.rows,
            unchained: self.unchained,
            head: self.head.map(hex::encode),
            tamper: self.tamper,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: i64) -> Vec<ChainRow> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|id| {
                let mut r = ChainRow {
                    id,
                    time: 1000 + id,
                    user: Some(format!("user{id}")),
                    app_digest: None,
                    device: Some("ws-1".into()),
                    asset: None,
                    action: "read".into(),
                    decision: "grant".into(),
                    rule_ids: "[]".into(),
                    reason: None,
                    license_id: None,
                    path: Some(format!("show/f{id}")),
                    source: "keyserver".into(),
                    uid: None,
                    count: 1,
                    spool: None,
                    seq: None,
                    chain: None,
                };
                prev = link(&prev, &r);
                r.chain = Some(prev.to_vec());
                r
            })
            .collect()
    }

    fn verify(rows: Vec<ChainRow>) -> AuditVerification {
        let mut v = Verifier::new();
        rows.into_iter().for_each(|r| v.push(r));
        v.finish()
    }

    #[test]
    fn an_untouched_trail_is_intact_and_its_head_is_the_last_link() {
        let rows = trail(40);
        let head = hex::encode(rows[39].chain.as_ref().unwrap());
        let v = verify(rows);
        assert_eq!((v.rows, v.tamper, v.head), (40, None, Some(head)));
    }

    #[test]
    fn rows_before_the_chain_are_counted_not_checked() {
        let mut rows = trail(3);
        let mut old = rows[0].clone();
        old.chain = None;
        rows.iter_mut().for_each(|r| r.id += 1);
        // The chain was computed with ids 1..=3: recompute it over ids 2..=4.
        let mut prev = GENESIS;
        for r in &mut rows {
            prev = link(&prev, r);
            r.chain = Some(prev.to_vec());
        }
        rows.insert(0, old);
        let v = verify(rows);
        assert_eq!((v.rows, v.unchained, v.tamper), (4, 1, None));
    }

    #[test]
    fn an_edited_field_a_removed_chain_a_deleted_and_a_swapped_row_are_told_apart() {
        let mut rows = trail(40);
        rows[20].reason = Some("nothing to see".into());
        assert_eq!(verify(rows).tamper, Some(AuditTamper::Edited { id: 21 }));

        let mut rows = trail(40);
        rows[39].chain = None;
        assert_eq!(verify(rows).tamper, Some(AuditTamper::Edited { id: 40 }));

        let mut rows = trail(40);
        rows.remove(20);
        assert_eq!(
            verify(rows).tamper,
            Some(AuditTamper::Deleted { id: 22, after: 20 })
        );

        for (a, b) in [(20, 21), (10, 20), (38, 39)] {
            let mut rows = trail(40);
            let (ida, idb) = (rows[a].id, rows[b].id);
            rows.swap(a, b);
            rows[a].id = ida;
            rows[b].id = idb;
            assert_eq!(
                verify(rows).tamper,
                Some(AuditTamper::Reordered {
                    id: ida,
                    content_of: idb
                }),
                "{a} <-> {b}"
            );
        }
    }

    #[test]
    fn an_id_gap_alone_is_no_tampering() {
        let mut rows = trail(5);
        rows.iter_mut().skip(3).for_each(|r| r.id += 10);
        let mut prev = GENESIS;
        for r in &mut rows {
            prev = link(&prev, r);
            r.chain = Some(prev.to_vec());
        }
        assert_eq!(verify(rows).tamper, None);
    }
}
