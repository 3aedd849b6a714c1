use std::io::Write;
use std::time::Instant;

use super::*;

/// A key server stand-in: keeps what it was sent (deduplicated by seq, as the real one
/// does) and can be switched off.
#[derive(Clone, Default)]
struct Sink {
    up: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<MountAuditRecord>>>,
    calls: Arc<AtomicU64>,
}

impl Ship for Sink {
    fn ship(&mut self, batch: &AuditBatch) -> Result<AuditBatchAck, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.up.load(Ordering::Acquire) {
            return Err("connection refused".into());
        }
        let mut got = self.got.lock().unwrap();
        let mut accepted = 0;
        for r in &batch.records {
            if !got.iter().any(|g| g.seq == r.seq) {
                got.push(r.clone());
                accepted += 1;
            }
        }
        Ok(AuditBatchAck {
            accepted,
            duplicates: batch.records.len() as u32 - accepted,
            through_seq: batch.records.last().map_or(0, |r| r.seq),
        })
    }
}

fn deny(path: &str) -> Decision {
    Decision {
        user: Some("alice".into()),
        uid: 1000,
        app_digest: Some("ab".repeat(32)),
        path: path.into(),
        asset: None,
        action: Action::Read,
        grant: false,
        reason: Cow::Borrowed("no_rule_at_mount"),
    }
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        flush_interval: Duration::from_millis(20),
        ..SpoolConfig::new(dir.join("spool"), "ws-1")
    }
}

fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Records made while the key server is down survive the mount stopping; the next run
/// ships them, each exactly once, numbered without gaps.
#[test]
fn unshipped_records_survive_a_restart_and_are_shipped_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
    for i in 0..3 {
        assert!(spool.record(deny(&format!("show/f{i}.exr"))));
    }
    eventually("spooled", || spool.stats().spooled == 3);
    assert_eq!(spool.stats().unshipped, 3);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("spool").join(SPOOL_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the spool names users and paths");
    drop(spool);
    assert!(sink.got.lock().unwrap().is_empty());

    sink.up.store(true, Ordering::Release);
    let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
    assert!(spool.record(deny("show/f3.exr")));
    eventually("shipped", || sink.got.lock().unwrap().len() == 4);
    eventually("acknowledged", || spool.stats().unshipped == 0);
    drop(spool);
    let got = sink.got.lock().unwrap().clone();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["show/f0.exr", "show/f1.exr", "show/f2.exr", "show/f3.exr"]
    );
    // A third run has nothing left to send, and numbers on.
    let calls = sink.calls.load(Ordering::Relaxed);
    let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        sink.calls.load(Ordering::Relaxed),
        calls,
        "resent acked records"
    );
    assert!(spool.record(deny("show/f4.exr")));
    eventually("numbered on", || sink.got.lock().unwrap().len() == 5);
    assert_eq!(sink.got.lock().unwrap()[4].seq, 5);
}

/// A crash mid-append leaves a torn last line: it is cut off, the records before it are
/// shipped.
#[test]
fn a_torn_last_line_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
    assert!(spool.record(deny("show/a.exr")));
    eventually("spooled", || spool.stats().spooled == 1);
    drop(spool);
    let path = dir.path().join("spool").join(SPOOL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"seq":2,"time":17"#).unwrap();
    sink.up.store(true, Ordering::Release);
    let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
    eventually("shipped", || spool.stats().unshipped == 0);
    assert_eq!(sink.got.lock().unwrap().len(), 1);
    assert!(spool.record(deny("show/b.exr")));
    eventually("the next", || sink.got.lock().unwrap().len() == 2);
    assert_eq!(sink.got.lock().unwrap()[1].seq, 2);
}

/// Identical decisions within a flush interval become one record with a count.
#[test]
fn identical_decisions_are_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    sink.up.store(true, Ordering::Release);
    let mut cfg = config(dir.path());
    cfg.flush_interval = Duration::from_millis(300);
    let spool = AuditSpool::open(cfg, Box::new(sink.clone())).unwrap();
    for _ in 0..100 {
        assert!(spool.record(deny("show/a.exr")));
    }
    eventually("shipped", || spool.stats().shipped >= 1);
    let got = sink.got.lock().unwrap().clone();
    assert_eq!(got.iter().map(|r| r.count).sum::<u32>(), 100);
    assert!(got.len() < 100, "not aggregated: {} records", got.len());
}

/// Attack: fill the spool while the key server is away. At the cap, records are dropped
/// and counted, and grants the mount makes alone are refused (fail secure) until the key
/// server takes the records.
#[test]
fn a_full_spool_refuses_grants_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    let mut cfg = config(dir.path());
    cfg.max_bytes = 1000;
    let spool = AuditSpool::open(cfg, Box::new(sink.clone())).unwrap();
    assert!(spool.accepts_grants());
    for i in 0..20 {
        spool.record(deny(&format!("show/f{i}.exr")));
        std::thread::sleep(Duration::from_millis(2));
    }
    eventually("full", || spool.stats().full);
    assert!(!spool.accepts_grants());
    assert!(
        !spool.record(deny("show/more.exr")),
        "recorded past the cap"
    );
    let stats = spool.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    sink.up.store(true, Ordering::Release);
    eventually("drained", || spool.accepts_grants());
    assert_eq!(spool.stats().unshipped, 0);
}

/// Two mounts cannot share one spool (their sequence numbers would collide).
#[test]
fn a_spool_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = AuditSpool::open(config(dir.path()), Box::new(Sink::default())).unwrap();
    let second = AuditSpool::open(config(dir.path()), Box::new(Sink::default()));
    assert!(matches!(second, Err(SpoolError::Locked(_))), "{second:?}");
}
