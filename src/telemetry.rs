//! What kubegate counts, and the one registry it is counted in. A leaf:
//! every subsystem holds handles to its own counters and pushes to them
//! where the event happens; the admin server only renders the registry.
//!
//! Counters are atomics; a label set's first use takes a write lock once,
//! later uses a shared read lock.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
enum Direction {
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
    /// A port-forward was relayed byte for byte: the apiserver takes no
    /// SPDY.
    Relayed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    code: u16,
    decision: Decision,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
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
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

/// The audit backends' counters, pushed by the log writer and the webhook.
#[derive(Debug, Clone, Default)]
pub struct AuditCounters {
    /// Lines the log writer wrote.
    pub written: Counter,
    /// Lines lost to log write errors.
    pub lost: Counter,
    /// Lines queued for the log writer and not yet written.
    pub waiting: Gauge,
    /// Events the webhook's buffer had no room for.
    pub webhook_overflowed: Counter,
    /// Events dropped after the collector refused them or stayed down.
    pub webhook_dropped: Counter,
}

/// The apiserver connections' counters, shared by every cluster.
#[derive(Debug, Clone, Default)]
pub struct UpstreamCounters {
    connections: Counter,
    refreshes: Family<OutcomeLabels, Counter>,
}

impl UpstreamCounters {
    /// A connection (TCP, and a TLS handshake to a TLS apiserver) opened.
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// A token reload or exec plugin run that worked, or failed.
    pub fn refreshed(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Client connections closed to make room at `--max-connections`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionCounters {
    shed: Family<ReasonLabels, Counter>,
}

impl ConnectionCounters {
    /// A connection closed for room: one that had not sent a request yet,
    /// or one idle after its last response.
    pub fn shed(&self, never_asked: bool) {
        let reason = if never_asked { "no-request" } else { "idle" };
        self.shed.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// The multiplexed port-forward counters.
#[derive(Debug, Default)]
struct PortForwardCounters {
    sessions: Gauge<i64, AtomicI64>,
    sessions_opened: Counter,
    clients: Counter,
    streams: Gauge<i64, AtomicI64>,
    streams_opened: Counter,
    streams_refused: Counter,
    websockets_over_http2: Counter,
    relayed: Counter,
}

/// Everything kubegate counts, registered once.
pub struct Telemetry {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
    streams: Family<StreamLabels, Gauge>,
    bytes: Family<DirectionLabels, Counter>,
    policy_refusals: Family<RuleLabels, Counter>,
    port_forward: PortForwardCounters,
    /// The audit backends'.
    pub audit: AuditCounters,
    /// The apiserver connections'.
    pub upstream: UpstreamCounters,
    /// The client connections'.
    pub connections: ConnectionCounters,
    recordings: Family<StatusLabels, Counter>,
    recording_bytes: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut telemetry = Telemetry {
            registry: Registry::with_prefix("kubegate"),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            streams: Family::default(),
            bytes: Family::default(),
            policy_refusals: Family::default(),
            port_forward: PortForwardCounters::default(),
            audit: AuditCounters::default(),
            upstream: UpstreamCounters::default(),
            connections: ConnectionCounters::default(),
            recordings: Family::default(),
            recording_bytes: Counter::default(),
        };
        telemetry.register();
        telemetry
    }
}

impl Telemetry {
    /// Names every metric in the registry; a counter's name gets `_total`
    /// when it is rendered.
    fn register(&mut self) {
        let r = &mut self.registry;
        let requests = "Requests by Kubernetes verb, status code and kubegate's decision";
        r.register("requests", requests, self.requests.clone());
        let latency = "Time to the response head, by verb";
        r.register("request_duration_seconds", latency, self.latency.clone());
        let streams = "Open exec, attach and port-forward sessions";
        r.register("upgraded_streams_open", streams, self.streams.clone());
        let bytes = "Bytes relayed through upgraded sessions";
        r.register("relayed_bytes", bytes, self.bytes.clone());
        let refusals = "Requests refused by --policy-file or --read-only, by rule (FILE#N, FILE#none, read-only)";
        r.register("policy_refusals", refusals, self.policy_refusals.clone());
        let upstream = &self.upstream;
        let connections =
            "Connections (each a TLS handshake to a TLS apiserver) opened to the apiserver";
        r.register(
            "upstream_connections",
            connections,
            upstream.connections.clone(),
        );
        // Both outcomes are shown from the start, at 0.
        for outcome in ["success", "failure"] {
            let _ = upstream.refreshes.get_or_create(&OutcomeLabels { outcome });
        }
        let refreshes = "Token reloads and exec plugin runs, by outcome";
        r.register(
            "credential_refreshes",
            refreshes,
            upstream.refreshes.clone(),
        );
        let recordings = "Exec and attach sessions by recording status (complete, truncated, incomplete, off); off counts sessions --record-sessions-dir did not record";
        r.register("recordings", recordings, self.recordings.clone());
        let bytes = "Bytes written to session recordings";
        r.register("recording_bytes", bytes, self.recording_bytes.clone());
        let shed = "Client connections closed to make room at --max-connections, by reason (no-request, idle)";
        r.register("connections_shed", shed, self.connections.shed.clone());
        let audit = &self.audit;
        r.register(
            "audit_events_written",
            "Audit events written to the log",
            audit.written.clone(),
        );
        r.register(
            "audit_events_lost",
            "Audit events lost to log write errors",
            audit.lost.clone(),
        );
        r.register(
            "audit_events_waiting",
            "Audit events queued for the log writer",
            audit.waiting.clone(),
        );
        let overflowed = "Audit events the webhook buffer had no room for";
        r.register(
            "audit_webhook_events_overflowed",
            overflowed,
            audit.webhook_overflowed.clone(),
        );
        let dropped =
            "Audit events dropped after the webhook collector refused them or stayed down";
        r.register(
            "audit_webhook_events_dropped",
            dropped,
            audit.webhook_dropped.clone(),
        );
        let pf = &self.port_forward;
        let sessions =
            "Upstream port-forward sessions open (one per pod in use, shared by every client)";
        r.register("port_forward_sessions", sessions, pf.sessions.clone());
        let opened =
            "Upstream port-forward sessions opened (each a TLS handshake and a kubelet dial)";
        r.register(
            "port_forward_sessions_opened",
            opened,
            pf.sessions_opened.clone(),
        );
        let clients = "Client port-forward WebSockets served on shared sessions";
        r.register("port_forward_clients", clients, pf.clients.clone());
        let streams = "Forwarded connections (stream pairs) open on shared sessions";
        r.register("port_forward_streams", streams, pf.streams.clone());
        let opened = "Forwarded connections opened on shared sessions";
        r.register(
            "port_forward_streams_opened",
            opened,
            pf.streams_opened.clone(),
        );
        let refused = "Forwarded connections refused or cut: by the kubelet, a lost session, or a client that stopped reading";
        r.register(
            "port_forward_streams_refused",
            refused,
            pf.streams_refused.clone(),
        );
        let h2 = "WebSocket sessions clients opened over HTTP/2 (RFC 8441 extended CONNECT)";
        r.register(
            "websockets_over_http2",
            h2,
            pf.websockets_over_http2.clone(),
        );
        let relayed = "Port-forwards relayed byte for byte where multiplexing is on, because the apiserver takes no SPDY";
        r.register("port_forward_relayed", relayed, pf.relayed.clone());
    }

    /// Counts a finished request head.
    pub fn request(&self, verb: &'static str, code: u16, decision: Decision, elapsed: Duration) {
        let labels = RequestLabels {
            verb,
            code,
            decision,
        };
        self.requests.get_or_create(&labels).inc();
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
            PortForwardEvent::Relayed => {
                m.relayed.inc();
            }
        }
    }

    /// A session's recording ended (or the session was not recorded).
    pub fn recording(&self, status: &'static str, bytes: u64) {
        self.recordings
            .get_or_create(&StatusLabels { status })
            .inc();
        self.recording_bytes.inc_by(bytes);
    }

    /// Bytes a finished session moved.
    pub fn relayed(&self, to_apiserver: u64, to_client: u64) {
        let direction = |direction| DirectionLabels { direction };
        self.bytes
            .get_or_create(&direction(Direction::to_apiserver))
            .inc_by(to_apiserver);
        self.bytes
            .get_or_create(&direction(Direction::to_client))
            .inc_by(to_client);
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_counters_and_pushed_handles_are_the_registered_ones() {
        let telemetry = Telemetry::default();
        telemetry.request("list", 200, Decision::allow, Duration::from_millis(3));
        telemetry.stream(StreamKind::exec, 1);
        telemetry.audit.written.inc_by(3);
        telemetry.audit.webhook_dropped.inc();
        telemetry.upstream.connection_opened();
        telemetry.upstream.refreshed(false);
        let text = telemetry.encode();
        for line in [
            "kubegate_requests_total{verb=\"list\",code=\"200\",decision=\"allow\"} 1",
            "kubegate_upgraded_streams_open{kind=\"exec\"} 1",
            "# TYPE kubegate_audit_events_written counter",
            "kubegate_audit_events_written_total 3",
            "kubegate_audit_webhook_events_dropped_total 1",
            "kubegate_upstream_connections_total 1",
            "kubegate_credential_refreshes_total{outcome=\"failure\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
