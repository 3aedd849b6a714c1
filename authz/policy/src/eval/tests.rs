use super::*;
use crate::request::{AssetSelector, PolicyRequest};
use crate::template::rules_for;

const DIGEST: &str = "6c3b8d2f0a1e4b5c9d7e8f901a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

fn example() -> PolicyRequest {
    PolicyRequest::from_json(
        include_bytes!("../../../examples/request-shot010.json").as_slice(),
        0,
    )
    .unwrap()
}

fn ok_req() -> AccessRequest<'static> {
    AccessRequest {
        participant: "alice",
        application_digest: DIGEST,
        device: "ws-07",
        asset_path: "show/seq1/shot010/f0001.exr",
        asset_scope: "other",
        action: Action::Read,
        now: 1_795_424_400 + 3600,
    }
}

fn both(ev: &Evaluator, r: &AccessRequest<'_>) -> Decision {
    let fast = ev.decide(r);
    assert_eq!(
        fast,
        ev.decide_cedar(r),
        "fast path disagrees with Cedar for {r:?}"
    );
    fast
}

#[test]
fn evaluator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Evaluator>();
}

#[test]
fn allow_and_deny_cases() {
    let rules = rules_for(&example(), "req-1", "authz", 1);
    let ev = Evaluator::new(rules).unwrap();
    assert_eq!(ev.compiled_count(), ev.rules().len());
    let d = both(&ev, &ok_req());
    assert!(d.allowed);
    assert_eq!(d.rule_ids, vec!["r-req-1-1", "r-req-1-2"]);

    // License only on the key server rule.
    let d = both(
        &ev,
        &AccessRequest {
            action: Action::License,
            ..ok_req()
        },
    );
    assert_eq!(d.rule_ids, vec!["r-req-1-1"]);
    // Scope selector alone allows outside the path pattern.
    assert!(
        both(
            &ev,
            &AccessRequest {
                asset_path: "elsewhere/x.exr",
                asset_scope: "shot010",
                ..ok_req()
            }
        )
        .allowed
    );

    let denied = [
        AccessRequest {
            now: 1_795_424_399,
            ..ok_req()
        }, // before window
        AccessRequest {
            now: 1_795_770_000,
            ..ok_req()
        }, // end is exclusive
        AccessRequest {
            application_digest: &"00".repeat(32),
            ..ok_req()
        }, // wrong app
        AccessRequest {
            device: "ws-08",
            ..ok_req()
        }, // wrong device
        AccessRequest {
            asset_path: "show/seq1/shot011/f0001.exr",
            ..ok_req()
        }, // outside pattern
        AccessRequest {
            asset_path: "show/seq1/shot010",
            ..ok_req()
        },
        AccessRequest {
            action: Action::Delete,
            ..ok_req()
        }, // not granted
        AccessRequest {
            participant: "mallory",
            ..ok_req()
        },
    ];
    for r in denied {
        let d = both(&ev, &r);
        assert!(!d.allowed, "{r:?} was allowed");
        assert!(d.rule_ids.is_empty());
    }
}

#[test]
fn envelope_window_is_enforced_even_if_policy_is_wider() {
    let mut rules = rules_for(&example(), "req-1", "authz", 1);
    for r in &mut rules {
        r.not_after = r.not_before + 10;
    }
    let ev = Evaluator::new(rules).unwrap();
    assert!(
        both(
            &ev,
            &AccessRequest {
                now: 1_795_424_405,
                ..ok_req()
            }
        )
        .allowed
    );
    assert!(!both(&ev, &ok_req()).allowed);
}

#[test]
fn rejects_forbid_bad_cedar_schema_violations_and_conflicting_duplicates() {
    let mut r = rules_for(&example(), "req-1", "authz", 1).remove(0);
    let good = r.clone();
    r.policy = r.policy.replace("permit", "forbid");
    assert!(matches!(
        Evaluator::new([r.clone()]),
        Err(EvalError::NotPermit { .. })
    ));
    r.policy = "permit(principal,".into();
    assert!(matches!(
        Evaluator::new([r.clone()]),
        Err(EvalError::Parse { .. })
    ));
    // (An exact path: a wildcard in a rule only Cedar can judge is refused before that.)
    r.policy = good
        .policy
        .replace("resource.scope", "resource.owner")
        .replace("shot010/**", "shot010/f0001.exr");
    assert!(matches!(
        Evaluator::new([r.clone()]),
        Err(EvalError::Invalid { .. })
    ));
    assert_eq!(
        Evaluator::new([good.clone(), good.clone()])
            .unwrap()
            .rules()
            .len(),
        1
    );
    let mut other = good.clone();
    other.not_after += 1;
    assert!(matches!(
        Evaluator::new([good, other]),
        Err(EvalError::Duplicate { .. })
    ));
}

#[test]
fn hand_written_policies_fall_back_to_cedar() {
    let rule = Rule {
        delegates_to: None,
        delegated_by: None,
        id: "hand-1".into(),
        issuer: "authz".into(),
        request_id: "manual".into(),
        targets: vec!["keyserver".into()],
        not_before: 0,
        not_after: i64::MAX,
        policy: r#"permit(principal, action == Csap::Action::"read", resource) when { resource.scope == "dailies" };"#.into(),
    };
    let ev = Evaluator::new([rule]).unwrap();
    assert_eq!(ev.compiled_count(), 0);
    assert!(
        both(
            &ev,
            &AccessRequest {
                participant: "anyone",
                asset_scope: "dailies",
                ..ok_req()
            }
        )
        .allowed
    );
    assert!(
        !both(
            &ev,
            &AccessRequest {
                asset_scope: "shot010",
                ..ok_req()
            }
        )
        .allowed
    );
}

/// Rules for the example request with its one asset path replaced by `pattern`.
fn rules_with_path(pattern: &str) -> Evaluator {
    let mut req = example();
    req.assets = vec![AssetSelector {
        path: Some(pattern.into()),
        scope: None,
    }];
    Evaluator::new(rules_for(&req, "req-1", "authz", 1)).unwrap()
}

/// Issue 11: one glob dialect — `*` stays within a segment (it crossed '/' before, because
/// rules were judged by Cedar's `like`), `**` crosses.
#[test]
fn rule_star_stays_within_a_segment_and_double_star_crosses() {
    let at = |path: &'static str| AccessRequest {
        asset_path: path,
        ..ok_req()
    };
    let one = rules_with_path("show/*/f1");
    assert!(!one.decide(&at("show/a/b/f1")).allowed, "'*' crossed '/'");
    assert!(!one.decide_cedar(&at("show/a/b/f1")).allowed);
    assert!(both(&one, &at("show/a/f1")).allowed);
    let all = rules_with_path("show/**");
    for p in ["show/a", "show/a/b/f1", "show/x/y/z/w.exr"] {
        assert!(both(&all, &at(p)).allowed, "{p}");
    }
    assert!(!both(&all, &at("show")).allowed);
    assert!(!both(&all, &at("other/a")).allowed);
}

/// Issue 11: a stored rule from before the dialect (no `@paths("glob")`), whose `*` meant
/// "crosses '/'", is refused at load naming the rule — not silently narrowed — and so is a
/// wildcard in a rule only Cedar can judge (its `like` would let `*` cross).
#[test]
fn old_dialect_and_cedar_only_wildcard_rules_are_refused_at_load() {
    let mut old = rules_for(&example(), "req-1", "authz", 1).remove(0);
    old.policy = old
        .policy
        .replace("@paths(\"glob\")\n", "")
        .replace("shot010/**", "shot010/*");
    let err = Evaluator::new([old.clone()]).unwrap_err();
    assert!(matches!(&err, EvalError::OldPathDialect { rule_id } if *rule_id == old.id));
    assert!(err.to_string().contains("re-issue it"), "{err}");
    // The same old rule with an exact path means the same in both dialects: accepted.
    let mut exact = old.clone();
    exact.policy = exact.policy.replace("shot010/*", "shot010/f0001.exr");
    assert!(Evaluator::new([exact]).is_ok());

    let hand = Rule {
        policy: r#"@paths("glob")
permit(principal, action == Csap::Action::"read", resource) when { resource.path like "show/*" };"#
            .into(),
        ..old
    };
    assert!(matches!(
        Evaluator::new([hand]),
        Err(EvalError::UncheckablePattern { .. })
    ));
}

/// Small deterministic PRNG so the equivalence test needs no extra crates and is repeatable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() as usize) % xs.len()]
    }
}

#[test]
fn fast_path_agrees_with_cedar_on_random_rules_and_requests() {
    let people = ["alice", "bob", "carol"];
    let devices = ["ws-07", "ws-08", "rn-01"];
    let apps = [DIGEST, "ab".repeat(32).leak(), "cd".repeat(32).leak()];
    let paths = [
        "show/seq1/shot010/f0001.exr",
        "show/seq1/shot010/sub/f2.exr",
        "show/seq1/shot011/f0001.exr",
        "show/seq2/a.exr",
        "show/seq1/shot010",
        "x",
    ];
    let patterns = [
        "show/seq1/shot010/*",
        "show/*/shot01*",
        "show/seq2/*",
        "x",
        "*a.exr",
        "show/*/*/f0001.exr",
    ];
    let scopes = ["shot010", "seq2", "other"];
    let mut rng = Lcg(42);
    let mut rules = Vec::new();
    for n in 0..40 {
        let mut req = example();
        req.participants.truncate(1);
        req.participants[0].id = rng.pick(&people).into();
        req.devices = (0..1 + rng.next() % 2)
            .map(|_| rng.pick(&devices).to_string())
            .collect();
        req.devices.dedup();
        req.applications.truncate(1);
        req.applications[0].digest = rng.pick(&apps).into();
        req.assets = (0..1 + rng.next() % 2)
            .map(|_| match rng.next() % 3 {
                0 => AssetSelector {
                    path: Some(rng.pick(&patterns).into()),
                    scope: None,
                },
                1 => AssetSelector {
                    path: None,
                    scope: Some(rng.pick(&scopes).into()),
                },
                _ => AssetSelector {
                    path: Some(rng.pick(&patterns).into()),
                    scope: Some(rng.pick(&scopes).into()),
                },
            })
            .collect();
        req.actions = Action::ALL
            .iter()
            .copied()
            .filter(|_| rng.next() & 1 == 0)
            .collect();
        if req.actions.is_empty() {
            req.actions.push(Action::Read);
        }
        req.not_before = 1000 + (rng.next() % 100) as i64;
        req.not_after = req.not_before + 1 + (rng.next() % 100) as i64;
        let mut batch = rules_for(&req, &format!("q{n}"), "authz", 1);
        if n % 2 == 1 {
            // Same policy, other formatting: exercises the Cedar-parse + EST compile path
            // instead of the template fast path.
            for r in &mut batch {
                r.policy = r.policy.replace('\n', " ");
            }
        }
        rules.extend(batch);
    }
    let ev = Evaluator::new(rules).unwrap();
    assert_eq!(
        ev.compiled_count(),
        ev.rules().len(),
        "all template rules compile"
    );
    let mut allowed = 0;
    for _ in 0..3000 {
        let r = AccessRequest {
            participant: rng.pick(&people),
            application_digest: rng.pick(&apps),
            device: rng.pick(&devices),
            asset_path: rng.pick(&paths),
            asset_scope: rng.pick(&scopes),
            action: Action::ALL[(rng.next() % 5) as usize],
            now: 990 + (rng.next() % 220) as i64,
        };
        if both(&ev, &r).allowed {
            allowed += 1;
        }
    }
    // Both outcomes must be well represented for the comparison to mean anything.
    assert!(allowed > 100 && allowed < 2900, "allowed {allowed} of 3000");
}

#[test]
fn synthetic_rules_compile_and_decide() {
    let rules = crate::synthetic::synthetic_rules(1000);
    let ev = Evaluator::new(rules).unwrap();
    assert_eq!(ev.compiled_count(), 1000);
    let (req_owned, expect) = crate::synthetic::synthetic_request(7);
    let d = both(&ev, &req_owned.as_request());
    assert_eq!(d.allowed, expect);
}

// ---- delegated authorization: an organization's rules inside a production delegation ----

const T0: i64 = 1_795_424_400;

fn spec(id: &str, participant: &str, path: &str, actions: &[Action], nb: i64, na: i64) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        request_id: "req-d".into(),
        task: "comp".into(),
        participant: participant.into(),
        actions: actions.to_vec(),
        devices: vec!["ws-07".into()],
        applications: vec![DIGEST.into()],
        assets: vec![AssetSelector {
            path: Some(path.into()),
            scope: None,
        }],
        not_before: nb,
        not_after: na,
    }
}

fn rule_of(
    s: &RuleSpec,
    issuer: &str,
    delegates_to: Option<&str>,
    delegated_by: Option<&str>,
) -> Rule {
    Rule {
        id: s.id.clone(),
        issuer: issuer.into(),
        request_id: s.request_id.clone(),
        targets: vec!["keyserver".into()],
        not_before: s.not_before,
        not_after: s.not_after,
        policy: s.to_cedar(),
        delegates_to: delegates_to.map(Into::into),
        delegated_by: delegated_by.map(Into::into),
    }
}

/// The production delegates `show/seq1/**` read to acme-post for [T0, T0+7200).
fn delegation() -> Rule {
    let s = spec(
        "d-1",
        "acme-post",
        "show/seq1/**",
        &[Action::Read],
        T0,
        T0 + 7200,
    );
    rule_of(&s, "authz", Some("acme-post"), None)
}

fn org_rule(id: &str, path: &str, actions: &[Action], nb: i64, na: i64) -> Rule {
    let s = spec(id, "vic", path, actions, nb, na);
    rule_of(&s, "acme-post", None, Some("d-1"))
}

fn vic(path: &'static str, action: Action, now: i64) -> AccessRequest<'static> {
    AccessRequest {
        participant: "vic",
        asset_path: path,
        action,
        now,
        ..ok_req()
    }
}

#[test]
fn an_org_rule_grants_only_inside_its_live_delegation() {
    let inside = org_rule(
        "o-1",
        "show/**",
        &[Action::Read, Action::Write],
        T0 - 3600,
        T0 + 99_999,
    );
    let ev = Evaluator::new([delegation(), inside.clone()]).unwrap();
    let now = T0 + 60;
    let d = both(&ev, &vic("show/seq1/shot010/f1.exr", Action::Read, now));
    assert_eq!(
        d.rule_ids,
        vec!["o-1"],
        "inside both: granted by the org rule"
    );
    // The org rule names show/** and write, the delegation only show/seq1/** and read.
    for (req, what) in [
        (vic("show/seq2/f1.exr", Action::Read, now), "another path"),
        (
            vic("show/seq1/f1.exr", Action::Write, now),
            "another action",
        ),
        (
            vic("show/seq1/f1.exr", Action::Read, T0 + 7200),
            "after the delegation's window",
        ),
        (
            vic("show/seq1/f1.exr", Action::Read, T0 - 10),
            "before the delegation's window",
        ),
        (
            AccessRequest {
                application_digest: "00",
                ..vic("show/seq1/f1.exr", Action::Read, now)
            },
            "another application",
        ),
        (
            AccessRequest {
                device: "ws-99",
                ..vic("show/seq1/f1.exr", Action::Read, now)
            },
            "another device",
        ),
    ] {
        assert!(!both(&ev, &req).allowed, "{what} must be refused");
    }
    // Without the delegation (revoked, expired, never issued) the org rule grants nothing.
    let alone = Evaluator::new([inside.clone()]).unwrap();
    assert!(!both(&alone, &vic("show/seq1/f1.exr", Action::Read, now)).allowed);
    assert_eq!(alone.orphaned_delegated_rules(now).len(), 1);
    // A delegation to another organization does not cover acme-post's rule.
    let mut globex = delegation();
    globex.delegates_to = Some("globex".into());
    globex.policy = spec(
        "d-1",
        "globex",
        "show/seq1/**",
        &[Action::Read],
        T0,
        T0 + 7200,
    )
    .to_cedar();
    let ev = Evaluator::new([globex, inside]).unwrap();
    assert!(!both(&ev, &vic("show/seq1/f1.exr", Action::Read, now)).allowed);
}

#[test]
fn a_delegation_grants_nothing_by_itself_and_must_name_its_organization() {
    let ev = Evaluator::new([delegation()]).unwrap();
    let as_org = AccessRequest {
        participant: "acme-post",
        ..vic("show/seq1/f1.exr", Action::Read, T0 + 1)
    };
    assert!(
        !both(&ev, &as_org).allowed,
        "a delegation is a bound, not a grant"
    );
    let mut wrong = delegation();
    wrong.delegates_to = Some("globex".into());
    assert!(matches!(
        Evaluator::new([wrong]),
        Err(EvalError::Delegation { .. })
    ));
    let mut both_ways = delegation();
    both_ways.delegated_by = Some("d-0".into());
    assert!(matches!(
        Evaluator::new([both_ways]),
        Err(EvalError::Delegation { .. })
    ));
}
