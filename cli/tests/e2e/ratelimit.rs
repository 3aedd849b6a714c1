//! Issue 14: a render outran the key server's per-device rate limit and an open got `EACCES`.
//! Cold opens now license their directory's other allowed assets in the same round trip, and a
//! 429 is waited out within the open's timeout.

use std::collections::HashSet;

use super::fixture::{Env, Req};
use super::{assert_frame, direct, read_all, wait_until_bash_opens};

const FRAMES: usize = 30;

#[test]
fn issue_14_opens_past_the_rate_limit_never_fail_and_batch_per_directory() {
    // Enough burst for the set-up (login, session, one create per frame); a refill far slower
    // than the opens below, which one license per open would exhaust at once.
    let Some(env) = Env::start_with(Some(format!("2/{}", FRAMES + 15))) else {
        return;
    };
    let names: Vec<String> = (0..FRAMES).map(|i| format!("f{i:03}.raw")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    env.with_frames(&refs);
    env.submit(&Req::now("render", &[&env.apps.bash], &["read"]));
    let (mnt, _mounted) = env.mount("mnt", &env.args(), &direct());
    let first = mnt.join("samples").join(&names[0]);
    let mark = env.last_audit();
    wait_until_bash_opens(&first);
    for name in &names {
        let out = super::fixture::bash_as(None, &read_all(&mnt.join("samples").join(name)));
        assert_frame(&env, &out, &format!("open of {name} past the rate limit"));
    }
    let grants: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r.id > mark && r.decision == "grant" && r.source == "keyserver")
        .collect();
    let round_trips: HashSet<_> = grants.iter().filter_map(|r| r.license_id.clone()).collect();
    assert!(grants.len() >= FRAMES, "{} grants", grants.len());
    assert!(
        round_trips.len() <= 2,
        "{} license round trips for {FRAMES} frames in one directory",
        round_trips.len()
    );
}
