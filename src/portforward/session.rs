//! One upstream port-forward session: a SPDY/3.1 client connection to a
//! pod's kubelet (through the apiserver) on which each forwarded
//! connection is a pair of streams, `error` and `data`, as kubectl opens
//! them.
//!
//! Two tasks own the connection: the reader hands each stream's frames to
//! whoever opened it; the writer alone assigns stream ids and compresses
//! headers, since both must follow the order frames go out.
//!
//! The kubelet's SPDY (spdystream) has no flow control, so the only brake
//! on it is TCP under the whole session. Each client's streams share a
//! byte budget ([`BUDGET`]): while a client has that much unread, the
//! reader waits for it, which holds up the session; after [`STALL`] it
//! stops waiting, resets that stream and tells its client why, so a client
//! that stops reading costs the others at most one pause.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use kubegate_spdy::{Deflater, Frame, Inflater, reset};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{PortForwardEvent, Telemetry};

/// Unread bytes a client may leave with kubegate before the session waits
/// for it.
pub const BUDGET: usize = 1024 * 1024;
/// How long the session waits for a client that has a full budget unread
/// before resetting its stream.
pub const STALL: Duration = Duration::from_secs(5);
/// Keep-alive ping period, and how long without an answer means dead.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_DEAD: Duration = Duration::from_secs(30);
/// Kubelet errors in a row after which a session takes no new
/// connections.
const FAILURES_TO_RETIRE: usize = 3;
/// Frames gathered into one write.
const BATCH: usize = 256 * 1024;
/// How long a connection whose client has gone may wait for the kubelet
/// to close it before it is reset.
const LINGER: Duration = Duration::from_secs(10);

/// The connection a session runs on: raw `SPDY/3.1`, or SPDY tunneled in
/// binary WebSocket messages (`SPDY/3.1+portforward.k8s.io`).
pub enum Wire {
    /// After `Upgrade: SPDY/3.1`.
    Raw(TokioIo<Upgraded>),
    /// After a WebSocket handshake for `SPDY/3.1+portforward.k8s.io`.
    Tunnel(Box<WebSocketStream<TokioIo<Upgraded>>>),
}

enum WireReader {
    Raw(ReadHalf<TokioIo<Upgraded>>),
    Tunnel(SplitStream<WebSocketStream<TokioIo<Upgraded>>>),
}

enum WireWriter {
    Raw(WriteHalf<TokioIo<Upgraded>>),
    Tunnel(SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>),
}

impl Wire {
    fn split(self) -> (WireReader, WireWriter) {
        match self {
            Wire::Raw(io) => {
                let (reader, writer) = tokio::io::split(io);
                (WireReader::Raw(reader), WireWriter::Raw(writer))
            }
            Wire::Tunnel(socket) => {
                let (sink, stream) = (*socket).split();
                (WireReader::Tunnel(stream), WireWriter::Tunnel(sink))
            }
        }
    }
}

impl WireReader {
    /// Appends what arrives to `buffer`; `false` at the end.
    async fn fill(&mut self, buffer: &mut BytesMut) -> std::io::Result<bool> {
        match self {
            WireReader::Raw(reader) => Ok(reader.read_buf(buffer).await? > 0),
            WireReader::Tunnel(stream) => loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        buffer.extend_from_slice(&data);
                        return Ok(true);
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(std::io::Error::other(error)),
                }
            },
        }
    }
}

impl WireWriter {
    async fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        match self {
            WireWriter::Raw(writer) => {
                writer.write_all(&bytes).await?;
                writer.flush().await
            }
            WireWriter::Tunnel(sink) => {
                // The tunnel is a byte stream, message boundaries mean
                // nothing; WebSocket peers limit a frame's size (16 MiB
                // by default), so a large write goes as several.
                let mut bytes = bytes;
                while !bytes.is_empty() {
                    let message = bytes.split_to(bytes.len().min(BATCH));
                    sink.feed(Message::Binary(message))
                        .await
                        .map_err(std::io::Error::other)?;
                }
                sink.flush().await.map_err(std::io::Error::other)
            }
        }
    }

    async fn close(&mut self) {
        let _ = match self {
            WireWriter::Raw(writer) => writer.shutdown().await,
            WireWriter::Tunnel(sink) => sink.close().await.map_err(std::io::Error::other),
        };
    }
}

/// What a stream's owner hears.
pub enum Event {
    /// The kubelet refused the stream.
    Refused(u8),
    /// Bytes; the permit returns their share of the budget when dropped.
    Data(u8, Bytes, OwnedSemaphorePermit),
    /// The kubelet closed its side.
    End(u8),
    /// The stream is gone, and why.
    Reset(u8, String),
}

/// Where a stream's frames go: its owner's events, tagged with `channel`,
/// and the owner's budget.
#[derive(Clone)]
pub struct Route {
    /// The owner's events.
    pub events: mpsc::UnboundedSender<Event>,
    /// The owner's channel number for this stream.
    pub channel: u8,
    /// The owner's budget.
    pub budget: Arc<Semaphore>,
}

/// The two streams of a forwarded connection.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// The `error` stream.
    pub error: u32,
    /// The `data` stream.
    pub data: u32,
}

enum Control {
    Open {
        port: u16,
        error: Route,
        data: Route,
        opened: oneshot::Sender<Pair>,
    },
    Reset(u32),
    Pong(u32),
    Ping,
    Close,
}

/// A place held on a session until its client has opened its
/// connections.
pub struct Reserved(Arc<SpdySession>);

impl Reserved {
    /// The session.
    pub fn session(&self) -> &Arc<SpdySession> {
        &self.0
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.closed_pair();
    }
}

/// A live upstream session.
pub struct SpdySession {
    control: mpsc::UnboundedSender<Control>,
    /// Stream data and half-closes, in the order they must go out.
    data: mpsc::Sender<(u32, Bytes, bool)>,
    routes: Mutex<HashMap<u32, Route>>,
    /// Connections whose client has gone, oldest first, each with the
    /// time (in `millis`) after which it is reset. A list swept by the
    /// keep-alive tick, not a timer each: a busy port-forward closes
    /// thousands of connections a minute.
    lingering: Mutex<VecDeque<(u64, Pair)>>,
    /// Forwarded connections open on it.
    pairs: AtomicUsize,
    /// The kubelet said GOAWAY, or the pod looks gone: no new pairs.
    going_away: AtomicBool,
    /// Connections in a row the kubelet reported errors on.
    failures: AtomicUsize,
    /// Milliseconds since `began` at the last frame from the apiserver
    /// (an answered ping or anything else), and when the last pair closed.
    heard_at: AtomicU64,
    idle_at: AtomicU64,
    began: Instant,
    ended: CancellationToken,
    /// Set once, by whatever ended it first.
    finished: AtomicBool,
    /// Why it ended, for its clients.
    reason: Mutex<String>,
    /// Which kind of wire it is, for logs and tests.
    tunneled: bool,
}

impl SpdySession {
    /// Starts a session on `wire`; it closes itself after `idle` with no
    /// forwarded connection, or when `closing` is cancelled.
    pub fn start(
        wire: Wire,
        idle: Duration,
        closing: CancellationToken,
        metrics: Arc<Telemetry>,
    ) -> Arc<SpdySession> {
        let tunneled = matches!(wire, Wire::Tunnel(_));
        let (reader, writer) = wire.split();
        let (control, control_rx) = mpsc::unbounded_channel();
        let (data, data_rx) = mpsc::channel(64);
        let session = Arc::new(SpdySession {
            control,
            data,
            routes: Mutex::new(HashMap::new()),
            lingering: Mutex::new(VecDeque::new()),
            pairs: AtomicUsize::new(0),
            going_away: AtomicBool::new(false),
            failures: AtomicUsize::new(0),
            heard_at: AtomicU64::new(0),
            idle_at: AtomicU64::new(0),
            began: Instant::now(),
            ended: closing.child_token(),
            finished: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            tunneled,
        });
        metrics.port_forward(PortForwardEvent::SessionOpened);
        let reading = session.clone();
        tokio::spawn(async move {
            let reason = match reading.read(reader).await {
                Ok(()) => "the apiserver closed the port-forward session".to_string(),
                Err(error) => format!("the port-forward session to the apiserver failed: {error}"),
            };
            reading.end(reason);
        });
        let writing = session.clone();
        tokio::spawn(async move {
            if let Err(error) = writing.write(writer, control_rx, data_rx).await {
                writing.end(format!(
                    "the port-forward session to the apiserver failed: {error}"
                ));
            }
        });
        let keeping = session.clone();
        tokio::spawn(async move {
            keeping.keep_alive(idle).await;
            metrics.port_forward(PortForwardEvent::SessionClosed);
        });
        session
    }

    /// Holds a place on the session for a client about to open its
    /// connections (so an idle close cannot slip in between), if it can
    /// take another.
    pub fn reserve(self: &Arc<Self>, max_pairs: usize) -> Option<Reserved> {
        if self.ended.is_cancelled() || self.going_away.load(Ordering::Acquire) {
            return None;
        }
        self.pairs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pairs| {
                (pairs < max_pairs).then_some(pairs + 1)
            })
            .ok()?;
        Some(Reserved(self.clone()))
    }

    /// The kubelet reported an error on a connection. A closed port does
    /// that once; a pod that is gone (recreated under the same name, the
    /// session bound to the old one) does it every time: after
    /// [`FAILURES_TO_RETIRE`] in a row with no data between, the session
    /// takes no new connections and the next client gets a fresh one.
    pub fn failed_connection(&self) {
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= FAILURES_TO_RETIRE {
            self.going_away.store(true, Ordering::Release);
        }
    }

    /// A pod sent data: it is there.
    pub fn pod_answered(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Whether it is SPDY tunneled in a WebSocket.
    pub fn tunneled(&self) -> bool {
        self.tunneled
    }

    /// Resolves when the session has ended.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    fn millis(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    /// Opens the error and data streams of a connection to `port`; their
    /// frames go to the routes. `None` if the session has ended.
    pub async fn open(&self, port: u16, error: Route, data: Route) -> Option<Pair> {
        self.pairs.fetch_add(1, Ordering::AcqRel);
        let (opened, pair) = oneshot::channel();
        let sent = self.control.send(Control::Open {
            port,
            error,
            data,
            opened,
        });
        let pair = match sent {
            Ok(()) => pair.await.ok(),
            Err(_) => None,
        };
        if pair.is_none() {
            self.closed_pair();
        }
        pair
    }

    /// A forwarded connection is over.
    pub fn closed_pair(&self) {
        if self.pairs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_at.store(self.millis(), Ordering::Release);
        }
    }

    /// Sends bytes on a stream; waits while the kubelet is slow to read.
    /// `false` if the session has ended.
    pub async fn send(&self, stream: u32, data: Bytes) -> bool {
        self.data.send((stream, data, false)).await.is_ok()
    }

    /// Half-closes a stream from kubegate's side, after the data sent on
    /// it before.
    pub async fn finish(&self, stream: u32) {
        let _ = self.data.send((stream, Bytes::new(), true)).await;
    }

    /// Resets a stream, unless the kubelet has already closed it.
    pub fn reset(&self, stream: u32) {
        let _ = self.control.send(Control::Reset(stream));
    }

    /// A connection whose client has gone: what the kubelet has not
    /// closed of it within [`LINGER`] is reset.
    pub fn abandon(&self, pair: Pair) {
        let deadline = self.millis() + LINGER.as_millis() as u64;
        if let Ok(mut lingering) = self.lingering.lock() {
            lingering.push_back((deadline, pair));
        }
    }

    /// Resets the streams of abandoned connections whose time is up and
    /// that the kubelet has not closed.
    fn reset_abandoned(&self, now: u64) {
        let Ok(mut lingering) = self.lingering.lock() else {
            return;
        };
        while let Some(&(deadline, pair)) = lingering.front()
            && deadline <= now
        {
            lingering.pop_front();
            for stream in [pair.error, pair.data] {
                if self.route(stream).is_some() {
                    self.reset(stream);
                }
            }
        }
    }

    /// Why the session ended.
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .map(|reason| reason.clone())
            .unwrap_or_default()
    }

    fn end(&self, reason: String) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut slot) = self.reason.lock() {
            slot.clone_from(&reason);
        }
        tracing::debug!(%reason, "port-forward session ended");
        self.ended.cancel();
        let routes = match self.routes.lock() {
            Ok(mut routes) => std::mem::take(&mut *routes),
            Err(_) => HashMap::new(),
        };
        for route in routes.into_values() {
            let _ = route
                .events
                .send(Event::Reset(route.channel, reason.clone()));
        }
    }

    fn route(&self, stream: u32) -> Option<Route> {
        self.routes.lock().ok()?.get(&stream).cloned()
    }

    fn take_route(&self, stream: u32) -> Option<Route> {
        self.routes.lock().ok()?.remove(&stream)
    }

    async fn read(&self, mut reader: WireReader) -> std::io::Result<()> {
        let mut inflater = Inflater::default();
        let mut buffer = BytesMut::with_capacity(READ_ROOM);
        loop {
            let frame = tokio::select! {
                frame = next_frame(&mut reader, &mut buffer) => frame?,
                () = self.ended.cancelled() => return Ok(()),
            };
            let Some(frame) = frame else { return Ok(()) };
            self.heard_at.store(self.millis(), Ordering::Release);
            match frame {
                Frame::Data { stream, fin, data } => self.deliver(stream, fin, data).await,
                Frame::SynReply { stream, fin, block } => {
                    inflater.headers(&block)?;
                    if fin && let Some(route) = self.take_route(stream) {
                        let _ = route.events.send(Event::Refused(route.channel));
                    }
                }
                Frame::Headers { block, .. } => {
                    inflater.headers(&block)?;
                }
                Frame::SynStream { stream, block, .. } => {
                    // In Kubernetes only the client opens streams.
                    inflater.headers(&block)?;
                    let _ = self.control.send(Control::Reset(stream));
                }
                Frame::RstStream { stream, status } => {
                    if let Some(route) = self.take_route(stream) {
                        let reason = format!("the kubelet reset the stream (SPDY status {status})");
                        let _ = route.events.send(Event::Reset(route.channel, reason));
                    }
                }
                // Even ids are the server's, to be echoed; odd ones answer ours.
                Frame::Ping(id) if id % 2 == 0 => {
                    let _ = self.control.send(Control::Pong(id));
                }
                Frame::Ping(_) => {}
                Frame::GoAway { .. } => self.going_away.store(true, Ordering::Release),
                Frame::Ignored => {}
            }
        }
    }

    /// Hands a stream's data to its owner, waiting up to [`STALL`] for
    /// room in the owner's budget.
    async fn deliver(&self, stream: u32, fin: bool, data: Bytes) {
        let Some(route) = (if fin {
            self.take_route(stream)
        } else {
            self.route(stream)
        }) else {
            return;
        };
        if !data.is_empty() {
            let share = data.len().min(BUDGET) as u32;
            let room = tokio::time::timeout(STALL, route.budget.clone().acquire_many_owned(share));
            match room.await {
                Ok(Ok(permit)) => {
                    let _ = route.events.send(Event::Data(route.channel, data, permit));
                }
                _ => {
                    // The client's other streams fail at once rather than
                    // each hold the session for another pause.
                    route.budget.close();
                    self.take_route(stream);
                    let _ = self.control.send(Control::Reset(stream));
                    let reason = format!(
                        "kubegate reset this port-forward stream: its client left {} KiB unread for {} s, and the streams of other connections to this pod were waiting on it",
                        BUDGET / 1024,
                        STALL.as_secs()
                    );
                    let _ = route.events.send(Event::Reset(route.channel, reason));
                    return;
                }
            }
        }
        if fin {
            let _ = route.events.send(Event::End(route.channel));
        }
    }

    async fn write(
        &self,
        mut writer: WireWriter,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut data: mpsc::Receiver<(u32, Bytes, bool)>,
    ) -> std::io::Result<()> {
        let mut deflater = Deflater::default();
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut next_stream = 1u32;
        let mut next_request = 0u64;
        let mut next_ping = 1u32;
        let mut closing = false;
        loop {
            tokio::select! {
                biased;
                next = control.recv() => match next {
                    Some(Control::Close) | None => closing = true,
                    Some(command) => self.put(command, &mut out, &mut deflater, (&mut next_stream, &mut next_request, &mut next_ping)),
                },
                Some((stream, bytes, fin)) = data.recv() => kubegate_spdy::put_data(&mut out, stream, fin, &bytes),
                () = self.ended.cancelled() => {
                    closing = true;
                    self.end("kubegate is shutting down".to_string());
                }
            }
            // Whatever else is already waiting goes in the same write.
            while !closing && out.len() < BATCH {
                if let Ok(command) = control.try_recv() {
                    if matches!(command, Control::Close) {
                        closing = true;
                    } else {
                        let ids = (&mut next_stream, &mut next_request, &mut next_ping);
                        self.put(command, &mut out, &mut deflater, ids);
                    }
                } else if let Ok((stream, bytes, fin)) = data.try_recv() {
                    kubegate_spdy::put_data(&mut out, stream, fin, &bytes);
                } else {
                    break;
                }
            }
            if closing {
                kubegate_spdy::put_goaway(&mut out, 0);
            }
            if !out.is_empty() {
                writer.send(out.split().freeze()).await?;
            }
            if closing {
                writer.close().await;
                self.end("kubegate closed the idle port-forward session".to_string());
                return Ok(());
            }
        }
    }

    /// Appends the frames for one command.
    fn put(
        &self,
        command: Control,
        out: &mut BytesMut,
        deflater: &mut Deflater,
        (next_stream, next_request, next_ping): (&mut u32, &mut u64, &mut u32),
    ) {
        match command {
            Control::Open {
                port,
                error,
                data,
                opened,
            } => {
                let pair = Pair {
                    error: *next_stream,
                    data: *next_stream + 2,
                };
                *next_stream += 4;
                let request = next_request.to_string();
                *next_request += 1;
                let Ok(mut routes) = self.routes.lock() else {
                    return;
                };
                // Once the session has ended nobody would tell these
                // routes: the opener hears `None` instead.
                if self.finished.load(Ordering::Acquire) {
                    return;
                }
                routes.insert(pair.error, error);
                routes.insert(pair.data, data);
                drop(routes);
                let port = port.to_string();
                for (stream, kind) in [(pair.error, "error"), (pair.data, "data")] {
                    let block = deflater.block(&[
                        ("port", &port),
                        ("requestid", &request),
                        ("streamtype", kind),
                    ]);
                    kubegate_spdy::put_syn_stream(out, stream, false, &block);
                    if kind == "error" {
                        // kubectl half-closes the error stream at once.
                        kubegate_spdy::put_data(out, stream, true, &[]);
                    }
                }
                let _ = opened.send(pair);
            }
            Control::Reset(stream) => {
                self.take_route(stream);
                kubegate_spdy::put_rst_stream(out, stream, reset::CANCEL);
            }
            Control::Pong(id) => kubegate_spdy::put_ping(out, id),
            Control::Ping => {
                kubegate_spdy::put_ping(out, *next_ping);
                *next_ping = next_ping.wrapping_add(2);
            }
            Control::Close => {}
        }
    }

    /// Pings every [`PING_EVERY`]; ends the session when pings go
    /// unanswered or it has been idle for `idle`.
    async fn keep_alive(&self, idle: Duration) {
        let tick = PING_EVERY.min(idle / 2).max(Duration::from_millis(50));
        let mut ticks = tokio::time::interval(tick);
        ticks.tick().await;
        let mut pinged = Duration::ZERO;
        self.heard_at.store(self.millis(), Ordering::Release);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let now = self.millis();
            self.reset_abandoned(now);
            if self.pairs.load(Ordering::Acquire) == 0
                && now.saturating_sub(self.idle_at.load(Ordering::Acquire))
                    >= idle.as_millis() as u64
            {
                self.going_away.store(true, Ordering::Release);
                let _ = self.control.send(Control::Close);
                self.ended.cancelled().await;
                return;
            }
            if now.saturating_sub(self.heard_at.load(Ordering::Acquire))
                >= PING_DEAD.as_millis() as u64
            {
                self.end(format!(
                    "the apiserver did not answer keep-alive pings for {} s",
                    PING_DEAD.as_secs()
                ));
                return;
            }
            pinged += tick;
            if pinged >= PING_EVERY {
                pinged = Duration::ZERO;
                let _ = self.control.send(Control::Ping);
            }
        }
    }
}

/// Room a read into the session's buffer always has: frames split off
/// the buffer take its space with them, and a read into what is left
/// would bring in a few bytes at a time.
const READ_ROOM: usize = 64 * 1024;

async fn next_frame(
    reader: &mut WireReader,
    buffer: &mut BytesMut,
) -> std::io::Result<Option<Frame>> {
    loop {
        if let Some(frame) = kubegate_spdy::parse(buffer)? {
            return Ok(Some(frame));
        }
        if buffer.capacity() - buffer.len() < READ_ROOM / 4 {
            buffer.reserve(READ_ROOM);
        }
        if !reader.fill(buffer).await? {
            return Ok(None);
        }
    }
}
