//! `csap server`'s operations listener as Prometheus sees it: after a real license grant and
//! real denials (no rule, unknown application), /metrics parses as the text format and carries
//! the series an operator alerts on with the values those requests must have left; /healthz and
//! /readyz answer for all three services.

use csap_testkit::{Request, Setup, System};
use keyserver::wire::Action;
use keyserver::ClientError;
use prometheus_parse::{Sample, Scrape, Value};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
const DEVICE: &str = "ws-metrics";

fn system() -> System {
    System::start(Setup::one_device(CSAP, DEVICE)).unwrap()
}

fn get(system: &System, path: &str) -> (u16, String) {
    let base = system
        .server()
        .metrics_url
        .clone()
        .expect("csap server printed its metrics listener");
    system.rt.block_on(async {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn scrape(system: &System) -> Scrape {
    let (status, text) = get(system, "/metrics");
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The samples of `metric` whose labels include every pair of `labels`.
fn samples<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The one value of a counter or gauge.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, metric, labels);
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is not a counter or gauge: {other:?}"),
    }
}

/// How many observations a histogram holds (its +Inf bucket).
fn observations(scrape: &Scrape, metric: &str) -> f64 {
    let found = samples(scrape, metric, &[]);
    assert_eq!(found.len(), 1, "{metric}: {found:?}");
    match &found[0].value {
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .expect("a +Inf bucket"),
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

#[test]
fn metrics_count_a_real_grant_and_real_denials() {
    let system = system();
    let importer_digest = "cd".repeat(32);
    system.register(&importer_digest, "importer").unwrap();
    let now = keyserver::now().unwrap();
    let submitted = system
        .submit(&Request {
            name: "metrics",
            user: "alice",
            apps: &[&importer_digest],
            devices: &[DEVICE],
            assets: "show/**",
            actions: &["create", "read"],
            window: (now - 60, now + 3600),
        })
        .unwrap();
    system.wait_rules(&submitted, None).unwrap();

    // A create grant, a read grant, a write the rules do not allow, an unregistered build.
    let importer = system.importer(DEVICE, &importer_digest).unwrap();
    let (header, _key) = importer.create(&system.rt, "show/frame.exr").unwrap();
    let ids = [header.asset_id.0];
    let client = &importer.client;
    let token = &importer.token;
    let read = system
        .rt
        .block_on(client.request(token, &importer_digest, Action::Read, &ids))
        .unwrap();
    assert_eq!(read.grants.len(), 1, "{read:?}");
    let write = system
        .rt
        .block_on(client.request(token, &importer_digest, Action::Write, &ids))
        .unwrap();
    assert!(
        write.grants.is_empty(),
        "a write without a rule was granted"
    );
    let stranger = system
        .rt
        .block_on(client.request(token, &"ee".repeat(32), Action::Read, &ids));
    assert!(
        matches!(stranger, Err(ClientError::Denied(_))),
        "{stranger:?}"
    );

    let m = scrape(&system);
    // The listener has no authentication: counts and names only, never what a request carried.
    let (_, text) = get(&system, "/metrics");
    for secret in [
        token.as_str(),
        "show/frame.exr",
        "alice",
        &hex::encode(header.asset_id.0),
    ] {
        assert!(!text.contains(secret), "/metrics shows {secret:?}");
    }
    let granted = "csap_keyserver_licenses_granted_total";
    let denied = "csap_keyserver_licenses_denied_total";
    assert_eq!(value(&m, granted, &[("action", "create")]), 1.0);
    assert_eq!(value(&m, granted, &[("action", "read")]), 1.0);
    assert_eq!(
        value(&m, denied, &[("action", "write"), ("reason", "no_rule")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            denied,
            &[("action", "read"), ("reason", "unknown_application")]
        ),
        1.0
    );
    // Every license request was timed (the create's too), each decision's audit committed.
    assert!(observations(&m, "csap_keyserver_license_request_seconds") >= 4.0);
    assert!(observations(&m, "csap_keyserver_audit_batch_records") >= 1.0);
    assert!(observations(&m, "csap_keyserver_audit_commit_seconds") >= 1.0);
    // The read cache answered the repeated user, application and asset lookups.
    assert!(value(&m, "csap_keyserver_readcache_hits_total", &[]) >= 1.0);
    assert!(value(&m, "csap_keyserver_readcache_misses_total", &[]) >= 1.0);
    // The key server's stream is caught up (it holds the rule it was just sent), and authz
    // has nothing left to deliver.
    assert_eq!(
        value(
            &m,
            "csap_ards_pep_revisions_behind",
            &[("pep", "keyserver")]
        ),
        0.0
    );
    assert!(value(&m, "csap_ards_pep_revision", &[("pep", "keyserver")]) >= 1.0);
    assert_eq!(value(&m, "csap_authz_outbox_depth", &[]), 0.0);

    let (status, body) = get(&system, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&system, "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    for service in ["authz", "ards", "keyserver"] {
        assert_eq!(ready["services"][service]["ready"], true, "{body}");
    }
    let (status, _) = get(&system, "/nothing");
    assert_eq!(status, 404);
}
