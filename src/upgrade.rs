//! The streaming APIs (exec, attach, port-forward): a request that asks for
//! `Connection: Upgrade` is sent to the apiserver on a fresh HTTP/1.1
//! connection; on `101` the client gets the apiserver's answer and the two
//! byte streams are spliced until either side ends.
//!
//! kubegate does not read the frames: WebSocket (`*.channel.k8s.io`,
//! `portforward.k8s.io`, `SPDY/3.1+portforward.k8s.io`) and raw `SPDY/3.1`
//! pass alike, present and future subprotocols too. The one exception is the
//! subprotocol list, from which the bearer-token entry browsers send is
//! removed: kubegate authenticates as itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{BoxError, ProxyBody};
use crate::forward::{self, ClientOrigin};
use crate::status::ProxyError;
use crate::upstream::Upstream;
use crate::upstream::connect::classify;

/// The WebSocket subprotocol prefix that carries a bearer token.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Splice buffer per direction: large, so a bulk transfer moves in few
/// system calls.
const SPLICE_BUFFER: usize = 64 * 1024;

/// Whether the request asks to switch protocols: `Connection` names
/// `upgrade` (what the apiserver checks; the `Upgrade` value is not).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The relays in flight: counted, and closed together at shutdown.
#[derive(Default)]
pub struct Relays {
    tracker: TaskTracker,
    closing: CancellationToken,
    open: Arc<AtomicUsize>,
}

impl Relays {
    /// How many upgraded connections are being relayed now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Stops accepting new relays and waits for the open ones to end.
    pub async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Closes every open relay now.
    pub fn close_all(&self) {
        self.closing.cancel();
    }
}

/// Relays an upgrade request to the apiserver.
///
/// # Errors
///
/// A [`ProxyError`] if the apiserver cannot be reached; a refused upgrade
/// is not an error but the apiserver's own response, passed through.
pub async fn relay(
    upstream: &Upstream,
    relays: &Relays,
    origin: &ClientOrigin,
    forward_client_credentials: bool,
    mut request: Request<Incoming>,
    path_and_query: PathAndQuery,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    let absolute = upstream.uri_for(path_and_query)?;
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    forward::request_headers(&mut parts.headers, origin, forward_client_credentials);
    drop_bearer_subprotocol(&mut parts.headers);
    upstream.authorize(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::UPGRADE, upgrade);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(host) = HeaderValue::from_str(upstream.authority().as_str()) {
        parts.headers.insert(header::HOST, host);
    }
    parts.version = Version::HTTP_11;
    parts.uri = absolute
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
        parts,
        Either::<Empty<bytes::Bytes>, Incoming>::Left(Empty::new()),
    );
    let mut response = sender
        .send_request(upstream_request)
        .await
        .map_err(|e| classify(&absolute, &e))?;

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refused upgrade: the apiserver's status and body, as they are.
        forward::response_headers(response.headers_mut());
        return Ok(response.map(|body| ProxyBody::Upstream(body, None)));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(ProxyBody::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = std::mem::take(response.headers_mut());

    let closing = relays.closing.clone();
    let open = relays.open.clone();
    open.fetch_add(1, Ordering::AcqRel);
    // The client's side of the upgrade only completes after this response
    // has been written, so the splice runs in its own task.
    relays.tracker.spawn(async move {
        let splice = async {
            let (client, server) = tokio::try_join!(client_upgrade, upstream_upgrade)?;
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            let moved = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut server,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await?;
            Ok::<_, BoxError>(moved)
        };
        tokio::select! {
            result = splice => match result {
                Ok((to_server, to_client)) => tracing::debug!(to_server, to_client, "relay ended"),
                Err(error) => tracing::debug!(%error, "relay ended with an error"),
            },
            () = closing.cancelled() => tracing::debug!("relay closed at shutdown"),
        }
        open.fetch_sub(1, Ordering::AcqRel);
    });
    Ok(answer)
}

/// Removes `base64url.bearer.authorization.k8s.io.*` from the offered
/// WebSocket subprotocols, keeping the others in order.
pub fn drop_bearer_subprotocol(headers: &mut HeaderMap) {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if !offered
        .iter()
        .any(|p| p.starts_with(BEARER_SUBPROTOCOL_PREFIX))
    {
        return;
    }
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    let kept: Vec<&str> = offered
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with(BEARER_SUBPROTOCOL_PREFIX))
        .collect();
    if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
}
