//! The operations listener of a csap process: Prometheus `/metrics`, `/healthz` (alive) and
//! `/readyz` (every service of the process ready) over plain HTTP, bound to loopback by default.
//!
//! Why plain HTTP beside the mTLS services: the exposition holds counts and names (PEP ids,
//! denial reasons), never keys or tokens, and a scraper or a systemd/Kubernetes probe should not
//! need a client certificate from the installation's CA. Everything else stays mTLS-only with
//! roles (`crate::principal`). Binding it beyond loopback is the operator's explicit choice.
//!
//! One Prometheus recorder per process ([`recorder`]): `csap server` runs authz, ARDS and the
//! key server in one process, so its one listener serves the series of all three (prefixed
//! `csap_authz_`, `csap_ards_`, `csap_keyserver_`); a mount's are `csap_mount_`. Gauges that
//! describe state rather than events (ARDS stream lag, queue depths) are refreshed by each
//! service's [`Probe::collect`] right before a scrape renders.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

/// A future a probe returns (object safe).
pub type ProbeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One service's part in `/readyz` and in a scrape.
pub trait Probe: Send + Sync {
    /// The service's name in `/readyz` (`authz`, `ards`, `keyserver`, `mount`).
    fn name(&self) -> &'static str;
    /// Ready to serve: its store answers, its keys are loaded. The error says what is not.
    fn ready(&self) -> ProbeFuture<'_, Result<(), String>>;
    /// Sets the gauges that describe current state, right before a scrape renders.
    fn collect(&self) -> ProbeFuture<'_, ()>;
}

/// Latency buckets (seconds) of every `*_seconds` histogram: a cached license is well under a
/// millisecond, a cold one a few, a revocation reaching a mount about a second.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the audit group commit's batch size (records per transaction).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How long a probe may take before `/readyz` calls its service not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use as the global `metrics`
/// recorder; every later call returns the same handle.
pub fn recorder() -> Result<PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_batch_records".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
}

/// Everything a scrape or probe needs.
#[derive(Clone)]
struct Ops {
    handle: PrometheusHandle,
    probes: Arc<Vec<Arc<dyn Probe>>>,
}

impl Ops {
    /// The exposition after every probe refreshed its gauges.
    async fn render(&self) -> String {
        for p in self.probes.iter() {
            // A probe that hangs must not hang the scrape: its gauges stay as they were.
            let _ = tokio::time::timeout(PROBE_TIMEOUT, p.collect()).await;
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// `(all ready, per service: null or what is wrong)`.
    async fn readiness(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut all = true;
        let mut services = serde_json::Map::new();
        for p in self.probes.iter() {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, p.ready()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            let value = match outcome {
                Ok(()) => serde_json::json!({"ready": true}),
                Err(why) => {
                    all = false;
                    serde_json::json!({"ready": false, "error": why})
                }
            };
            services.insert(p.name().to_string(), value);
        }
        (all, services)
    }
}

/// The router of the operations listener (without a socket, for tests).
pub fn router(handle: PrometheusHandle, probes: Vec<Arc<dyn Probe>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "no such endpoint (try /metrics, /healthz, /readyz)"})),
            )
        })
        .with_state(Ops {
            handle,
            probes: Arc::new(probes),
        })
}

async fn metrics(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.render().await,
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let (ready, services) = ops.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": ready, "services": services})),
    )
        .into_response()
}

/// `/readyz` of one service on its own mTLS router: 200 `{"ready": true}`, else 503 with the
/// reason.
pub async fn readiness_response(probe: &dyn Probe) -> Response {
    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.ready()).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    match outcome {
        Ok(()) => Json(serde_json::json!({"ready": true})).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "error": why})),
        )
            .into_response(),
    }
}

/// A running operations listener.
pub struct OpsListener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl OpsListener {
    /// `http://ADDR`, as printed for operators.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.upkeep.abort();
    }
}

/// Binds `addr` and serves the operations routes for `probes` on the current runtime.
pub async fn serve(addr: SocketAddr, probes: Vec<Arc<dyn Probe>>) -> Result<OpsListener, String> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("the metrics listener cannot bind {addr}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the metrics listener on {addr}: {e}"))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the metrics listener is reachable beyond this host (plain HTTP, no authentication)");
    }
    let (stop, mut stop_rx) = watch::channel(false);
    let app = router(handle.clone(), probes);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    // Upkeep drains histogram samples even when nobody scrapes for a while.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    tracing::info!(url = %format!("http://{addr}/metrics"), "metrics listener up");
    Ok(OpsListener {
        addr,
        stop,
        task,
        upkeep,
    })
}

/// A `--metrics-listen` value: an address, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenChoice(pub Option<SocketAddr>);

impl std::str::FromStr for ListenChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(ListenChoice(None));
        }
        s.parse()
            .map(|a| ListenChoice(Some(a)))
            .map_err(|_| format!("{s:?}: give HOST:PORT (e.g. 127.0.0.1:7403) or off"))
    }
}
