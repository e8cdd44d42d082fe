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
use std::sync::atomic::{AtomicU64, Ordering};
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

use super::session::{BUDGET, Event, Pair, Route, Session};
use crate::admin::{Metrics, PortForwardEvent};

/// How long one message to the client may take to go out before the
/// client counts as gone (kubectl's own write deadline).
const WRITE_LIMIT: Duration = Duration::from_secs(60);
/// How long a stream whose client has gone may wait for the kubelet to
/// close it before it is reset.
const LINGER: Duration = Duration::from_secs(10);

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

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Framing::Binary => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::binary(frame)
            }
            Framing::Base64 => {
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        }
    }

    /// A client message's channel and bytes. Go's websocket reads text and
    /// binary frames alike.
    fn decode(self, message: Message) -> Option<(u8, Bytes)> {
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
                Some((channel.checked_sub(b'0')?, Bytes::from(data)))
            }
        }
    }
}

/// One port's forwarded connection.
struct Connection {
    port: u16,
    pair: Option<Pair>,
    /// The kubelet's side of the data and error streams is still open.
    data_open: bool,
    error_open: bool,
    /// kubegate's side of the data stream is still open.
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
    session: Arc<Session>,
    moved: Moved<'_>,
    metrics: &Metrics,
) {
    let (mut sink, mut incoming) = socket.split();
    let (events_to, mut events) = mpsc::unbounded_channel();
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
            port,
            pair,
            data_open: open,
            error_open: open,
            ours_open: open,
            done: !open,
        });
    }
    drop(events_to);
    let mut open = connections.iter().filter(|c| !c.done).count();
    let mut gone = false;
    for (index, connection) in connections.iter().enumerate() {
        let data = (index * 2) as u8;
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
            gone |= !send(&mut sink, message).await;
        }
    }
    while open > 0 && !gone {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let (index, message) = match event {
                    Event::Data(channel, data, _share) => {
                        moved.to_client.fetch_add(data.len() as u64, Ordering::Relaxed);
                        gone = !send(&mut sink, framing.encode(channel, &data)).await;
                        continue;
                    }
                    Event::End(channel) => {
                        let connection = &mut connections[usize::from(channel / 2)];
                        if channel % 2 == 1 {
                            connection.error_open = false;
                        } else {
                            connection.data_open = false;
                            // The pod closed: v4 WebSockets cannot half-close,
                            // so the connection is over on both sides.
                            if let Some(pair) = connection.pair.filter(|_| connection.ours_open) {
                                session.finish(pair.data);
                                connection.ours_open = false;
                            }
                        }
                        if connection.data_open || connection.error_open {
                            continue;
                        }
                        (usize::from(channel / 2), None)
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
                if let Some(reason) = message {
                    metrics.port_forward(PortForwardEvent::StreamRefused);
                    let text = format!("error forwarding port {}: {reason}", connection.port);
                    gone = !send(&mut sink, framing.encode(index as u8 * 2 + 1, text.as_bytes())).await;
                    if let Some(pair) = connection.pair {
                        session.reset(pair.error);
                        session.reset(pair.data);
                    }
                }
                connection.done = true;
                session.closed_pair();
                metrics.port_forward(PortForwardEvent::StreamClosed);
                open -= 1;
            }
            message = incoming.next() => match message {
                Some(Ok(message)) if message.is_close() => gone = true,
                Some(Ok(message)) => {
                    let Some((channel, data)) = framing.decode(message) else { continue };
                    let to = connections
                        .get(usize::from(channel / 2))
                        .filter(|c| channel % 2 == 0 && c.ours_open && !c.done)
                        .and_then(|c| c.pair);
                    if let Some(pair) = to && !data.is_empty() {
                        moved.to_server.fetch_add(data.len() as u64, Ordering::Relaxed);
                        session.send(pair.data, data).await;
                    }
                }
                Some(Err(_)) | None => gone = true,
            },
        }
    }
    if gone {
        for connection in connections.iter().filter(|c| !c.done) {
            if let Some(pair) = connection.pair {
                if connection.ours_open {
                    session.finish(pair.data);
                }
                session.closed_pair();
                metrics.port_forward(PortForwardEvent::StreamClosed);
                let session = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    session.abandon(pair);
                });
            }
        }
        return;
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    if send(&mut sink, close).await {
        let _ = tokio::time::timeout(WRITE_LIMIT, sink.close()).await;
    }
}

/// Sends one message; `false` if the client is gone or stopped reading
/// for [`WRITE_LIMIT`].
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>,
    message: Message,
) -> bool {
    matches!(
        tokio::time::timeout(WRITE_LIMIT, sink.send(message)).await,
        Ok(Ok(()))
    )
}
