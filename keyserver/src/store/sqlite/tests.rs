//! The SQLite engine's own properties: versioned migrations, write generations, and the read
//! cache's coherence with commits (the race the epoch exists for).

use super::*;
use crate::store::LicenseReads;

fn open(pool: usize) -> (tempfile::TempDir, Arc<Pool>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(&dir.path().join("ks.sqlite"), pool).unwrap();
    (dir, pool)
}

#[test]
fn migrations_are_idempotent_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.sqlite");
    let pool = Pool::open(&path, 2).unwrap();
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    drop(pool);
    let pool = Pool::open(&path, 1).unwrap();
    let v: i64 = pool
        .call_sync(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
        .unwrap();
    assert_eq!(v, schema::MIGRATIONS.len() as i64);
    let u = pool
        .call_sync(|c| identities::get_user(c, "alice"))
        .unwrap()
        .unwrap();
    assert_eq!(u.generation, 1);
    assert!(matches!(
        pool.call_sync(|c| identities::add_user(c, "alice", "h", 2)),
        Err(StoreError::Conflict(_))
    ));
}

/// Issue 12: a writer's reserve-then-settle of the next write generation; a writer that
/// crashed after reserving leaves the same generation for the next one.
#[test]
fn write_generations_are_reserved_then_settled() {
    let (_dir, pool) = open(1);
    let id = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
    let at = |c: &Connection| -> Result<(u32, Option<u32>), StoreError> {
        let a = keys::get_asset(c, id)?.expect("registered");
        Ok((a.generation, a.pending_generation))
    };
    pool.call_sync(|c| {
        c.execute(
            "INSERT INTO scopes (name, scope_id, current_version, created_at)
             VALUES ('s', x'5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c', 1, 0)",
            [],
        )?;
        keys::insert_asset(
            c,
            &AssetInfo {
                asset_id: id.into(),
                scope: "s".into(),
                scope_id: String::new(),
                key_version: 1,
                path: "show/f1.exr".into(),
                creator: "alice".into(),
                created_at: 0,
                generation: 0,
                pending_generation: None,
            },
        )?;
        assert_eq!(at(c)?, (0, None));
        keys::reserve_generation(c, id)?;
        keys::reserve_generation(c, id)?; // a crashed writer's reservation is handed out again
        assert_eq!(at(c)?, (0, Some(1)));
        assert!(matches!(
            keys::settle_generation(c, id, 2),
            Err(StoreError::Conflict(_))
        ));
        keys::settle_generation(c, id, 1)?;
        keys::settle_generation(c, id, 1)?; // a lost answer, asked again
        assert_eq!(at(c)?, (1, None));
        keys::reserve_generation(c, id)?;
        assert_eq!(at(c)?, (1, Some(2)));
        assert!(matches!(
            keys::reserve_generation(c, "00000000000000000000000000000000"),
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    })
    .unwrap();
}

fn disabled(pool: &Pool) -> bool {
    pool.call_sync(|conn| {
        SqlReads {
            conn,
            cache: &pool.cache,
        }
        .user("alice")
    })
    .unwrap()
    .unwrap()
    .disabled
}

#[test]
fn a_committed_change_voids_what_was_cached_before() {
    let (_dir, pool) = open(2);
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    assert!(!disabled(&pool));
    pool.call_sync(|c| identities::disable_user(c, "alice"))
        .unwrap();
    assert!(disabled(&pool));
}

/// The race the epoch exists for: a row read just before another connection commits a change
/// is stored after that commit. It must not be served.
#[test]
fn a_row_read_before_a_commit_is_not_served_after_it() {
    let (_dir, pool) = open(2);
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    let stale = pool
        .call_sync(|c| {
            pool.cache
                .through(&pool.cache.users, "alice".to_string(), true, || {
                    let before = identities::get_user(c, "alice")?;
                    // Another connection disables alice and commits, between our read and
                    // our store.
                    pool.call_sync(|c2| identities::disable_user(c2, "alice"))?;
                    Ok(before)
                })
        })
        .unwrap()
        .unwrap();
    assert!(!stale.disabled);
    assert!(disabled(&pool), "the stale row was served from the cache");
}

/// Rows read inside an explicit transaction are not stored (its snapshot may be older than the
/// current epoch).
#[test]
fn reads_inside_a_transaction_are_not_stored() {
    let (_dir, pool) = open(2);
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    pool.call_sync(|c| {
        let tx = c.transaction()?;
        SqlReads {
            conn: &tx,
            cache: &pool.cache,
        }
        .user("alice")?;
        tx.commit()?;
        Ok(())
    })
    .unwrap();
    pool.cache.users.run_pending_tasks();
    assert!(pool.cache.users.get("alice").is_none());
    assert!(!disabled(&pool));
    assert!(pool.cache.users.get("alice").is_some());
}

/// A cache-only lookup serves valid entries and reports a miss, never reads SQLite.
#[test]
fn cache_only_lookups_miss_instead_of_reading() {
    let (_dir, pool) = open(2);
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    assert!(matches!(
        pool.cache.user("alice"),
        Err(StoreError::NotCached)
    ));
    assert!(!disabled(&pool));
    assert!(!pool.cache.user("alice").unwrap().unwrap().disabled);
    pool.call_sync(|c| identities::disable_user(c, "alice"))
        .unwrap();
    assert!(matches!(
        pool.cache.user("alice"),
        Err(StoreError::NotCached)
    ));
}

/// A call that commits a change and then panics still voids the cache, and its connection goes
/// back to the pool.
#[test]
fn a_panic_after_a_commit_still_voids_the_cache() {
    let (_dir, pool) = open(1);
    pool.call_sync(|c| identities::add_user(c, "alice", "h", 1))
        .unwrap();
    assert!(!disabled(&pool));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = pool.call_sync(|c| -> Result<(), StoreError> {
            identities::disable_user(c, "alice")?;
            panic!("after the commit");
        });
    }));
    assert!(panicked.is_err());
    // The one pooled connection is back, and the cached row is void.
    assert!(disabled(&pool));
}

/// A revoking operation wakes the stream's watchers only once it committed its event, and a
/// refused one (nothing to revoke) neither records nor wakes.
#[tokio::test]
async fn revocations_wake_watchers_after_their_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ks.sqlite"), 2).unwrap();
    let mut watch = store.watch_revocations();
    assert_eq!(store.revoke_device("ws-1", 10).await.unwrap(), 0);
    assert!(!watch.has_changed().unwrap());
    store.add_user("alice", "h", 1).await.unwrap();
    store.disable_user("alice", 11).await.unwrap();
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    let r = store.revocations(Some(0), 10).await.unwrap();
    assert_eq!(r.head, 1);
    assert_eq!(r.events[0].kind, RevocationKind::User);
    assert!(matches!(
        store.disable_user("bob", 12).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!watch.has_changed().unwrap());
    assert_eq!(store.revocations(None, 10).await.unwrap().head, 1);
}

#[test]
fn checkpoints_follow_the_write_rate() {
    let s = Duration::from_secs;
    // Idle: the longest wait; a trickle: proportionally longer; a flood: once a second.
    assert_eq!(next_checkpoint_wait(s(1), 0), CHECKPOINT_MAX_WAIT);
    assert_eq!(next_checkpoint_wait(s(4), 1024), s(16));
    assert_eq!(next_checkpoint_wait(s(1), 100), CHECKPOINT_MAX_WAIT);
    assert_eq!(next_checkpoint_wait(s(30), 1_000_000), CHECKPOINT_MIN_WAIT);
}
