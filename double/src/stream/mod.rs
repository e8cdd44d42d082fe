//! exec, attach and port-forward in the double, over every transport real
//! clients use: WebSocket with the `*.channel.k8s.io` and
//! `portforward.k8s.io` subprotocols, SPDY/3.1 tunneled in a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl's default port-forward), and raw
//! `Upgrade: SPDY/3.1`. Processes and TCP connections are real.
//!
//! - [`spdy`]: SPDY/3.1 framing and header compression.
//! - [`websocket`]: the channel protocols and their sessions.
//! - [`spdy_session`]: the sessions over SPDY.
//! - [`process`]: the process and its exit status.
//! - [`dial`]: where a forwarded port leads (in process for the ports a
//!   pod declares).

pub mod dial;
pub mod process;
pub mod spdy;
pub mod spdy_session;
pub mod websocket;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::api::{DoubleBody, status};
use super::apiserver::State;
use dial::PodPorts;
use process::ExecSpec;
use websocket::Framing;

/// Which streaming subresource was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

/// WebSocket subprotocols for exec and attach, newest first.
const EXEC_WEBSOCKET: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
];
/// WebSocket subprotocols for port-forward.
const PORT_FORWARD_WEBSOCKET: &[&str] = &[TUNNELED_SPDY, "portforward.k8s.io", "v4.channel.k8s.io"];
/// SPDY tunneled in a WebSocket.
const TUNNELED_SPDY: &str = "SPDY/3.1+portforward.k8s.io";
/// `X-Stream-Protocol-Version`s for exec and attach over SPDY.
const EXEC_SPDY: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// `X-Stream-Protocol-Version`s for port-forward over SPDY.
const PORT_FORWARD_SPDY: &[&str] = &["portforward.k8s.io"];

/// What every session shares: the open-session counter and the double's
/// stop signal.
struct Session {
    open: Arc<AtomicUsize>,
    stopping: tokio_util::sync::CancellationToken,
    /// The whole state (for its options).
    state: Arc<State>,
    /// Cancelled by [`State::cut_streams`].
    cut: tokio_util::sync::CancellationToken,
    /// Echo in process instead of running processes and dialing ports.
    fast: bool,
    /// Where terminal resizes are recorded.
    terminal: Arc<crate::apiserver::TerminalSize>,
}

impl Session {
    /// Runs `session` in its own task, counted as open until it ends or the
    /// double stops (which drops its sockets, as a crashed server would).
    fn spawn(self, session: impl std::future::Future<Output = ()> + Send + 'static) {
        self.open.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            tokio::select! {
                () = session => {}
                () = self.stopping.cancelled() => {}
                () = self.cut.cancelled() => {}
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Serves an exec, attach or port-forward request for pod `namespace/name`.
pub fn handle(
    state: &Arc<State>,
    kind: Kind,
    namespace: &str,
    name: &str,
    request: Request<Incoming>,
) -> Response<DoubleBody> {
    let Some(pod) = state.store.get(namespace, name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let query = request.uri().query().map(str::to_string);
    let attach_command: Vec<String> = pod["spec"]["containers"][0]["command"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| vec!["cat".to_string()]);
    let default_command: Vec<&str> = match kind {
        Kind::Attach => attach_command.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let spec = ExecSpec::from_query(query.as_deref(), &default_command);
    if kind == Kind::Exec && spec.command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least one command for the container",
        );
    }
    let ports = ports(query.as_deref());
    let pod = PodPorts::of(namespace, &pod);
    let session = Session {
        open: state.stats.open_streams.clone(),
        stopping: state.stopping.clone(),
        state: state.clone(),
        cut: state.streams_cut(),
        fast: state.fast_streams,
        terminal: state.stats.terminal.clone(),
    };
    if kind == Kind::PortForward && matches!(upgrade.as_str(), "websocket" | "spdy/3.1") {
        state
            .stats
            .port_forward_sessions
            .fetch_add(1, Ordering::Relaxed);
    }
    match upgrade.as_str() {
        "websocket" => websocket_handshake(request, kind, spec, (ports, pod), session),
        "spdy/3.1" if kind == Kind::PortForward && session.state.refuse_spdy => status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward is served over WebSocket only here",
        ),
        "spdy/3.1" => spdy_handshake(request, kind, spec, pod, session),
        _ => status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        ),
    }
}

fn ports(query: Option<&str>) -> Vec<u16> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "ports")
        .flat_map(|(_, list)| list.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// The values of a possibly repeated, comma-separated header.
fn offered(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn switching(headers: &[(&'static str, String)]) -> Response<DoubleBody> {
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS, "", "");
    *response.body_mut() = super::api::empty();
    let map = response.headers_mut();
    map.clear();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.insert(*name, value);
        }
    }
    response
}

fn websocket_handshake(
    mut request: Request<Incoming>,
    kind: Kind,
    spec: ExecSpec,
    (ports, pod): (Vec<u16>, PodPorts),
    session: Session,
) -> Response<DoubleBody> {
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "missing Sec-WebSocket-Key",
        );
    };
    let supported = match kind {
        Kind::PortForward if session.state.refuse_spdy_tunnel => &PORT_FORWARD_WEBSOCKET[1..],
        Kind::PortForward => PORT_FORWARD_WEBSOCKET,
        _ => EXEC_WEBSOCKET,
    };
    let offered = offered(request.headers(), "sec-websocket-protocol");
    let chosen = match offered.iter().find(|p| supported.contains(&p.as_str())) {
        Some(protocol) => protocol.clone(),
        None if offered.is_empty() => String::new(),
        None => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "none of the offered subprotocols {offered:?} is supported; use one of {supported:?}"
                ),
            );
        }
    };
    if kind == Kind::PortForward && chosen != TUNNELED_SPDY && ports.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "query parameter \"ports\" is required",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let protocol = chosen.clone();
    let fast = session.fast;
    let cut = session.cut.clone();
    let terminal = session.terminal.clone();
    session.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if protocol == TUNNELED_SPDY {
            let (accepted, closed) = spdy::serve(websocket::into_byte_stream(socket), cut);
            spdy_session::port_forward(accepted, closed, pod, fast).await;
            return;
        }
        let Some(framing) = Framing::of(&protocol) else {
            return;
        };
        if fast {
            return websocket::echo(socket, framing, kind == Kind::PortForward).await;
        }
        match kind {
            Kind::PortForward => websocket::port_forward(socket, framing, ports, pod).await,
            Kind::Exec | Kind::Attach => websocket::exec(socket, framing, spec, terminal).await,
        }
    });
    let mut headers = vec![
        ("upgrade", "websocket".to_string()),
        ("connection", "Upgrade".to_string()),
        ("sec-websocket-accept", derive_accept_key(key.as_bytes())),
    ];
    if !chosen.is_empty() {
        headers.push(("sec-websocket-protocol", chosen));
    }
    switching(&headers)
}

fn spdy_handshake(
    mut request: Request<Incoming>,
    kind: Kind,
    spec: ExecSpec,
    pod: PodPorts,
    session: Session,
) -> Response<DoubleBody> {
    let supported = if kind == Kind::PortForward {
        PORT_FORWARD_SPDY
    } else {
        EXEC_SPDY
    };
    let offered = offered(request.headers(), "x-stream-protocol-version");
    let Some(chosen) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "unable to upgrade: no common stream protocol in {offered:?}; the server supports {supported:?}"
            ),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let protocol = chosen.clone();
    let fast = session.fast;
    let cut = session.cut.clone();
    let terminal = session.terminal.clone();
    session.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (accepted, closed) = spdy::serve(TokioIo::new(upgraded), cut);
        match kind {
            Kind::PortForward => spdy_session::port_forward(accepted, closed, pod, fast).await,
            Kind::Exec | Kind::Attach => {
                spdy_session::exec(accepted, closed, &protocol, spec, terminal).await
            }
        }
    });
    switching(&[
        ("connection", "Upgrade".to_string()),
        ("upgrade", "SPDY/3.1".to_string()),
        ("x-stream-protocol-version", chosen),
    ])
}
