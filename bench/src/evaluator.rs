//! `bench evaluator`: the policy evaluator every PEP runs, on 10,000 synthetic rules.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use authz::testing::{synthetic_request, synthetic_rules, OwnedAccessRequest};
use authz::{Action, Evaluator};

use crate::report::{dur, rate, Samples, Table};
use crate::Knobs;

/// A request for nobody's rules (no candidate at all): the cheapest denial.
fn outsider(k: usize) -> (OwnedAccessRequest, bool) {
    let (mut r, _) = synthetic_request(k);
    r.participant = format!("contractor{}", k % 37);
    r.action = Action::Read;
    (r, false)
}

/// The right participant, device and application, but a shot the rule does not cover: the
/// candidates are checked and none matches.
fn wrong_shot(k: usize) -> (OwnedAccessRequest, bool) {
    let (mut r, _) = synthetic_request(k);
    r.action = Action::Read;
    r.asset_path = format!("show/seq{}/shot{:05}/f0001.exr", (k + 1) % 20, k + 1);
    (r, false)
}

pub fn run(k: &Knobs) -> Result<()> {
    const RULES: usize = 10_000;
    let rules = synthetic_rules(RULES);
    let t = Instant::now();
    let ev = Evaluator::new(rules).context("synthetic rules must compile")?;
    let build = t.elapsed();

    // The mix: 60 % allowed reads, 20 % denied by action (delete is never granted), 10 %
    // denied for the wrong shot, 10 % from principals without any rule.
    let mut reqs = Vec::with_capacity(RULES);
    for i in 0..RULES {
        let kk = (i * 7919) % RULES; // spread over the rule set, not in rule order
        let r = match i % 10 {
            0..=5 => synthetic_request(kk & !1),
            6 | 7 => synthetic_request(kk | 1),
            8 => wrong_shot(kk & !1),
            _ => outsider(kk),
        };
        reqs.push(r);
    }
    // Warm up and check every answer: a benchmark of wrong answers is worthless.
    for (r, expect) in &reqs {
        let got = ev.decide(&r.as_request()).allowed;
        if got != *expect {
            bail!("evaluator answered {got} for {r:?}, expected {expect}");
        }
    }
    let allowed_share = reqs.iter().filter(|(_, a)| *a).count() as f64 / reqs.len() as f64;

    // Timer overhead: back-to-back Instant::now() pairs, the floor of every sample below.
    let n_overhead = k.calls.min(200_000);
    let mut overhead = Vec::with_capacity(n_overhead);
    for _ in 0..n_overhead {
        let t = Instant::now();
        overhead.push(t.elapsed().as_nanos() as u64);
    }
    let overhead = Samples::new(overhead);

    let mut samples = Vec::with_capacity(k.calls);
    let mut allowed = 0usize;
    for i in 0..k.calls {
        let req = reqs[i % reqs.len()].0.as_request();
        let t = Instant::now();
        let d = ev.decide(&req);
        let e = t.elapsed();
        allowed += std::hint::black_box(d).allowed as usize;
        samples.push(e.as_nanos() as u64);
    }
    let s = Samples::new(samples);

    // Throughput without per-call timers.
    let t = Instant::now();
    for i in 0..k.calls {
        std::hint::black_box(ev.decide(&reqs[i % reqs.len()].0.as_request()));
    }
    let per_s = k.calls as f64 / t.elapsed().as_secs_f64();

    let mut tab = Table::new(format!(
        "Evaluator: {RULES} synthetic rules, {} decide() calls, one thread",
        k.calls
    ));
    tab.info(
        "Evaluator::new (compile 10,000 rules)",
        dur(build.as_nanos() as u64),
    );
    tab.info(
        "request mix",
        format!(
            "{:.0} % allowed ({allowed} of {} timed calls)",
            allowed_share * 100.0,
            k.calls
        ),
    );
    tab.info("decisions/s (untimed loop)", rate(per_s));
    tab.info("decide() p50", dur(s.pct(0.50)));
    tab.goal(
        "decide() p99",
        dur(s.pct(0.99)),
        "≤ 20 µs",
        s.pct(0.99) <= 20_000,
    );
    tab.info("decide() p99.9", dur(s.pct(0.999)));
    tab.info("decide() max", dur(s.max()));
    tab.info(
        "timer overhead (Instant pair) p50 / p99",
        format!("{} / {}", dur(overhead.pct(0.5)), dur(overhead.pct(0.99))),
    );
    tab.print();
    Ok(())
}
