//! Multiplexed port-forward: a client's WebSocket port-forward
//! (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`) is answered by
//! kubegate, and each of its ports becomes a stream pair on one shared
//! upstream session per pod, as kubectl's own SPDY port-forward does. A
//! new forwarded connection then costs two streams, not a TCP and TLS
//! handshake to the apiserver and a kubelet dial.
//!
//! - [`session`]: the upstream SPDY session and its back-pressure rule.
//! - [`client`]: the client's WebSocket and the kubelet's channel protocol.
//!
//! The session is `SPDY/3.1+portforward.k8s.io` tunneled in a WebSocket
//! where the apiserver accepts it (1.31 and later by default), else a raw
//! `Upgrade: SPDY/3.1` (every apiserver). It is opened on first use
//! (concurrent first clients share one dial), closed after
//! `--port-forward-idle-timeout` without connections, and replaced when it
//! breaks. Sessions are never shared across clusters, pods, or (with
//! `--forward-client-credentials`, where the client's own identity goes
//! upstream) at all: those clients get the byte relay.

pub mod client;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::access::BEARER_SUBPROTOCOL_PREFIX;
use crate::audit::Record;
use crate::body::ProxyBody;
use crate::connection::Busy;
use crate::handshake;
use crate::request::{RequestInfo, query_pairs};
use crate::status::ProxyError;
use crate::telemetry::{PortForwardEvent, StreamKind, Telemetry};
use crate::upgrade::{ClientSession, Relays, annotate_session};
use crate::upstream::Upstream;
use client::Framing;
use session::{Reserved, SpdySession, Wire};

/// Forwarded connections one session carries before another is opened
/// for the same pod.
const MAX_PAIRS: usize = 256;
/// SPDY tunneled in a WebSocket.
const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// A client request kubegate can serve on a shared session.
pub struct Plan {
    key: PodKey,
    framing: Framing,
    /// The subprotocol to answer with (empty: none was offered).
    protocol: String,
    ports: Vec<u16>,
    /// The path of the pod's port-forward, without the query.
    path: PathAndQuery,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PodKey {
    cluster: String,
    namespace: String,
    pod: String,
}

impl Plan {
    /// The plan for a request, if it is a WebSocket port-forward in a
    /// subprotocol kubegate serves. Anything else (kubectl's tunneled or
    /// raw SPDY, protocols only the kubelet knows) is relayed as bytes.
    ///
    /// # Errors
    ///
    /// A port list the kubelet would refuse.
    pub fn of(
        cluster: &str,
        info: &RequestInfo<'_>,
        head: &Parts,
        path: PathAndQuery,
    ) -> Result<Option<Plan>, ProxyError> {
        let Some(resource) = info.resource() else {
            return Ok(None);
        };
        let websocket = head
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if head.method != Method::GET
            || !websocket
            || !resource.group.is_empty()
            || resource.resource != "pods"
            || resource.subresource != "portforward"
            || resource.name.is_empty()
        {
            return Ok(None);
        }
        let offered: Vec<&str> = head
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.starts_with(BEARER_SUBPROTOCOL_PREFIX))
            .collect();
        // The apiserver tunnels whenever the tunnel protocol is offered.
        if offered.contains(&TUNNEL) {
            return Ok(None);
        }
        let (chosen, framing) = match offered.iter().find_map(|p| Some((*p, Framing::of(p)?))) {
            Some(served) => served,
            None if offered.is_empty() => ("", Framing::Binary),
            None => return Ok(None),
        };
        let mut ports = Vec::new();
        for (key, value) in query_pairs(path.query()) {
            if key != "ports" {
                continue;
            }
            for port in value.split(',').map(str::trim) {
                match port.parse::<u16>() {
                    Ok(port) if port > 0 => ports.push(port),
                    _ => {
                        return Err(ProxyError::BadPortForward(format!(
                            "invalid port {port:?} in the query parameter \"ports\": give numbers from 1 to 65535"
                        )));
                    }
                }
            }
        }
        if ports.is_empty() {
            return Err(ProxyError::BadPortForward(
                "query parameter \"ports\" is required for a WebSocket port-forward, e.g. ?ports=8080".into(),
            ));
        }
        if ports.len() > 127 {
            return Err(ProxyError::BadPortForward(
                "a WebSocket port-forward carries at most 127 ports".into(),
            ));
        }
        let path = PathAndQuery::try_from(path.path()).unwrap_or_else(|_| path.clone());
        Ok(Some(Plan {
            key: PodKey {
                cluster: cluster.to_string(),
                namespace: resource.namespace.to_string(),
                pod: resource.name.to_string(),
            },
            framing,
            protocol: chosen.to_string(),
            ports,
            path,
        }))
    }
}

/// What became of a planned port-forward.
pub enum Multiplexed {
    /// Served on a shared session, or refused: the client's answer.
    Answered(Response<ProxyBody>),
    /// The apiserver takes no SPDY: relay the client's own WebSocket, with
    /// the request, its audit record and its slot given back.
    Relay(Box<(Parts, Option<Record>, OwnedSemaphorePermit)>),
}

/// What dialing a pod's session gave.
enum Dialed {
    Wire(Wire),
    /// The apiserver's refusal, about the pod or the identity.
    Refused(Response<ProxyBody>),
    /// Neither SPDY form is served.
    NoSpdy,
}

/// Whether a refused raw SPDY upgrade says nothing about the pod or the
/// identity (a 401, 403, 404, 429 or 5xx would), only that SPDY is not
/// taken: a gateway that passes WebSockets alone answers so.
fn refuses_spdy(status: StatusCode) -> bool {
    status.is_client_error()
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::TOO_MANY_REQUESTS
        )
}

/// The shared sessions, by pod.
pub struct Multiplexer {
    sessions: Mutex<HashMap<PodKey, Vec<Arc<SpdySession>>>>,
    /// One dial at a time per pod, so concurrent first clients share it.
    dialing: Mutex<HashMap<PodKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Clusters whose apiserver refused the tunnel (400 or 403, an
    /// apiserver before 1.31) and took raw SPDY: raw from then on.
    raw_only: Mutex<HashSet<String>>,
    /// Clusters whose apiserver (or a gateway before it) refused both SPDY
    /// forms and took a client's own WebSocket: their port-forwards are
    /// relayed, byte for byte, from then on.
    relay_only: Mutex<HashSet<String>>,
    idle: Duration,
    closing: CancellationToken,
    metrics: Arc<Telemetry>,
}

impl Multiplexer {
    /// No sessions yet; each will close after `idle` without connections.
    pub fn new(idle: Duration, metrics: Arc<Telemetry>) -> Arc<Self> {
        Arc::new(Multiplexer {
            sessions: Mutex::default(),
            dialing: Mutex::default(),
            raw_only: Mutex::default(),
            relay_only: Mutex::default(),
            idle,
            closing: CancellationToken::new(),
            metrics,
        })
    }

    /// A port-forward handed back for the byte relay was answered
    /// `status`: once one is accepted, the cluster's port-forwards go
    /// straight to the relay (a refusal, say for a pod with no node yet,
    /// proves nothing about SPDY).
    pub fn relayed(&self, cluster: &str, status: StatusCode, server: &str) {
        let accepted = matches!(status, StatusCode::SWITCHING_PROTOCOLS | StatusCode::OK);
        if accepted
            && let Ok(mut relay_only) = self.relay_only.lock()
            && relay_only.insert(cluster.to_string())
        {
            tracing::warn!(%server, "the apiserver takes no SPDY port-forward, tunneled or raw, but the client's own WebSocket; relaying port-forwards from now on");
        }
    }

    /// Closes every session (at shutdown).
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// A place on a live session to the pod, if one has room.
    fn reserve(&self, key: &PodKey) -> Option<Reserved> {
        let sessions = self.sessions.lock().ok()?;
        sessions.get(key)?.iter().find_map(|s| s.reserve(MAX_PAIRS))
    }

    /// A place on a session to the plan's pod: a live one, or a new one. A
    /// refusal from the apiserver (the pod is gone, the identity may not)
    /// is its response, passed through.
    async fn session(
        self: &Arc<Self>,
        upstream: &Upstream,
        plan: &Plan,
    ) -> Result<Result<Reserved, Dialed>, ProxyError> {
        if let Some(reserved) = self.reserve(&plan.key) {
            return Ok(Ok(reserved));
        }
        let gate = match self.dialing.lock() {
            Ok(mut dialing) => dialing.entry(plan.key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let turn = gate.lock().await;
        if let Some(reserved) = self.reserve(&plan.key) {
            return Ok(Ok(reserved));
        }
        let dialed = self.dial(upstream, &plan.key.cluster, &plan.path).await;
        if !matches!(dialed, Ok(Dialed::Wire(_))) {
            drop(turn);
            self.release_gate(&plan.key, gate);
        }
        let wire = match dialed? {
            Dialed::Wire(wire) => wire,
            other => return Ok(Err(other)),
        };
        let session =
            SpdySession::start(wire, self.idle, self.closing.clone(), self.metrics.clone());
        tracing::debug!(
            namespace = %plan.key.namespace,
            pod = %plan.key.pod,
            tunneled = session.tunneled(),
            "port-forward session opened"
        );
        let reserved = session.reserve(MAX_PAIRS);
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions
                .entry(plan.key.clone())
                .or_default()
                .push(session.clone());
        }
        let (this, key, ended) = (Arc::downgrade(self), plan.key.clone(), session.clone());
        tokio::spawn(async move {
            ended.ended().await;
            if let Some(this) = this.upgrade() {
                this.forget(&key, &ended);
            }
        });
        reserved.map(Ok).ok_or_else(|| ProxyError::Upstream {
            server: upstream.authority().to_string(),
            reason: format!(
                "the port-forward session ended as it opened: {}",
                session.reason()
            ),
        })
    }

    /// Forgets a pod's dial gate when no one else waits on it (a failed
    /// dial leaves no session to forget it later).
    fn release_gate(&self, key: &PodKey, gate: Arc<tokio::sync::Mutex<()>>) {
        drop(gate);
        if let Ok(mut dialing) = self.dialing.lock()
            && dialing.get(key).is_some_and(|g| Arc::strong_count(g) == 1)
            && self.sessions.lock().is_ok_and(|s| !s.contains_key(key))
        {
            dialing.remove(key);
        }
    }

    fn forget(&self, key: &PodKey, ended: &Arc<SpdySession>) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        if let Some(list) = sessions.get_mut(key) {
            list.retain(|s| !Arc::ptr_eq(s, ended));
            if list.is_empty() {
                sessions.remove(key);
                if let Ok(mut dialing) = self.dialing.lock()
                    && dialing.get(key).is_some_and(|g| Arc::strong_count(g) == 1)
                {
                    dialing.remove(key);
                }
            }
        }
    }

    /// Opens the upstream session: tunneled when the apiserver takes it,
    /// raw SPDY otherwise.
    async fn dial(
        &self,
        upstream: &Upstream,
        cluster: &str,
        path: &PathAndQuery,
    ) -> Result<Dialed, ProxyError> {
        let raw_only = self.raw_only.lock().is_ok_and(|r| r.contains(cluster));
        let mut refused_tunnel = false;
        if !raw_only {
            let mut head = upgrade_head(upstream, Method::GET);
            let headers = &mut head.headers;
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(TUNNEL),
            );
            let key = handshake::offer_websocket(headers);
            let mut response = handshake::handshake(upstream, path.clone(), head).await?;
            let accepted = response.status() == StatusCode::SWITCHING_PROTOCOLS
                && handshake::accepts_key(response.headers(), &key)
                && header_is(response.headers(), header::SEC_WEBSOCKET_PROTOCOL, TUNNEL);
            if accepted {
                let io = handshake::upstream_io(upstream, &mut response).await?;
                let socket = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
                return Ok(Dialed::Wire(Wire::Tunnel(Box::new(socket))));
            }
            tracing::debug!(server = %upstream.authority(), status = %response.status(), "the apiserver refused the SPDY tunnel; trying raw SPDY");
            // What an apiserver without the tunnel answers; anything else
            // (a missing pod, a passing failure) says nothing about it.
            refused_tunnel = matches!(
                response.status(),
                StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN
            );
        }
        let mut head = upgrade_head(upstream, Method::POST);
        head.headers
            .insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        head.headers.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static("portforward.k8s.io"),
        );
        let mut response = handshake::handshake(upstream, path.clone(), head).await?;
        if refuses_spdy(response.status()) {
            tracing::debug!(server = %upstream.authority(), status = %response.status(), "the apiserver refused SPDY port-forward, tunneled and raw; relaying the client's own WebSocket");
            return Ok(Dialed::NoSpdy);
        }
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Dialed::Refused(handshake::refusal(response)));
        }
        if refused_tunnel
            && let Ok(mut raw_only) = self.raw_only.lock()
            && raw_only.insert(cluster.to_string())
        {
            tracing::info!(server = %upstream.authority(), "the apiserver does not tunnel SPDY port-forward in a WebSocket; using raw SPDY");
        }
        let io = handshake::upstream_io(upstream, &mut response).await?;
        Ok(Dialed::Wire(Wire::Raw(io)))
    }

    /// Serves a planned port-forward: the session first (so that a refusal
    /// is the apiserver's own answer), then the client's `101`, then the
    /// client's streams in a task `relays` tracks. Where the apiserver
    /// takes no SPDY, the request comes back to be relayed.
    ///
    /// # Errors
    ///
    /// A [`ProxyError`] when the apiserver cannot be reached.
    pub async fn serve(
        self: &Arc<Self>,
        upstream: &Upstream,
        relays: &Relays,
        plan: Plan,
        mut head: Parts,
        record: Option<Record>,
        slot: OwnedSemaphorePermit,
    ) -> Result<Multiplexed, ProxyError> {
        let accepted = handshake::accept_websocket(&head, &plan.protocol)?;
        let relay_only = |this: &Self| {
            this.relay_only
                .lock()
                .is_ok_and(|r| r.contains(&plan.key.cluster))
        };
        let reserved = match relay_only(self) {
            true => Err(Dialed::NoSpdy),
            false => self.session(upstream, &plan).await?,
        };
        let reserved = match reserved {
            Ok(reserved) => reserved,
            Err(Dialed::Refused(refusal)) => return Ok(Multiplexed::Answered(refusal)),
            Err(_) => {
                if let Some(record) = &record {
                    let why = "relayed: the apiserver takes no SPDY port-forward";
                    record.annotate("kubegate.io/port-forward", why);
                }
                self.metrics.port_forward(PortForwardEvent::Relayed);
                return Ok(Multiplexed::Relay(Box::new((head, record, slot))));
            }
        };
        let client_upgrade = handshake::take_client(&mut head)?;
        let answer = handshake::client_answer(handshake::over_http2(&head), accepted);
        if let Some(record) = &record {
            record.annotate("kubegate.io/port-forward", "multiplexed");
            annotate_session(
                record,
                answer.headers(),
                head.uri.query().unwrap_or_default(),
            );
            record.started(StatusCode::SWITCHING_PROTOCOLS).await;
        }
        let busy = head.extensions.remove::<Busy>();
        let relayed = ClientSession::new(slot, busy, StreamKind::portforward, record);
        let (to_server, to_client) = relayed.counters();
        let metrics = self.metrics.clone();
        metrics.port_forward(PortForwardEvent::Client);
        relays.run(relayed, async move {
            let Ok(io) = client_upgrade.await else { return };
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
            let moved = client::Moved {
                to_server: &to_server,
                to_client: &to_client,
            };
            client::serve(socket, plan.framing, &plan.ports, reserved, moved, &metrics).await;
        });
        Ok(Multiplexed::Answered(answer))
    }
}

/// A request head for the session's upgrade, with kubegate's credentials.
fn upgrade_head(upstream: &Upstream, method: Method) -> Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.version = Version::HTTP_11;
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    head.headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("kubegate/", env!("CARGO_PKG_VERSION"))),
    );
    upstream.authorize(&mut head.headers);
    head
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, expected: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}
