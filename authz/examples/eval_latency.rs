//! Measures the evaluator on synthetic rule sets: build time and per-decision latency
//! percentiles. Run: `cargo run --release -p authz --example eval_latency -- 10000`.

use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let rules = authz::testing::synthetic_rules(n);
    let t = Instant::now();
    let ev = authz::Evaluator::new(rules).expect("synthetic rules are valid");
    println!("Evaluator::new({n} rules): {:?}", t.elapsed());

    let reqs: Vec<_> = (0..n.min(2000))
        .map(authz::testing::synthetic_request)
        .collect();
    // Warm up, and check the answers while at it.
    for (r, expect) in &reqs {
        assert_eq!(ev.decide(&r.as_request()).allowed, *expect);
    }
    let mut samples = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let (r, _) = &reqs[i % reqs.len()];
        let req = r.as_request();
        let t = Instant::now();
        let d = ev.decide(&req);
        let e = t.elapsed();
        std::hint::black_box(d);
        samples.push(e.as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "decide: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} samples)",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[samples.len() - 1],
        samples.len()
    );
    let (r, _) = &reqs[0];
    let t = Instant::now();
    for _ in 0..100 {
        std::hint::black_box(ev.decide_cedar(&r.as_request()));
    }
    println!(
        "decide_cedar (all {n} rules through Cedar): {:?} per call",
        t.elapsed() / 100
    );
}
