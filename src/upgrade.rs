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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Metrics, StreamKind};
use crate::audit::Record;
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
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    upstream: &Upstream,
    relays: &Relays,
    metrics: &Arc<Metrics>,
    origin: &ClientOrigin,
    forward_client_credentials: bool,
    mut request: Request<Incoming>,
    path_and_query: PathAndQuery,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    let record = parts.extensions.remove::<Record>();
    let query = parts.uri.query().unwrap_or_default().to_string();
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
    upstream.answered();

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refused upgrade: the apiserver's status and body, as they are.
        forward::response_headers(response.headers_mut());
        return Ok(response.map(|body| ProxyBody::Upstream(body, None)));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(ProxyBody::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = std::mem::take(response.headers_mut());
    if let Some(record) = &record {
        annotate_session(record, answer.headers(), &query);
        record.started(StatusCode::SWITCHING_PROTOCOLS).await;
    }
    let began = std::time::Instant::now();

    let kind = stream_kind(&absolute);
    metrics.stream(kind, 1);
    let metrics = metrics.clone();
    let to_server = Arc::new(AtomicU64::new(0));
    let to_client = Arc::new(AtomicU64::new(0));
    let closing = relays.closing.clone();
    let open = relays.open.clone();
    open.fetch_add(1, Ordering::AcqRel);
    // The client's side of the upgrade only completes after this response
    // has been written, so the splice runs in its own task.
    relays.tracker.spawn(async move {
        let splice = async {
            let (client, server) = tokio::try_join!(client_upgrade, upstream_upgrade)?;
            let mut client = Counted::new(TokioIo::new(client), to_server.clone());
            let mut server = Counted::new(TokioIo::new(server), to_client.clone());
            tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut server,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await?;
            Ok::<_, BoxError>(())
        };
        tokio::select! {
            result = splice => {
                if let Err(error) = result {
                    tracing::debug!(%error, "relay ended with an error");
                }
            }
            () = closing.cancelled() => tracing::debug!("relay closed at shutdown"),
        }
        metrics.stream(kind, -1);
        metrics.relayed(
            to_server.load(Ordering::Relaxed),
            to_client.load(Ordering::Relaxed),
        );
        if let Some(record) = record {
            record.annotate(
                "kubegate.io/duration",
                format!("{:.3}s", began.elapsed().as_secs_f64()),
            );
            record.annotate(
                "kubegate.io/bytes-to-server",
                to_server.load(Ordering::Relaxed).to_string(),
            );
            record.annotate(
                "kubegate.io/bytes-to-client",
                to_client.load(Ordering::Relaxed).to_string(),
            );
            record.complete(StatusCode::SWITCHING_PROTOCOLS).await;
        }
        open.fetch_sub(1, Ordering::AcqRel);
    });
    Ok(answer)
}

/// What kind of session a path opens, for the open-streams metric.
fn stream_kind(uri: &http::Uri) -> StreamKind {
    match uri.path().rsplit('/').next() {
        Some("exec") => StreamKind::exec,
        Some("attach") => StreamKind::attach,
        Some("portforward") => StreamKind::portforward,
        _ => StreamKind::other,
    }
}

/// Counts the bytes read from one side of a splice: what it sent.
struct Counted<T> {
    io: T,
    read: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(io: T, read: Arc<AtomicU64>) -> Self {
        Counted { io, read }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Records what the session is: the negotiated subprotocol, and for exec
/// and attach the command and container from the query.
fn annotate_session(record: &Record, answer: &HeaderMap, query: &str) {
    record.allowed();
    let protocol = answer
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .or_else(|| answer.get("x-stream-protocol-version"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let upgrade = answer
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    record.annotate(
        "kubegate.io/subprotocol",
        format!("{upgrade} {protocol}").trim().to_string(),
    );
    let mut command = Vec::new();
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let value = crate::query::decode(value);
        match key {
            "command" => command.push(value),
            "container" => record.annotate("kubegate.io/container", value),
            "ports" => record.annotate("kubegate.io/ports", value),
            _ => {}
        }
    }
    if !command.is_empty() {
        record.annotate(
            "kubegate.io/command",
            serde_json::to_string(&command).unwrap_or_default(),
        );
    }
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
