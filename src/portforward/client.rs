//! One client's port-forward WebSocket, answered by kubegate itself: the
//! kubelet's channel protocol on the client's side
//! (`pkg/kubelet/cri/streaming/portforward/websocket.go`), a stream pair
//! on a shared session on the other.
//!
//! The i-th port of `?ports=` is channel 2i (data) and 2i+1 (error); each
//! opens with the port, two bytes little-endian, on both channels. Errors
//! are plain text on the error channel; when every port's connection has
//! ended, the WebSocket closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::session::{BUDGET, Event, Pair, Reserved, Route, SpdySession};
use crate::telemetry::{PortForwardEvent, Telemetry};

/// How long one message to the client may take to go out before the
/// client counts as gone (kubectl's own write deadline).
const WRITE_LIMIT: Duration = Duration::from_secs(60);

/// How a port-forward subprotocol frames channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A leading channel byte (`v4.channel.k8s.io`, or none named).
    Binary,
    /// A leading channel digit, then base64 (`v4.base64.channel.k8s.io`).
    Base64,
}

impl Framing {
    /// The framing of a port-forward subprotocol the kubelet serves over
    /// WebSocket (`portforward.k8s.io` as the apiserver double serves it).
    pub fn of(protocol: &str) -> Option<Framing> {
        match protocol {
            "" | "v4.channel.k8s.io" | "portforward.k8s.io" => Some(Framing::Binary),
            "v4.base64.channel.k8s.io" => Some(Framing::Base64),
            _ => None,
        }
    }

    pub(crate) fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Framing::Binary => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::binary(frame)
            }
            Framing::Base64 => {
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                // Go's byte arithmetic: past '9' the "digit" wraps, as the
                // kubelet's does.
                text.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        }
    }

    /// A client message's channel and bytes. Go's websocket reads text and
    /// binary frames alike.
    pub(crate) fn decode(self, message: Message) -> Option<(u8, Bytes)> {
        let raw = match message {
            Message::Binary(data) => data,
            Message::Text(text) => Bytes::from(text),
            _ => return None,
        };
        let channel = *raw.first()?;
        match self {
            Framing::Binary => Some((channel, raw.slice(1..))),
            Framing::Base64 => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&raw[1..])
                    .ok()?;
                Some((channel.wrapping_sub(b'0'), Bytes::from(data)))
            }
        }
    }
}

/// One port's forwarded connection.
struct Connection {
    /// Its place in `?ports=`: channels 2i and 2i+1.
    index: usize,
    port: u16,
    pair: Option<Pair>,
    /// The kubelet's side of the data and error streams is still open.
    data_open: bool,
    error_open: bool,
    /// kubegate's side of the data stream was opened.
    ours_open: bool,
    done: bool,
}

/// Bytes moved for the client, for its audit event and metrics.
pub struct Moved<'a> {
    /// From the client to the pod.
    pub to_server: &'a AtomicU64,
    /// From the pod to the client.
    pub to_client: &'a AtomicU64,
}

/// Serves a client's port-forward WebSocket on `session` until every
/// port's connection ends or the client goes.
pub async fn serve(
    socket: WebSocketStream<TokioIo<Upgraded>>,
    framing: Framing,
    ports: &[u16],
    reserved: Reserved,
    moved: Moved<'_>,
    metrics: &Telemetry,
) {
    let session = reserved.session().clone();
    let (sink, incoming) = socket.split();
    let (events_to, events) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BUDGET));
    let route = |channel| Route {
        events: events_to.clone(),
        channel,
        budget: budget.clone(),
    };
    let mut connections = Vec::with_capacity(ports.len());
    for (index, &port) in ports.iter().enumerate() {
        let data = (index * 2) as u8;
        let pair = session.open(port, route(data + 1), route(data)).await;
        let open = pair.is_some();
        metrics.port_forward(if open {
            PortForwardEvent::StreamOpened
        } else {
            PortForwardEvent::StreamRefused
        });
        connections.push(Connection {
            index,
            port,
            pair,
            data_open: open,
            error_open: open,
            ours_open: open,
            done: !open,
        });
    }
    drop(events_to);
    // Its connections hold the session now.
    drop(reserved);
    let writable: Vec<AtomicBool> = connections
        .iter()
        .map(|c| AtomicBool::new(c.ours_open))
        .collect();
    let data_streams: Vec<Option<u32>> =
        connections.iter().map(|c| c.pair.map(|p| p.data)).collect();
    let pods = Pods {
        framing,
        session: &session,
        metrics,
    };
    // Both directions at once: a kubelet slow to read what the client
    // sends must never stop the client's data from being delivered.
    let ended = tokio::select! {
        ended = pods.to_client(sink, events, &mut connections, &writable, moved.to_client) => ended,
        () = pods.to_pods(incoming, &data_streams, &writable, moved.to_server) => false,
    };
    if ended {
        return;
    }
    // The client has gone: what is left of its connections is closed from
    // kubegate's side, and reset if the kubelet does not close it soon.
    for connection in connections.iter().filter(|c| !c.done) {
        if let Some(pair) = connection.pair {
            if writable[connection.index].load(Ordering::Acquire) {
                session.finish(pair.data).await;
            }
            session.closed_pair();
            metrics.port_forward(PortForwardEvent::StreamClosed);
            session.abandon(pair);
        }
    }
}

/// One client's side of its connections.
struct Pods<'a> {
    framing: Framing,
    session: &'a Arc<SpdySession>,
    metrics: &'a Telemetry,
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;
type Incoming = futures_util::stream::SplitStream<WebSocketStream<TokioIo<Upgraded>>>;

impl Pods<'_> {
    /// Delivers the pods' data and errors to the client until every
    /// connection has ended (then closes the WebSocket: `true`) or the
    /// client is gone (`false`).
    async fn to_client(
        &self,
        mut sink: Sink,
        mut events: mpsc::UnboundedReceiver<Event>,
        connections: &mut [Connection],
        writable: &[AtomicBool],
        to_client: &AtomicU64,
    ) -> bool {
        let (framing, session) = (self.framing, self.session);
        for connection in connections.iter() {
            let data = (connection.index * 2) as u8;
            let prefix = connection.port.to_le_bytes();
            let mut messages = vec![
                framing.encode(data, &prefix),
                framing.encode(data + 1, &prefix),
            ];
            if connection.pair.is_none() {
                let reason = format!(
                    "error forwarding port {}: {}",
                    connection.port,
                    session.reason()
                );
                messages.push(framing.encode(data + 1, reason.as_bytes()));
            }
            for message in messages {
                if !send(&mut sink, message).await {
                    return false;
                }
            }
        }
        let mut open = connections.iter().filter(|c| !c.done).count();
        while open > 0 {
            let Some(event) = events.recv().await else {
                break;
            };
            let (index, message) = match event {
                Event::Data(channel, data, _share) => {
                    if channel % 2 == 1 {
                        session.failed_connection();
                    } else {
                        session.pod_answered();
                    }
                    to_client.fetch_add(data.len() as u64, Ordering::Relaxed);
                    // With more already waiting, this message goes out in
                    // the same write as the next.
                    let message = framing.encode(channel, &data);
                    if !send_or_queue(&mut sink, message, !events.is_empty()).await {
                        return false;
                    }
                    continue;
                }
                Event::End(channel) => {
                    let index = usize::from(channel / 2);
                    let connection = &mut connections[index];
                    if channel % 2 == 1 {
                        connection.error_open = false;
                    } else {
                        connection.data_open = false;
                        // The pod closed: v4 WebSockets cannot half-close,
                        // so the connection is over on both sides.
                        if let Some(pair) = connection.pair
                            && writable[index].swap(false, Ordering::AcqRel)
                        {
                            session.finish(pair.data).await;
                        }
                    }
                    if connection.data_open || connection.error_open {
                        continue;
                    }
                    (index, None)
                }
                Event::Refused(channel) => (
                    usize::from(channel / 2),
                    Some("the kubelet refused the port-forward stream".to_string()),
                ),
                Event::Reset(channel, reason) => (usize::from(channel / 2), Some(reason)),
            };
            let connection = &mut connections[index];
            if connection.done {
                continue;
            }
            writable[index].store(false, Ordering::Release);
            if let Some(reason) = message {
                self.metrics.port_forward(PortForwardEvent::StreamRefused);
                let text = format!("error forwarding port {}: {reason}", connection.port);
                if let Some(pair) = connection.pair {
                    session.reset(pair.error);
                    session.reset(pair.data);
                }
                if !send(
                    &mut sink,
                    framing.encode(index as u8 * 2 + 1, text.as_bytes()),
                )
                .await
                {
                    return false;
                }
            }
            connection.done = true;
            session.closed_pair();
            self.metrics.port_forward(PortForwardEvent::StreamClosed);
            open -= 1;
        }
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        if send(&mut sink, close).await {
            let _ = tokio::time::timeout(WRITE_LIMIT, sink.close()).await;
        }
        true
    }

    /// Carries the client's data channels to the pods (onto the data
    /// streams) until the client closes or goes.
    async fn to_pods(
        &self,
        mut incoming: Incoming,
        data_streams: &[Option<u32>],
        writable: &[AtomicBool],
        to_server: &AtomicU64,
    ) {
        while let Some(Ok(message)) = incoming.next().await {
            if message.is_close() {
                return;
            }
            let Some((channel, data)) = self.framing.decode(message) else {
                continue;
            };
            let index = usize::from(channel / 2);
            let to = data_streams
                .get(index)
                .copied()
                .flatten()
                .filter(|_| channel % 2 == 0 && writable[index].load(Ordering::Acquire));
            if let Some(stream) = to
                && !data.is_empty()
            {
                to_server.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.session.send(stream, data).await;
            }
        }
    }
}

/// Sends one message; `false` if the client is gone or stopped reading
/// for [`WRITE_LIMIT`].
async fn send(sink: &mut Sink, message: Message) -> bool {
    send_or_queue(sink, message, false).await
}

/// Sends one message, or with `more` to follow, queues it for the next
/// send's write (the WebSocket writes out a queue past its buffer size by
/// itself); `false` as [`send`].
async fn send_or_queue(sink: &mut Sink, message: Message, more: bool) -> bool {
    let sent = async {
        if more {
            sink.feed(message).await
        } else {
            sink.send(message).await
        }
    };
    matches!(tokio::time::timeout(WRITE_LIMIT, sent).await, Ok(Ok(())))
}
