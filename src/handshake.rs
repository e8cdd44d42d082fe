//! The upgrade handshake, both ways, for the byte relay ([`crate::upgrade`])
//! and the port-forward multiplexer ([`crate::portforward`]) alike:
//!
//! - the client's: an RFC 8441 extended `CONNECT` read as the upgrade it
//!   stands for, its connection taken from hyper, and its answer (`101`,
//!   or `200` over HTTP/2);
//! - the apiserver's: the upgrade request on a fresh HTTP/1.1 connection,
//!   with a WebSocket key of kubegate's own wherever kubegate makes the
//!   WebSocket, the answer checked, and a refusal passed back as it is.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::body::ProxyBody;
use crate::forward;
use crate::status::ProxyError;
use crate::upstream::Upstream;
use crate::upstream::connect::classify;

/// How long the apiserver may take to answer an upgrade (it dials the
/// kubelet first).
const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the request asks to switch protocols: `Connection` names
/// `upgrade` (what the apiserver checks) and there is an `Upgrade` header
/// to switch to (without one, HTTP/1.1 cannot switch, and the request is an
/// ordinary one).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Marks a WebSocket that arrived over HTTP/2 as an extended `CONNECT`
/// (RFC 8441): it is answered `200`, without the HTTP/1.1 handshake
/// headers, and kubegate makes the handshake to the apiserver itself.
#[derive(Debug, Clone, Copy)]
pub struct OverHttp2;

/// Reads an RFC 8441 extended `CONNECT` with `:protocol: websocket` as
/// the HTTP/1.1 upgrade it stands for (`GET` with `Upgrade: websocket`),
/// so that every check sees the request it is. `true` if it was one.
pub fn adopt_extended_connect(head: &mut Parts) -> bool {
    let websocket = head
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if head.method != http::Method::CONNECT || !websocket {
        return false;
    }
    head.method = http::Method::GET;
    head.headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    head.extensions.insert(OverHttp2);
    true
}

/// Whether the client's WebSocket came over HTTP/2.
pub fn over_http2(head: &Parts) -> bool {
    head.extensions.get::<OverHttp2>().is_some()
}

/// The client's side of the upgrade, taken from hyper: it completes once
/// the answer has been written.
///
/// # Errors
///
/// [`ProxyError::NotUpgradable`] when the connection cannot switch.
pub fn take_client(head: &mut Parts) -> Result<OnUpgrade, ProxyError> {
    head.extensions
        .remove::<OnUpgrade>()
        .ok_or(ProxyError::NotUpgradable)
}

/// Asks for a WebSocket with a fresh key of kubegate's own; returns the
/// key, for [`accepts_key`].
pub fn offer_websocket(headers: &mut HeaderMap) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, value);
    }
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    key
}

/// Whether a `101` answers the WebSocket key kubegate sent.
pub fn accepts_key(response: &HeaderMap, key: &str) -> bool {
    let expected = derive_accept_key(key.as_bytes());
    response
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// The headers that accept a client's WebSocket that kubegate answers
/// itself, in `protocol` (none when empty).
///
/// # Errors
///
/// [`ProxyError::BadPortForward`] when an HTTP/1.1 WebSocket has no key.
pub fn accept_websocket(head: &Parts, protocol: &str) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::new();
    if !over_http2(head) {
        let Some(key) = head.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(ProxyError::BadPortForward(
                "a WebSocket upgrade needs a Sec-WebSocket-Key header".into(),
            ));
        };
        let accept = derive_accept_key(key.as_bytes());
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    if let Ok(protocol) = HeaderValue::from_str(protocol)
        && !protocol.is_empty()
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(headers)
}

/// The client's answer to an accepted upgrade: `101` with `headers`, or
/// for a WebSocket over HTTP/2 a `200` with the subprotocol alone.
pub fn client_answer(over_http2: bool, mut headers: HeaderMap) -> Response<ProxyBody> {
    let mut answer = Response::new(ProxyBody::empty());
    if over_http2 {
        if let Some(protocol) = headers.remove(header::SEC_WEBSOCKET_PROTOCOL) {
            answer
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
    } else {
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = headers;
    }
    answer
}

/// A refused upgrade: the apiserver's status and body, as they are.
pub fn refusal(mut response: Response<Incoming>) -> Response<ProxyBody> {
    forward::response_headers(response.headers_mut());
    response.map(|body| ProxyBody::Upstream(body, None))
}

/// The apiserver's side of an upgrade it accepted.
///
/// # Errors
///
/// A [`ProxyError::Upstream`] when the connection cannot switch.
pub async fn upstream_io(
    upstream: &Upstream,
    response: &mut Response<Incoming>,
) -> Result<TokioIo<Upgraded>, ProxyError> {
    match hyper::upgrade::on(response).await {
        Ok(io) => Ok(TokioIo::new(io)),
        Err(error) => Err(ProxyError::Upstream {
            server: upstream.authority().to_string(),
            reason: format!("the upgrade failed: {error}"),
        }),
    }
}

/// Sends an upgrade request to the apiserver on a fresh HTTP/1.1
/// connection and returns its answer, `101` or not.
///
/// # Errors
///
/// A [`ProxyError`] if the apiserver cannot be reached or does not answer
/// within a minute.
pub async fn handshake(
    upstream: &Upstream,
    path_and_query: PathAndQuery,
    mut head: Parts,
) -> Result<Response<Incoming>, ProxyError> {
    let absolute = upstream.uri_for(path_and_query)?;
    if let Ok(host) = HeaderValue::from_str(upstream.authority().as_str()) {
        head.headers.insert(header::HOST, host);
    }
    head.uri = absolute
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
        .into();
    let io = upstream.upgrade_connector().connect(&absolute).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| classify(&absolute, &e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "apiserver upgrade connection ended");
        }
    });
    let upstream_request = Request::from_parts(
        head,
        Either::<Empty<bytes::Bytes>, Incoming>::Left(Empty::new()),
    );
    // The kubelet answers within seconds; a server that never does
    // must not hold the connection and the client forever.
    let answered = tokio::time::timeout(HANDSHAKE_LIMIT, sender.send_request(upstream_request));
    let response = answered
        .await
        .map_err(|_| ProxyError::Upstream {
            server: upstream.authority().to_string(),
            reason: format!(
                "no answer to the upgrade within {}s",
                HANDSHAKE_LIMIT.as_secs()
            ),
        })?
        .map_err(|e| classify(&absolute, &e))?;
    upstream.answered();
    Ok(response)
}
