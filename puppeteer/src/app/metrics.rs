//! Prometheus metrics: counters and histograms kept as things happen, gauges
//! computed from the store at scrape time, served as the Prometheus text
//! format (version 0.0.4) on a listener of their own.
//!
//! The metrics listener is off by default (`metrics_listen` in the config
//! file, `--metrics-listen` on the command line). It speaks plain HTTP with
//! no authentication: bind it to loopback or a private network that only
//! your Prometheus reaches. It serves `GET /metrics` and answers 404 to
//! anything else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, Shared};
use crate::domain::{PuppetState, Run, RunState};
use crate::presence::Presence;

/// The `Content-Type` of the answer to `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A scrape (or any request) on the metrics port must be complete by then.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many ended runs are remembered to recognise resent reports.
const RECENTLY_ENDED: usize = 65_536;

type RecentlyEnded = (HashSet<(String, u32)>, VecDeque<(String, u32)>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabel {
    report: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PresenceLabel {
    presence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabel {
    site: String,
    /// "puppeteer" or "peer".
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

/// The puppeteer's metrics. Cloning is cheap: clones share their values.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Held while the scrape-time gauges are recomputed and encoded, so
    /// concurrent scrapes do not interleave.
    scrape: Arc<Mutex<()>>,
    /// Runs (id, attempt) counted as ended lately, oldest first.
    recently_ended: Arc<Mutex<RecentlyEnded>>,
    runs_finished: Family<StateLabel, Counter>,
    poll_hold: Histogram,
    dispatch_latency: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    notification_failures: Counter,
    artifact_bytes: Counter,
    site_bytes: Family<SiteLabel, Counter>,
    puppets: Family<PresenceLabel, Gauge>,
    puppets_pending: Gauge,
    runs: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    resource_capacity: Family<ResourceLabel, Gauge>,
    resource_used: Family<ResourceLabel, Gauge>,
    resource_waiters: Family<ResourceLabel, Gauge>,
    store_size: Gauge,
    duplicate_reports: Family<ReportLabel, Counter>,
    log_dropped: Counter,
    pruned_runs: Counter,
    unauthenticated: Counter,
    refused_connections: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            scrape: Default::default(),
            recently_ended: Default::default(),
            runs_finished: Default::default(),
            // From an answer at once to the longest hold (1h).
            poll_hold: Histogram::new([
                0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
            ]),
            dispatch_latency: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            request_bytes: Default::default(),
            response_bytes: Default::default(),
            notification_failures: Default::default(),
            artifact_bytes: Default::default(),
            site_bytes: Default::default(),
            puppets: Default::default(),
            puppets_pending: Default::default(),
            runs: Default::default(),
            queue_depth: Default::default(),
            resource_capacity: Default::default(),
            resource_used: Default::default(),
            resource_waiters: Default::default(),
            store_size: Default::default(),
            duplicate_reports: Default::default(),
            log_dropped: Default::default(),
            pruned_runs: Default::default(),
            unauthenticated: Default::default(),
            refused_connections: Default::default(),
        };
        let mut r = Registry::default();
        r.register(
            "geppetto_puppets",
            "Enrolled puppets by presence (pending and revoked ones aside)",
            m.puppets.clone(),
        );
        r.register(
            "geppetto_puppets_pending",
            "Enrolled puppets waiting for approval",
            m.puppets_pending.clone(),
        );
        r.register("geppetto_runs", "Unfinished runs by state", m.runs.clone());
        r.register(
            "geppetto_queue_depth",
            "Runs not yet offered to their puppet (queued or waiting)",
            m.queue_depth.clone(),
        );
        r.register(
            "geppetto_resource_capacity",
            "Capacity of each resource",
            m.resource_capacity.clone(),
        );
        r.register(
            "geppetto_resource_used",
            "Capacity of each resource held by runs now",
            m.resource_used.clone(),
        );
        r.register(
            "geppetto_resource_waiters",
            "Runs waiting for each resource",
            m.resource_waiters.clone(),
        );
        r.register(
            "geppetto_store_size_bytes",
            "Size of the database on disk",
            m.store_size.clone(),
        );
        // Counters: the encoder appends `_total`.
        r.register(
            "geppetto_runs_finished",
            "Runs that reached a terminal state, by state",
            m.runs_finished.clone(),
        );
        r.register(
            "geppetto_poll_hold_seconds",
            "How long each puppet poll was held before its answer",
            m.poll_hold.clone(),
        );
        r.register(
            "geppetto_dispatch_latency_seconds",
            "Time from a run's creation to its offer to its puppet",
            m.dispatch_latency.clone(),
        );
        r.register(
            "geppetto_request_bytes",
            "Bytes of request bodies received by the API",
            m.request_bytes.clone(),
        );
        r.register(
            "geppetto_response_bytes",
            "Bytes of response bodies sent by the API",
            m.response_bytes.clone(),
        );
        r.register(
            "geppetto_notification_failures",
            "Notifications that could not be delivered",
            m.notification_failures.clone(),
        );
        r.register(
            "geppetto_duplicate_reports",
            "Puppet reports that changed nothing (resends after a lost answer), by report: start_run, append_log (a chunk held in full or in part), finish_run",
            m.duplicate_reports.clone(),
        );
        r.register(
            "geppetto_log_dropped_bytes",
            "Bytes of run output received but dropped by the per-run log limit",
            m.log_dropped.clone(),
        );
        r.register(
            "geppetto_pruned_runs",
            "Runs removed with their logs by the retention policy",
            m.pruned_runs.clone(),
        );
        r.register(
            "geppetto_connections_refused",
            "Connections closed at once because their source address held as many as allowed, by bound: per_address, unauthenticated_per_address",
            m.refused_connections.clone(),
        );
        r.register(
            "geppetto_unauthenticated_calls",
            "Calls refused because they carried no valid credential (counted, never stored)",
            m.unauthenticated.clone(),
        );
        r.register(
            "geppetto_artifact_bytes_sent",
            "Bytes of artifact content streamed to puppets",
            m.artifact_bytes.clone(),
        );
        r.register(
            "geppetto_site_artifact_bytes",
            "Bytes of artifact content received by the puppets of each site, by source: the puppeteer (across the site's uplink) or the site's peers",
            m.site_bytes.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Counts a run that reached a terminal state, once per attempt: a
    /// resent report hands the same ended run over again, and is recognised
    /// among the recently counted ones.
    pub fn run_ended(&self, run: &Run) {
        if !run.state.is_terminal() {
            return;
        }
        {
            let mut recent = self
                .recently_ended
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let key = (run.id.clone(), run.attempt);
            if !recent.0.insert(key.clone()) {
                return;
            }
            recent.1.push_back(key);
            if recent.1.len() > RECENTLY_ENDED
                && let Some(old) = recent.1.pop_front()
            {
                recent.0.remove(&old);
            }
        }
        self.runs_finished
            .get_or_create(&StateLabel {
                state: run.state.name().to_string(),
            })
            .inc();
    }

    /// A poll was answered after being held this long.
    pub fn poll_held(&self, held: Duration) {
        self.poll_hold.observe(held.as_secs_f64());
    }

    /// A run was offered this long after it was created.
    pub fn dispatched(&self, latency: Duration) {
        self.dispatch_latency.observe(latency.as_secs_f64());
    }

    /// A notification could not be delivered.
    pub fn notification_failed(&self) {
        self.notification_failures.inc();
    }

    /// A puppet report changed nothing (`report` names the call).
    pub fn duplicate_report(&self, report: &str) {
        self.duplicate_reports
            .get_or_create(&ReportLabel {
                report: report.to_string(),
            })
            .inc();
    }

    /// Output bytes fell into the dropped middle of a truncated log.
    pub fn log_dropped(&self, bytes: u64) {
        self.log_dropped.inc_by(bytes);
    }

    /// Retention removed runs.
    pub fn pruned_runs(&self, count: u64) {
        self.pruned_runs.inc_by(count);
    }

    /// Bytes of artifact content were sent to a puppet.
    pub fn artifact_sent(&self, bytes: u64) {
        self.artifact_bytes.inc_by(bytes);
    }

    /// Bytes of artifact content a site's puppets received from `source`
    /// ("puppeteer" or "peer").
    pub fn site_bytes(&self, site: &str, source: &str, bytes: u64) {
        self.site_bytes
            .get_or_create(&SiteLabel {
                site: site.to_string(),
                source: source.to_string(),
            })
            .inc_by(bytes);
    }

    /// Artifact content bytes sent since the start.
    pub fn artifact_bytes_sent(&self) -> u64 {
        self.artifact_bytes.get()
    }

    /// The counters of refused connections, by bound, in the order of
    /// `server::limits::Refused`.
    pub fn refused_connections(&self) -> [Counter; 2] {
        ["per_address", "unauthenticated_per_address"].map(|reason| {
            self.refused_connections
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .clone()
        })
    }

    /// The counter of calls refused for their credential (kept by `Auth`).
    pub fn unauthenticated_calls(&self) -> Counter {
        self.unauthenticated.clone()
    }

    /// The counter of request body bytes (for the byte-counting layer).
    pub fn request_bytes(&self) -> Counter {
        self.request_bytes.clone()
    }

    /// The counter of response body bytes (for the byte-counting layer).
    pub fn response_bytes(&self) -> Counter {
        self.response_bytes.clone()
    }

    /// Recomputes the gauges from the store and encodes every metric in the
    /// Prometheus text format.
    pub fn render(&self, state: &AppState) -> Result<String> {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(state)?;
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh(&self, state: &AppState) -> Result<()> {
        let store = &state.store;
        let mut pending = 0;
        let mut by_presence = [0i64; 3];
        // One at a time: a scrape every few seconds would otherwise hold
        // every puppet's record at once, and keep the memory it freed
        // resident until the next trim.
        for puppet in store.puppets() {
            let puppet = puppet?;
            if puppet.revoked {
                continue;
            }
            if puppet.state == PuppetState::Pending {
                pending += 1;
                continue;
            }
            let i = match state.presences.of(&puppet, state.config.presence) {
                Presence::Online => 0,
                Presence::Late => 1,
                Presence::Offline => 2,
            };
            by_presence[i] += 1;
        }
        for (name, n) in ["online", "late", "offline"].iter().zip(by_presence) {
            self.puppets
                .get_or_create(&PresenceLabel {
                    presence: name.to_string(),
                })
                .set(n);
        }
        self.puppets_pending.set(pending);

        let active = store.all_active_runs()?;
        let mut by_state: HashMap<RunState, i64> = HashMap::new();
        let mut waiting_for: HashMap<String, i64> = HashMap::new();
        for run in &active {
            *by_state.entry(run.state).or_default() += 1;
            if run.state == RunState::Waiting
                && let Some(resource) = run.cause.strip_prefix("waiting for resource ")
            {
                *waiting_for.entry(resource.to_string()).or_default() += 1;
            }
        }
        for s in [
            RunState::Queued,
            RunState::Waiting,
            RunState::Offered,
            RunState::Running,
        ] {
            self.runs
                .get_or_create(&StateLabel {
                    state: s.name().to_string(),
                })
                .set(by_state.get(&s).copied().unwrap_or(0));
        }
        self.queue_depth.set(
            by_state.get(&RunState::Queued).copied().unwrap_or(0)
                + by_state.get(&RunState::Waiting).copied().unwrap_or(0),
        );

        // Removed resources must disappear from the output.
        self.resource_capacity.clear();
        self.resource_used.clear();
        self.resource_waiters.clear();
        for r in store.list_resources()? {
            let label = ResourceLabel {
                resource: r.resource.name.clone(),
            };
            self.resource_capacity
                .get_or_create(&label)
                .set(i64::from(r.resource.capacity));
            self.resource_used
                .get_or_create(&label)
                .set(i64::from(r.used));
            self.resource_waiters
                .get_or_create(&label)
                .set(waiting_for.get(&r.resource.name).copied().unwrap_or(0));
        }

        self.store_size
            .set(i64::try_from(store.size_on_disk()?).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Shared,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let stop = shutdown.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = tokio::time::timeout(REQUEST_TIMEOUT * 2, conn.as_mut()) => r.ok(),
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            tokio::time::timeout(REQUEST_TIMEOUT, conn.as_mut()).await.ok()
                        }
                    };
                    if let Some(Err(e)) = result {
                        tracing::debug!(%peer, error = %e, "metrics connection failed");
                    }
                });
            }
        }
    }
    connections.shutdown().await;
    Ok(())
}

async fn answer(state: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_str(content_type)
                .unwrap_or(hyper::header::HeaderValue::from_static("text/plain")),
        );
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    // The store reads are synchronous: keep them off the async workers.
    let state = state.clone();
    let rendered = tokio::task::spawn_blocking(move || state.metrics.render(&state)).await;
    match rendered {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot compute the metrics");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot compute the metrics: {e}\n"),
            )
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot compute the metrics: {e}\n"),
        ),
    }
}

/// A tower layer counting the bytes of request and response bodies.
#[derive(Clone, Debug)]
pub struct CountBytesLayer {
    request_bytes: Counter,
    response_bytes: Counter,
}

impl CountBytesLayer {
    pub fn new(metrics: &Metrics) -> Self {
        CountBytesLayer {
            request_bytes: metrics.request_bytes(),
            response_bytes: metrics.response_bytes(),
        }
    }
}

impl<S> tower::Layer<S> for CountBytesLayer {
    type Service = CountBytes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountBytes {
            inner,
            request_bytes: self.request_bytes.clone(),
            response_bytes: self.response_bytes.clone(),
        }
    }
}

/// The service of [`CountBytesLayer`].
#[derive(Clone, Debug)]
pub struct CountBytes<S> {
    inner: S,
    request_bytes: Counter,
    response_bytes: Counter,
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for CountBytes<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    ResBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = CountBytesFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let counted = self.request_bytes.clone();
        let req = req.map(|body| tonic::body::Body::new(count_frames(body, counted)));
        CountBytesFuture {
            inner: self.inner.call(req),
            response_bytes: self.response_bytes.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`CountBytes`]: its inner service's, with the
    /// response body counted. A plain future rather than a boxed async
    /// block: a held poll keeps it for its whole hold.
    pub struct CountBytesFuture<F> {
        #[pin]
        inner: F,
        response_bytes: Counter,
    }
}

impl<F, ResBody, E> std::future::Future for CountBytesFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let counted = this.response_bytes.clone();
        std::task::Poll::Ready(Ok(
            response.map(|body| tonic::body::Body::new(count_frames(body, counted)))
        ))
    }
}

/// `body`, adding the size of each of its data frames to `counted`.
fn count_frames<B>(
    body: B,
    counted: Counter,
) -> impl hyper::body::Body<Data = Bytes, Error = B::Error>
where
    B: hyper::body::Body<Data = Bytes>,
{
    use http_body_util::BodyExt as _;
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counted.inc_by(data.len() as u64);
        }
        frame
    })
}
