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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Record;
use crate::body::{BoxError, ProxyBody};
use crate::forward::{self, Outbound};
use crate::request::query_pairs;
use crate::status::ProxyError;
use crate::telemetry::{StreamKind, Telemetry};
use crate::upstream::Upstream;
use crate::upstream::connect::classify;

/// How long the apiserver may take to answer an upgrade (it dials the
/// kubelet first).
const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Splice buffer per direction: large, so a bulk transfer moves in few
/// system calls.
const SPLICE_BUFFER: usize = 64 * 1024;

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

/// A fresh `Sec-WebSocket-Key`.
pub fn websocket_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether a `101` answers the WebSocket key kubegate sent.
pub fn accepts_key(response: &HeaderMap, key: &str) -> bool {
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    response
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// The client's answer to an upgrade the apiserver accepted: its `101` as
/// it is, or for a WebSocket over HTTP/2 a `200` with the subprotocol.
fn client_answer(over_http2: bool, upstream: &mut HeaderMap) -> Response<ProxyBody> {
    let mut answer = Response::new(ProxyBody::empty());
    if over_http2 {
        if let Some(protocol) = upstream.remove(header::SEC_WEBSOCKET_PROTOCOL) {
            answer
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
    } else {
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = std::mem::take(upstream);
    }
    answer
}

/// The relays in flight: counted, and closed together at shutdown.
pub struct Relays {
    tracker: TaskTracker,
    closing: CancellationToken,
    open: Arc<AtomicUsize>,
    metrics: Arc<Telemetry>,
}

impl Relays {
    /// No relays yet; sessions will be counted in `metrics`.
    pub fn new(metrics: Arc<Telemetry>) -> Self {
        Relays {
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            open: Arc::default(),
            metrics,
        }
    }

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

    /// Relays an upgrade request to the apiserver at `path_and_query`.
    ///
    /// # Errors
    ///
    /// A [`ProxyError`] if the apiserver cannot be reached; a refused
    /// upgrade is not an error but the apiserver's own response, passed
    /// through.
    pub async fn relay(
        &self,
        outbound: &Outbound<'_>,
        mut head: Parts,
        path_and_query: PathAndQuery,
        record: Option<Record>,
        slot: OwnedSemaphorePermit,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_upgrade = head
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(ProxyError::NotUpgradable)?;
        let query = path_and_query.query().unwrap_or_default().to_string();
        let kind = stream_kind(path_and_query.path());
        let upgrade = head.headers.get(header::UPGRADE).cloned();
        outbound.request_headers(&mut head.headers);
        if let Some(upgrade) = upgrade {
            head.headers.insert(header::UPGRADE, upgrade);
        }
        let over_http2 = head.extensions.get::<OverHttp2>().is_some();
        let key = over_http2.then(websocket_key);
        if let Some(key) = &key
            && let Ok(value) = HeaderValue::from_str(key)
        {
            head.headers.insert(header::SEC_WEBSOCKET_KEY, value);
            head.headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        head.version = Version::HTTP_11;
        let mut response = handshake(outbound.upstream, path_and_query, head).await?;

        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A refused upgrade: the apiserver's status and body, as they are.
            forward::response_headers(response.headers_mut());
            return Ok(response.map(|body| ProxyBody::Upstream(body, None)));
        }
        if let Some(key) = &key
            && !accepts_key(response.headers(), key)
        {
            return Err(ProxyError::Upstream {
                server: outbound.upstream.authority().to_string(),
                reason: "the apiserver's WebSocket handshake does not answer kubegate's key".into(),
            });
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        if let Some(record) = &record {
            annotate_session(record, response.headers(), &query);
            record.started(StatusCode::SWITCHING_PROTOCOLS).await;
        }
        let answer = client_answer(over_http2, response.headers_mut());
        let session = Session::new(slot, kind, record);
        let (to_server, to_client) = session.counters();
        // The client's side of the upgrade only completes after this
        // response has been written, so the splice runs in its own task.
        self.run(session, async move {
            let splice = async {
                let (client, server) = tokio::try_join!(client_upgrade, upstream_upgrade)?;
                let failed = Arc::new(AtomicBool::new(false));
                let mut client = Counted::new(TokioIo::new(client), to_server, failed.clone());
                let mut server = Counted::new(TokioIo::new(server), to_client, failed);
                tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut server,
                    SPLICE_BUFFER,
                    SPLICE_BUFFER,
                )
                .await?;
                Ok::<_, BoxError>(())
            };
            if let Err(error) = splice.await {
                tracing::debug!(%error, "relay ended with an error");
            }
        });
        Ok(answer)
    }

    /// Runs an upgraded session's work in a tracked task: counted as open,
    /// cut at shutdown, and its end recorded.
    pub fn run(&self, session: Session, work: impl Future<Output = ()> + Send + 'static) {
        self.metrics.stream(session.kind, 1);
        self.open.fetch_add(1, Ordering::AcqRel);
        let (closing, open, metrics) = (
            self.closing.clone(),
            self.open.clone(),
            self.metrics.clone(),
        );
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = closing.cancelled() => tracing::debug!("upgraded session closed at shutdown"),
            }
            session.end(&metrics).await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
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
    send_upgrade(upstream, &absolute, head).await
}

async fn send_upgrade(
    upstream: &Upstream,
    absolute: &http::Uri,
    head: Parts,
) -> Result<Response<Incoming>, ProxyError> {
    let io = upstream.upgrade_connector().connect(absolute).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| classify(absolute, &e))?;
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
        .map_err(|e| classify(absolute, &e))?;
    upstream.answered();
    Ok(response)
}

/// One upgraded session: what it is and what it moved.
pub struct Session {
    /// Its `--max-connections` slot, held until the session ends.
    _slot: OwnedSemaphorePermit,
    kind: StreamKind,
    record: Option<Record>,
    began: std::time::Instant,
    to_server: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
}

impl Session {
    /// A session that holds `slot` until it ends, recorded in `record`.
    pub fn new(slot: OwnedSemaphorePermit, kind: StreamKind, record: Option<Record>) -> Self {
        Session {
            _slot: slot,
            kind,
            record,
            began: std::time::Instant::now(),
            to_server: Arc::default(),
            to_client: Arc::default(),
        }
    }

    /// Its byte counters: to the apiserver, to the client.
    pub fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.to_server.clone(), self.to_client.clone())
    }

    /// Counts the session's bytes and writes its `ResponseComplete`.
    async fn end(self, metrics: &Telemetry) {
        let to_server = self.to_server.load(Ordering::Relaxed);
        let to_client = self.to_client.load(Ordering::Relaxed);
        metrics.stream(self.kind, -1);
        metrics.relayed(to_server, to_client);
        if let Some(record) = self.record {
            let duration = format!("{:.3}s", self.began.elapsed().as_secs_f64());
            record.annotate("kubegate.io/duration", duration);
            record.annotate("kubegate.io/bytes-to-server", to_server.to_string());
            record.annotate("kubegate.io/bytes-to-client", to_client.to_string());
            record.complete(StatusCode::SWITCHING_PROTOCOLS).await;
        }
    }
}

/// What kind of session a path opens, for the open-streams metric.
fn stream_kind(path: &str) -> StreamKind {
    match path.rsplit('/').next() {
        Some("exec") => StreamKind::exec,
        Some("attach") => StreamKind::attach,
        Some("portforward") => StreamKind::portforward,
        _ => StreamKind::other,
    }
}

/// One side of a splice: counts the bytes read from it (what it sent).
///
/// A side that fails (a reset, a TLS stream cut without close_notify, a
/// write refused) ends the session, but only after what was already read
/// has been delivered where it still can be: a failure is never an error
/// to the splice (which would drop its buffers) but ends the session; from
/// then on reads on both sides end (end-of-stream), writes to the side
/// that failed are discarded, and the other side still gets what was read.
struct Counted<T> {
    io: T,
    read: Arc<AtomicU64>,
    /// This side failed.
    broken: bool,
    /// The session is over: shared by both sides of the splice.
    ended: Arc<AtomicBool>,
}

impl<T> Counted<T> {
    fn new(io: T, read: Arc<AtomicU64>, ended: Arc<AtomicBool>) -> Self {
        Counted {
            io,
            read,
            broken: false,
            ended,
        }
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// A failure ends the session instead of failing the splice.
    fn settle<V>(
        &mut self,
        cx: &Context<'_>,
        polled: Poll<std::io::Result<V>>,
        moot: V,
    ) -> Poll<std::io::Result<V>> {
        match polled {
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "relayed stream failed");
                self.broken = true;
                if !self.ended.swap(true, Ordering::AcqRel) {
                    // The other direction, polled by this same task, may
                    // be waiting on its reader: poll again, so it sees
                    // the end.
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(moot))
            }
            polled => polled,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ended() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        self.settle(cx, polled, ())
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.broken {
            return Poll::Ready(Ok(data.len()));
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.settle(cx, polled, data.len())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.settle(cx, polled, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.settle(cx, polled, ())
    }
}

/// Records what the session is: the negotiated subprotocol, and for exec
/// and attach the command and container from the query.
pub fn annotate_session(record: &Record, answer: &HeaderMap, query: &str) {
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
    for (key, value) in query_pairs(Some(query)) {
        let value = value.into_owned();
        match key.as_ref() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that sends `data` and then fails, as a TLS stream cut
    /// without close_notify does.
    struct SendsThenFails(Option<&'static [u8]>);

    impl AsyncRead for SendsThenFails {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(match self.0.take() {
                Some(data) => {
                    buf.put_slice(data);
                    Ok(())
                }
                None => Err(std::io::ErrorKind::ConnectionReset.into()),
            })
        }
    }

    impl AsyncWrite for SendsThenFails {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn what_a_failing_side_sent_before_failing_is_delivered_then_the_session_ends() {
        let (client, mut far_end) = tokio::io::duplex(1024);
        let counted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let mut server = Counted::new(
            SendsThenFails(Some(b"last words")),
            counted.clone(),
            failed.clone(),
        );
        let mut client = Counted::new(client, Arc::default(), failed);
        let splice =
            tokio::spawn(
                async move { tokio::io::copy_bidirectional(&mut client, &mut server).await },
            );
        let mut received = vec![0u8; 10];
        far_end.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
        // Then end-of-stream, and the session ends though the client has
        // not closed its side.
        assert_eq!(far_end.read(&mut [0u8; 1]).await.unwrap(), 0);
        splice.await.unwrap().unwrap();
        assert_eq!(counted.load(Ordering::Relaxed), 10);
        far_end.shutdown().await.unwrap();
    }
}
