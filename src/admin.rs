//! Operations, on a port of their own (`--admin-address`), since everything
//! on the proxy port belongs to the apiserver: `/healthz` (kubegate is up),
//! `/readyz` (the apiserver answered recently, and kubegate is not shutting
//! down) and `/metrics` (Prometheus text format, with prometheus-client).
//!
//! Counters are atomics; a label set's first use takes a write lock once,
//! later uses a shared read lock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::request::Verb;

/// How recently the apiserver must have answered for `/readyz` to pass.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// The verb, as the metric label `verb`.
impl EncodeLabelValue for Verb {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Whether kubegate let a request through.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Decision {
    allow,
    forbid,
}

/// What an upgraded stream is.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum StreamKind {
    exec,
    attach,
    portforward,
    other,
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Direction {
    to_apiserver,
    to_client,
}

/// What happened in multiplexed port-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortForwardEvent {
    /// An upstream session opened.
    SessionOpened,
    /// An upstream session closed.
    SessionClosed,
    /// A client's port-forward was served on a shared session.
    Client,
    /// A forwarded connection (a stream pair) opened on a session.
    StreamOpened,
    /// A forwarded connection ended.
    StreamClosed,
    /// A forwarded connection was refused or cut: by the kubelet, a lost
    /// session, or a stalled client.
    StreamRefused,
    /// A WebSocket arrived over HTTP/2 (RFC 8441).
    WebSocketOverHttp2,
}

/// The multiplexed port-forward counters.
#[derive(Default)]
struct PortForwardMetrics {
    sessions: Gauge<i64, AtomicI64>,
    sessions_opened: Counter,
    clients: Counter,
    streams: Gauge<i64, AtomicI64>,
    streams_opened: Counter,
    streams_refused: Counter,
    websockets_over_http2: Counter,
}

impl PortForwardMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "port_forward_sessions",
            "Upstream port-forward sessions open (one per pod in use, shared by every client)",
            self.sessions.clone(),
        );
        registry.register(
            "port_forward_sessions_opened",
            "Upstream port-forward sessions opened (each a TLS handshake and a kubelet dial)",
            self.sessions_opened.clone(),
        );
        registry.register(
            "port_forward_clients",
            "Client port-forward WebSockets served on shared sessions",
            self.clients.clone(),
        );
        registry.register(
            "port_forward_streams",
            "Forwarded connections (stream pairs) open on shared sessions",
            self.streams.clone(),
        );
        registry.register(
            "port_forward_streams_opened",
            "Forwarded connections opened on shared sessions",
            self.streams_opened.clone(),
        );
        registry.register(
            "port_forward_streams_refused",
            "Forwarded connections refused or cut: by the kubelet, a lost session, or a client that stopped reading",
            self.streams_refused.clone(),
        );
        registry.register(
            "websockets_over_http2",
            "WebSocket sessions clients opened over HTTP/2 (RFC 8441 extended CONNECT)",
            self.websockets_over_http2.clone(),
        );
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: Verb,
    code: u16,
    decision: Decision,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: Verb,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    kind: StreamKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

/// Everything kubegate counts.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
    streams: Family<StreamLabels, Gauge>,
    bytes: Family<DirectionLabels, Counter>,
    policy_refusals: Family<RuleLabels, Counter>,
    upstream_connections: Gauge<i64, AtomicI64>,
    credential_refreshes: Family<OutcomeLabels, Gauge<i64, AtomicI64>>,
    audit_written: Gauge<i64, AtomicI64>,
    audit_lost: Gauge<i64, AtomicI64>,
    audit_waiting: Gauge<i64, AtomicI64>,
    port_forward: PortForwardMetrics,
    /// Whether the apiserver answered in the last minute, as of the last
    /// scrape (the upstream owns the fact; this mirrors it).
    /// Each served context (empty name: the one cluster) and whether its
    /// apiserver answered recently; written and read at scrape time only.
    apiservers_up: std::sync::Mutex<Vec<(String, bool)>>,
    shutting_down: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubegate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by Kubernetes verb, status code and kubegate's decision",
            requests.clone(),
        );
        let latency = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by verb",
            latency.clone(),
        );
        let streams = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "upgraded_streams_open",
            "Open exec, attach and port-forward sessions",
            streams.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "relayed_bytes",
            "Bytes relayed through upgraded sessions",
            bytes.clone(),
        );
        let policy_refusals = Family::<RuleLabels, Counter>::default();
        registry.register(
            "policy_refusals",
            "Requests refused by --policy-file or --read-only, by rule (FILE#N, FILE#none, read-only)",
            policy_refusals.clone(),
        );
        let upstream_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "upstream_connections",
            "Connections (each a TLS handshake to a TLS apiserver) opened to the apiserver",
            upstream_connections.clone(),
        );
        let credential_refreshes = Family::<OutcomeLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "credential_refreshes",
            "Token reloads and exec plugin runs, by outcome",
            credential_refreshes.clone(),
        );
        let audit_written = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "audit_events_written",
            "Audit events written to the log",
            audit_written.clone(),
        );
        let audit_lost = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "audit_events_lost",
            "Audit events lost to log write errors",
            audit_lost.clone(),
        );
        let audit_waiting = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "audit_events_waiting",
            "Audit events queued for the log writer",
            audit_waiting.clone(),
        );
        let port_forward = PortForwardMetrics::default();
        port_forward.register(&mut registry);
        Metrics {
            registry,
            port_forward,
            requests,
            latency,
            streams,
            bytes,
            policy_refusals,
            upstream_connections,
            credential_refreshes,
            audit_written,
            audit_lost,
            audit_waiting,
            apiservers_up: std::sync::Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts a finished request head.
    pub fn request(&self, verb: Verb, code: StatusCode, decision: Decision, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb,
                code: code.as_u16(),
                decision,
            })
            .inc();
        self.latency
            .get_or_create(&VerbLabels { verb })
            .observe(elapsed.as_secs_f64());
    }

    /// A request the policy refused, by the rule that refused it.
    pub fn policy_refusal(&self, rule: &str) {
        self.policy_refusals
            .get_or_create(&RuleLabels {
                rule: rule.to_string(),
            })
            .inc();
    }

    /// An upgraded session opened (`+1`) or closed (`-1`).
    pub fn stream(&self, kind: StreamKind, delta: i64) {
        self.streams
            .get_or_create(&StreamLabels { kind })
            .inc_by(delta);
    }

    /// Counts a multiplexed port-forward event.
    pub fn port_forward(&self, event: PortForwardEvent) {
        let m = &self.port_forward;
        match event {
            PortForwardEvent::SessionOpened => {
                m.sessions.inc();
                m.sessions_opened.inc();
            }
            PortForwardEvent::SessionClosed => {
                m.sessions.dec();
            }
            PortForwardEvent::Client => {
                m.clients.inc();
            }
            PortForwardEvent::StreamOpened => {
                m.streams.inc();
                m.streams_opened.inc();
            }
            PortForwardEvent::StreamClosed => {
                m.streams.dec();
            }
            PortForwardEvent::StreamRefused => {
                m.streams_refused.inc();
            }
            PortForwardEvent::WebSocketOverHttp2 => {
                m.websockets_over_http2.inc();
            }
        }
    }

    /// Bytes a finished session moved.
    pub fn relayed(&self, to_apiserver: u64, to_client: u64) {
        self.bytes
            .get_or_create(&DirectionLabels {
                direction: Direction::to_apiserver,
            })
            .inc_by(to_apiserver);
        self.bytes
            .get_or_create(&DirectionLabels {
                direction: Direction::to_client,
            })
            .inc_by(to_client);
    }

    /// Counters owned elsewhere, read at scrape time: audit events written,
    /// lost and waiting, connections opened, credential refreshes and
    /// failures.
    pub fn scrape(
        &self,
        written: u64,
        lost: u64,
        waiting: u64,
        connections: u64,
        refreshed: u64,
        failed: u64,
    ) {
        self.audit_written.set(written as i64);
        self.audit_lost.set(lost as i64);
        self.audit_waiting.set(waiting as i64);
        self.upstream_connections.set(connections as i64);
        self.credential_refreshes
            .get_or_create(&OutcomeLabels { outcome: "success" })
            .set(refreshed as i64);
        self.credential_refreshes
            .get_or_create(&OutcomeLabels { outcome: "failure" })
            .set(failed as i64);
    }

    /// Whether each apiserver answered recently (set by the scrape hook).
    pub fn apiservers_up(&self, up: Vec<(String, bool)>) {
        if let Ok(mut apiservers) = self.apiservers_up.lock() {
            *apiservers = up;
        }
    }

    /// `/readyz` fails from now on.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// `/readyz`: ready when not shutting down and every apiserver answered
    /// recently; `verbose` lists each check, as the apiserver's does.
    fn ready(&self, verbose: bool) -> (bool, String) {
        let mut checks = vec![(
            "shutdown".to_string(),
            !self.shutting_down.load(Ordering::Acquire),
            "shutting down".to_string(),
        )];
        let apiservers = self
            .apiservers_up
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        if apiservers.is_empty() {
            checks.push(("apiserver".into(), false, "not checked yet".into()));
        }
        for (name, up) in apiservers {
            let check = match name.as_str() {
                "" => "apiserver".to_string(),
                name => format!("context:{name}"),
            };
            checks.push((
                check,
                up,
                "the apiserver has not answered in the last minute".into(),
            ));
        }
        let ready = checks.iter().all(|(_, ok, _)| *ok);
        let mut text = String::new();
        for (check, ok, why) in &checks {
            match ok {
                true if verbose => text.push_str(&format!("[+]{check} ok\n")),
                false => text.push_str(&format!("[-]{check} failed: {why}\n")),
                true => {}
            }
        }
        text.push_str(match ready {
            true => "ok\n",
            false => "not ready\n",
        });
        (ready, text)
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the
/// process ends. `scrape` first updates what is owned elsewhere (counters,
/// whether the apiserver answered recently), for `/metrics` and `/readyz`.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    scrape: impl Fn(&Metrics) + Send + Sync + 'static,
) {
    let audit = Arc::new(scrape);
    tokio::spawn(async move {
        let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
            TokioExecutor::new(),
        ));
        while let Ok((stream, _)) = listener.accept().await {
            let (metrics, audit, builder) = (metrics.clone(), audit.clone(), builder.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (metrics, audit) = (metrics.clone(), audit.clone());
                    async move {
                        Ok::<_, Infallible>(answer(
                            &metrics,
                            &*audit,
                            request.uri().path(),
                            is_verbose(request.uri().query()),
                        ))
                    }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn answer(
    metrics: &Metrics,
    scrape: &dyn Fn(&Metrics),
    path: &str,
    verbose: bool,
) -> Response<ProxyBody> {
    if path == "/readyz" || path == "/metrics" {
        scrape(metrics);
    }
    let (code, content_type, body) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match metrics.ready(verbose) {
            (true, text) => (StatusCode::OK, "text/plain", text),
            (false, text) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", text),
        },
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the admin port serves /healthz, /readyz and /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = code;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Whether a query asks for `verbose` (`?verbose`, `?verbose=true`).
fn is_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "verbose" || pair.starts_with("verbose="))
    })
}

/// Binds the admin address.
///
/// # Errors
///
/// The bind error, for a start-up message.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let metrics = Metrics::default();
        metrics.request(
            Verb::List,
            StatusCode::OK,
            Decision::allow,
            Duration::from_millis(3),
        );
        metrics.stream(StreamKind::exec, 1);
        let text = metrics.encode();
        assert!(
            text.contains(
                "kubegate_requests_total{verb=\"list\",code=\"200\",decision=\"allow\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kubegate_upgraded_streams_open{kind=\"exec\"} 1"),
            "{text}"
        );
        assert!(!metrics.ready(false).0);
        metrics.apiservers_up(vec![(String::new(), true)]);
        assert_eq!(metrics.ready(false), (true, "ok\n".to_string()));
        metrics.apiservers_up(vec![("a".into(), true), ("b".into(), false)]);
        let (ready, text) = metrics.ready(true);
        assert!(!ready);
        assert!(
            text.contains("[+]context:a ok\n[-]context:b failed"),
            "{text}"
        );
        metrics.apiservers_up(vec![(String::new(), true)]);
        metrics.shutting_down();
        assert!(!metrics.ready(false).0);
    }
}
