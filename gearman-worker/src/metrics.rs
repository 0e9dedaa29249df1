//! Prometheus metrics and the health check, served over plain HTTP on
//! `--metrics-addr HOST:PORT` (TOML `metrics_addr`; off by default).
//!
//! - `GET /metrics`: the counters below in the text exposition format
//!   (OpenMetrics 1.0 text, which Prometheus reads; it ends with `# EOF`).
//! - `GET /healthz`: `200 ok` when at least one job server answers (and, for
//!   the relay, every database is connected); `503` with a one-line reason
//!   otherwise.
//!
//! Crates: `prometheus-client` (the Prometheus project's own Rust client:
//! lock-free atomics per series, text encoder, no protobuf) and `tiny_http`
//! (a small synchronous HTTP/1.1 server on one thread, no async runtime):
//! both are used by this binary only, never by gearman-core.
//!
//! A job updates a few atomics through per-function handles made once
//! ([`FunctionMetrics`]), so counting costs no lookup or allocation per job.
//! `gearman_worker_servers_connected` is measured at scrape time: each job
//! server is asked for its `version` (admin protocol) with a
//! [`PROBE_TIMEOUT`] bound; the count is how many answered.

use gearman_core::admin::Admin;
use gearman_core::ServerList;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Bound on asking one job server whether it answers, per scrape.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a job ended, as the `outcome` label of `gearman_worker_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// WORK_COMPLETE.
    Ok,
    /// Failed before the function's timeout (non-zero exit, SQL error, panic).
    Failed,
    /// Failed after running for at least the function's timeout.
    Timeout,
    /// Failed and was scheduled to be tried again.
    Retried,
    /// Failed for the last time and was sent to the dead-letter destination.
    DeadLetter,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Retried,
        Outcome::DeadLetter,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Retried => "retried",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    function: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

type HistogramFamily = Family<FunctionLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 5 ms .. about 328 s, doubling.
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

/// Every metric of the process, and what `/healthz` checks.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    duration: HistogramFamily,
    running: Family<FunctionLabel, Gauge>,
    servers_connected: Gauge,
    relay_rows: Family<SourceLabel, Counter>,
    relay_outbox_rows: Family<SourceLabel, Gauge>,
    relay_oldest_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    relay_errors: Family<SourceLabel, Counter>,
    servers: RwLock<Option<ServerList>>,
    /// Relay sources by name: `None` when connected, else the last error.
    sources: Mutex<BTreeMap<String, Option<String>>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry holding every metric, all empty.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let running = Family::<FunctionLabel, Gauge>::default();
        let servers_connected = Gauge::default();
        let relay_rows = Family::<SourceLabel, Counter>::default();
        let relay_outbox_rows = Family::<SourceLabel, Gauge>::default();
        let relay_oldest_age = Family::<SourceLabel, Gauge<f64, AtomicU64>>::default();
        let relay_errors = Family::<SourceLabel, Counter>::default();
        registry.register(
            "gearman_worker_jobs",
            "Jobs handled, by function and outcome (ok, failed, timeout, retried, dead_letter)",
            jobs.clone(),
        );
        registry.register(
            "gearman_worker_job_duration_seconds",
            "Time a job spent in its handler, by function",
            duration.clone(),
        );
        registry.register(
            "gearman_worker_jobs_running",
            "Jobs running now, by function",
            running.clone(),
        );
        registry.register(
            "gearman_worker_servers_connected",
            "Job servers that answered at this scrape",
            servers_connected.clone(),
        );
        registry.register(
            "gearman_relay_rows",
            "Outbox rows relayed to the job server, by source",
            relay_rows.clone(),
        );
        registry.register(
            "gearman_relay_outbox_rows",
            "Outbox rows waiting to be relayed, by source",
            relay_outbox_rows.clone(),
        );
        registry.register(
            "gearman_relay_oldest_row_age_seconds",
            "Age of the oldest waiting outbox row, by source (0 when none waits)",
            relay_oldest_age.clone(),
        );
        registry.register(
            "gearman_relay_errors",
            "Database and job-server errors of the relay, by source",
            relay_errors.clone(),
        );
        Metrics {
            registry,
            jobs,
            duration,
            running,
            servers_connected,
            relay_rows,
            relay_outbox_rows,
            relay_oldest_age,
            relay_errors,
            servers: RwLock::new(None),
            sources: Mutex::new(BTreeMap::new()),
        }
    }

    /// Handles for one function's series; every outcome starts at 0.
    pub fn function(&self, name: &str) -> FunctionMetrics {
        let label = FunctionLabel {
            function: name.to_string(),
        };
        let outcomes = Outcome::ALL.map(|o| {
            self.jobs
                .get_or_create(&JobLabels {
                    function: name.to_string(),
                    outcome: o.as_str().to_string(),
                })
                .clone()
        });
        FunctionMetrics {
            outcomes,
            duration: self.duration.get_or_create(&label).clone(),
            running: self.running.get_or_create(&label).clone(),
        }
    }

    /// Sets the job servers probed by `/metrics` and `/healthz`.
    pub fn set_servers(&self, servers: ServerList) {
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = Some(servers);
    }

    /// Handles for one relay source (`postgres://host:port/db` shape, redacted).
    pub fn source(&self, name: &str) -> SourceMetrics {
        let label = SourceLabel {
            source: name.to_string(),
        };
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Some("not connected yet".into()));
        SourceMetrics {
            name: name.to_string(),
            rows: self.relay_rows.get_or_create(&label).clone(),
            outbox_rows: self.relay_outbox_rows.get_or_create(&label).clone(),
            oldest_age: self.relay_oldest_age.get_or_create(&label).clone(),
            errors: self.relay_errors.get_or_create(&label).clone(),
        }
    }

    /// Records whether relay source `name` is connected (`None`) or why not.
    pub fn set_source_state(&self, name: &str, error: Option<String>) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), error);
    }

    /// Asks every job server for its version; returns how many answered and
    /// the errors of the others.
    fn probe_servers(&self) -> (i64, Vec<String>) {
        let servers = self
            .servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(servers) = servers else {
            return (0, vec!["no job server configured".into()]);
        };
        // One deadline for the whole probe, so a request never waits a
        // connect timeout per dead server.
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let mut up = 0;
        let mut errors = Vec::new();
        for addr in servers.iter() {
            let tls = crate::tls::current();
            match Admin::connect_with(
                addr,
                PROBE_TIMEOUT,
                PROBE_TIMEOUT,
                Some(deadline),
                tls.as_ref(),
            )
            .and_then(|mut a| a.version())
            {
                Ok(_) => up += 1,
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        (up, errors)
    }

    /// The `/metrics` body (probes the job servers first).
    pub fn render(&self) -> String {
        let (up, _) = self.probe_servers();
        self.servers_connected.set(up);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `/healthz`: `Ok(())`, or the one-line reason it is unhealthy.
    ///
    /// # Errors
    /// No job server answered, or a relay source is not connected.
    pub fn health(&self) -> Result<(), String> {
        let (up, errors) = self.probe_servers();
        self.servers_connected.set(up);
        if up == 0 {
            return Err(format!("no job server reachable ({})", errors.join("; ")));
        }
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let down: Vec<String> = sources
            .iter()
            .filter_map(|(n, e)| e.as_ref().map(|e| format!("{n}: {e}")))
            .collect();
        if !down.is_empty() {
            return Err(format!("database not reachable ({})", down.join("; ")));
        }
        Ok(())
    }
}

/// Pre-fetched series of one function: counting a job touches atomics only.
#[derive(Debug, Clone)]
pub struct FunctionMetrics {
    outcomes: [Counter; 5],
    duration: Histogram,
    running: Gauge,
}

impl FunctionMetrics {
    /// A job started (`jobs_running` + 1).
    pub fn start(&self) {
        self.running.inc();
    }

    /// A job ended after `took` with `outcome` (`jobs_running` - 1).
    pub fn finish(&self, outcome: Outcome, took: Duration) {
        self.running.dec();
        self.duration.observe(took.as_secs_f64());
        self.count(outcome);
    }

    /// Counts `outcome` once more without touching the other series (a
    /// job that failed and was then retried or dead-lettered).
    pub fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(1);
        self.outcomes[i].inc();
    }
}

/// Series of one relay source.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    name: String,
    /// Rows relayed.
    pub rows: Counter,
    /// Rows waiting.
    pub outbox_rows: Gauge,
    /// Age in seconds of the oldest waiting row.
    pub oldest_age: Gauge<f64, AtomicU64>,
    /// Errors.
    pub errors: Counter,
}

impl SourceMetrics {
    /// The source's label value.
    pub fn name(&self) -> &str {
        &self.name
    }
}

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// The process's metrics, when `--metrics-addr` turned them on.
pub fn global() -> Option<&'static Arc<Metrics>> {
    GLOBAL.get()
}

/// Turns metrics on and serves them on `addr` from a background thread.
///
/// # Errors
/// The address cannot be listened on (named in the message), or metrics
/// were already started.
pub fn serve(addr: &str) -> Result<Arc<Metrics>, String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("metrics_addr: cannot listen on {addr}: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    GLOBAL
        .set(metrics.clone())
        .map_err(|_| "metrics_addr: metrics already started".to_string())?;
    let m = metrics.clone();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                respond(&m, req);
            }
        })
        .map_err(|e| format!("metrics_addr: cannot start thread: {e}"))?;
    log::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    Ok(metrics)
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid ASCII header")
}

fn respond(m: &Metrics, req: tiny_http::Request) {
    use tiny_http::{Method, Response};
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let text = "text/plain; charset=utf-8";
    let (code, ctype, body) = match (req.method(), path.as_str()) {
        (Method::Get, "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.render(),
        ),
        (Method::Get, "/healthz") => match m.health() {
            Ok(()) => (200, text, "ok\n".to_string()),
            Err(e) => (503, text, format!("{e}\n")),
        },
        (Method::Get, _) => (404, text, "not found: try /metrics or /healthz\n".into()),
        _ => (405, text, "only GET is served\n".into()),
    };
    let resp = Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", ctype));
    let _ = req.respond(resp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_counted() {
        let m = Metrics::new();
        let f = m.function("resize");
        f.start();
        f.finish(Outcome::Ok, Duration::from_millis(20));
        f.start();
        f.finish(Outcome::Timeout, Duration::from_secs(2));
        f.count(Outcome::Retried);
        let s = m.source("postgres://db:5432/app");
        s.rows.inc_by(3);
        let text = m.render();
        for line in [
            "gearman_worker_jobs_total{function=\"resize\",outcome=\"ok\"} 1",
            "gearman_worker_jobs_total{function=\"resize\",outcome=\"timeout\"} 1",
            "gearman_worker_jobs_total{function=\"resize\",outcome=\"retried\"} 1",
            "gearman_worker_jobs_total{function=\"resize\",outcome=\"failed\"} 0",
            "gearman_worker_jobs_total{function=\"resize\",outcome=\"dead_letter\"} 0",
            "gearman_worker_job_duration_seconds_count{function=\"resize\"} 2",
            "gearman_worker_jobs_running{function=\"resize\"} 0",
            "gearman_worker_servers_connected 0",
            "gearman_relay_rows_total{source=\"postgres://db:5432/app\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let e = m.health().unwrap_err();
        assert!(e.starts_with("no job server reachable"), "{e}");
    }
}
