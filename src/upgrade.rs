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
use http::{Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Record;
use crate::body::{BoxError, ProxyBody};
use crate::connection::Busy;
use crate::forward::Outbound;
use crate::handshake;
use crate::recording::{Direction, Plan, Recording, Tap};
use crate::request::query_pairs;
use crate::status::ProxyError;
use crate::telemetry::{StreamKind, Telemetry};

/// Splice buffer per direction: large, so a bulk transfer moves in few
/// system calls.
const SPLICE_BUFFER: usize = 64 * 1024;

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

    /// Relays an upgrade request to the apiserver at `path_and_query`,
    /// audited in `record` and recorded as `plan` says.
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
        (record, plan): (Option<Record>, Option<Plan>),
        slot: OwnedSemaphorePermit,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_upgrade = handshake::take_client(&mut head)?;
        let busy = head.extensions.remove::<Busy>();
        let query = path_and_query.query().unwrap_or_default().to_string();
        let kind = stream_kind(path_and_query.path());
        let upgrade = head.headers.get(header::UPGRADE).cloned();
        outbound.request_headers(&mut head.headers);
        if let Some(upgrade) = upgrade {
            head.headers.insert(header::UPGRADE, upgrade);
        }
        // Over HTTP/2 the client sent no key: kubegate makes the WebSocket
        // handshake to the apiserver with its own.
        let over_http2 = handshake::over_http2(&head);
        let key = over_http2.then(|| handshake::offer_websocket(&mut head.headers));
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        head.version = Version::HTTP_11;
        let mut response = handshake::handshake(outbound.upstream, path_and_query, head).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(handshake::refusal(response));
        }
        if let Some(key) = &key
            && !handshake::accepts_key(response.headers(), key)
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
        let recording = plan.map(|plan| {
            let user = record.as_ref().and_then(Record::username);
            plan.begin(response.headers(), user)
        });
        let answer = handshake::client_answer(over_http2, std::mem::take(response.headers_mut()));
        let taps = recording.as_ref().and_then(Recording::tap);
        let cut = recording.as_ref().map(Recording::cut);
        let mut session = ClientSession::new(slot, busy, kind, record);
        session.recording = recording;
        let (to_server, to_client) = session.counters();
        // The client's side of the upgrade only completes after this
        // response has been written, so the splice runs in its own task.
        self.run(session, async move {
            let splice = async {
                let (client, server) = tokio::try_join!(client_upgrade, upstream_upgrade)?;
                let failed = Arc::new(AtomicBool::new(false));
                let mut client = Counted::new(TokioIo::new(client), to_server, failed.clone());
                let mut server = Counted::new(TokioIo::new(server), to_client, failed);
                if let Some(tap) = taps {
                    client.tap = Some((tap.clone(), Direction::ToServer));
                    server.tap = Some((tap, Direction::ToClient));
                }
                tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut server,
                    SPLICE_BUFFER,
                    SPLICE_BUFFER,
                )
                .await?;
                Ok::<_, BoxError>(())
            };
            // A recording that must not go on without its session ends it.
            let cut = async {
                match cut {
                    Some(cut) => cut.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = splice => if let Err(error) = ended {
                    tracing::debug!(%error, "relay ended with an error");
                },
                () = cut => tracing::debug!("session cut: its recording failed"),
            }
        });
        Ok(answer)
    }

    /// Runs an upgraded session's work in a tracked task: counted as open,
    /// cut at shutdown, and its end recorded.
    pub fn run(&self, session: ClientSession, work: impl Future<Output = ()> + Send + 'static) {
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

/// A client's upgraded session (relayed, or a port-forward client of a
/// shared SPDY session): what it is and what it moved.
pub struct ClientSession {
    /// Its `--max-connections` slot, held until the session ends.
    _slot: OwnedSemaphorePermit,
    /// Its client connection counted busy meanwhile (over HTTP/2 the
    /// session stays on that connection).
    _busy: Option<Busy>,
    kind: StreamKind,
    record: Option<Record>,
    /// Its recording, when `--record-sessions-dir` applies to it.
    recording: Option<Recording>,
    began: std::time::Instant,
    to_server: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
}

impl ClientSession {
    /// A session that holds `slot` and its connection `busy` until it
    /// ends, recorded in `record`.
    pub fn new(
        slot: OwnedSemaphorePermit,
        busy: Option<Busy>,
        kind: StreamKind,
        record: Option<Record>,
    ) -> Self {
        ClientSession {
            _slot: slot,
            _busy: busy,
            kind,
            record,
            recording: None,
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
        let recorded = match self.recording {
            Some(recording) => Some(recording.finish(metrics).await),
            None => None,
        };
        if let Some(record) = self.record {
            if let Some(summary) = &recorded {
                summary.annotate(&record);
            }
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
    /// Where a recorded session's bytes are copied.
    tap: Option<(Tap, Direction)>,
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
            tap: None,
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
        let read = &buf.filled()[before..];
        self.read.fetch_add(read.len() as u64, Ordering::Relaxed);
        if let Some((tap, direction)) = &self.tap {
            tap.copy(*direction, read);
        }
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
