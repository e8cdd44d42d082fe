//! The WebSocket channel protocols, server side. Every message carries one
//! channel: a leading byte (binary protocols) or digit (base64 protocols).
//! exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error (v4+: a Status JSON),
//! 4 resize; v5 adds 255, "close this channel" (stdin EOF). port-forward:
//! channels 2i (data) and 2i+1 (error) for the i-th port, each opened by
//! the server with the port number, two bytes little-endian.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::dial::PodPorts;
use super::process::{ExecSpec, exit_status, failure};
use crate::apiserver::TerminalSize;

/// The socket a session runs on.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How a negotiated subprotocol frames channels.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    base64: bool,
    /// v4 and later: the error channel carries a Status JSON.
    status_json: bool,
    /// v5: channel 255 closes a channel.
    close_channel: bool,
}

impl Framing {
    /// The framing of a subprotocol the double supports, or `None`.
    pub fn of(protocol: &str) -> Option<Framing> {
        let framing = |base64, status_json, close_channel| Framing {
            base64,
            status_json,
            close_channel,
        };
        Some(match protocol {
            "" | "channel.k8s.io" | "portforward.k8s.io" => framing(false, false, false),
            "base64.channel.k8s.io" => framing(true, false, false),
            "v4.channel.k8s.io" => framing(false, true, false),
            "v4.base64.channel.k8s.io" => framing(true, true, false),
            "v5.channel.k8s.io" => framing(false, true, true),
            _ => return None,
        })
    }

    fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let text = format!(
                "{}{}",
                (b'0' + channel) as char,
                base64::engine::general_purpose::STANDARD.encode(data)
            );
            Message::text(text)
        } else {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::binary(frame)
        }
    }

    fn decode(&self, message: Message) -> Option<(u8, Vec<u8>)> {
        match message {
            // Go's websocket reads text and binary frames alike, and
            // clients (the Python one) send stdin as text.
            Message::Binary(data) if !self.base64 => {
                data.split_first().map(|(c, rest)| (*c, rest.to_vec()))
            }
            Message::Text(text) if !self.base64 => text
                .as_bytes()
                .split_first()
                .map(|(c, rest)| (*c, rest.to_vec())),
            Message::Text(text) if self.base64 => {
                let (channel, rest) = text.as_str().split_at_checked(1)?;
                let channel = channel.as_bytes()[0].checked_sub(b'0')?;
                Some((
                    channel,
                    base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .ok()?,
                ))
            }
            _ => None,
        }
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// A writer task that owns the socket's sending half; producers send it
/// messages through a channel.
fn writer(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (sender, mut messages) = mpsc::channel::<Message>(32);
    let task = tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // Normal closure (1000): Go clients treat anything else as an error.
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    (sender, task)
}

async fn pump(
    mut reader: impl AsyncRead + Unpin,
    channel: u8,
    framing: Framing,
    out: mpsc::Sender<Message>,
) {
    let mut buffer = vec![0u8; 32 * 1024];
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0
            || out
                .send(framing.encode(channel, &buffer[..n]))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Runs an exec or attach session until the process ends (then the status
/// is sent and the socket closed) or the client goes away (then the process
/// is killed).
pub async fn exec(socket: Socket, framing: Framing, spec: ExecSpec, terminal: Arc<TerminalSize>) {
    let (sink, mut incoming) = socket.split();
    let (out, writing) = writer(sink);
    let first = if spec.stdout {
        STDOUT
    } else if spec.stderr {
        STDERR
    } else {
        ERROR
    };
    // The kubelet's "streams are ready" signal: one empty message.
    let _ = out.send(framing.encode(first, &[])).await;
    let started = if spec.tty {
        spec.spawn_on_terminal().map(|on| {
            let output = tokio::spawn(pump(on.output, STDOUT, framing, out.clone()));
            (on.child, Keyboard::Terminal(on.input), vec![output])
        })
    } else {
        spec.spawn().map(|mut child| {
            let stdin = child.stdin.take().map(Keyboard::Pipe);
            let stdout = child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, STDOUT, framing, out.clone())));
            let stderr = child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, STDERR, framing, out.clone())));
            let pumps = [stdout, stderr].into_iter().flatten().collect();
            (child, stdin.unwrap_or(Keyboard::None), pumps)
        })
    };
    let (mut child, mut keyboard, pumps) = match started {
        Ok(started) => started,
        Err(error) => {
            let message = format!("exec: {:?}: {error}", spec.command);
            let payload = if framing.status_json {
                failure(&message).to_string()
            } else {
                message
            };
            let _ = out.send(framing.encode(ERROR, payload.as_bytes())).await;
            drop(out);
            let _ = writing.await;
            return;
        }
    };
    let client = async {
        while let Some(Ok(message)) = incoming.next().await {
            if message.is_close() {
                return;
            }
            match framing.decode(message) {
                Some((STDIN, data)) => keyboard.write(&data).await,
                Some((CLOSE, data)) if framing.close_channel && data.first() == Some(&STDIN) => {
                    keyboard.close().await
                }
                Some((RESIZE, data)) => {
                    if let Some((width, height)) = terminal_size(&data) {
                        keyboard.resize(width, height);
                        terminal.set(width, height);
                    }
                }
                Some(_) | None => {}
            }
        }
    };
    let finished = async {
        // A terminal's output ends only when every holder of the terminal
        // is gone, so wait for the process first.
        let status = child.wait().await;
        for pump in pumps {
            let _ = pump.await;
        }
        status
    };
    tokio::select! {
        status = finished => {
            let code = status.ok().and_then(|s| s.code());
            if framing.status_json {
                let status = exit_status(&spec.command, code);
                let _ = out.send(framing.encode(ERROR, status.to_string().as_bytes())).await;
            } else if code != Some(0) {
                let message = format!("command terminated with non-zero exit code: {code:?}");
                let _ = out.send(framing.encode(ERROR, message.as_bytes())).await;
            }
            drop(out);
            let _ = writing.await;
        }
        () = client => {
            // The client went away: the process goes too (kill_on_drop).
            writing.abort();
        }
    }
}

/// Where a client's stdin goes: the process's stdin pipe, its terminal,
/// or nowhere.
enum Keyboard {
    Pipe(tokio::process::ChildStdin),
    Terminal(pty_process::OwnedWritePty),
    None,
}

impl Keyboard {
    async fn write(&mut self, data: &[u8]) {
        let written = match self {
            Keyboard::Pipe(pipe) => pipe.write_all(data).await,
            Keyboard::Terminal(terminal) => terminal.write_all(data).await,
            Keyboard::None => Ok(()),
        };
        if written.is_err() {
            *self = Keyboard::None;
        }
    }

    /// Stdin's end: the pipe closes; a terminal gets end-of-file (Ctrl-D).
    async fn close(&mut self) {
        if let Keyboard::Terminal(terminal) = self {
            let _ = terminal.write_all(&[0x04]).await;
        }
        if let Keyboard::Pipe(_) = self {
            *self = Keyboard::None;
        }
    }

    fn resize(&self, width: u16, height: u16) {
        if let Keyboard::Terminal(terminal) = self {
            let _ = terminal.resize(pty_process::Size::new(height, width));
        }
    }
}

/// A resize message: `{"Width":80,"Height":24}`.
pub(super) fn terminal_size(data: &[u8]) -> Option<(u16, u16)> {
    let size: serde_json::Value = serde_json::from_slice(data).ok()?;
    let side = |key: &str| size[key].as_u64().and_then(|v| u16::try_from(v).ok());
    Some((side("Width")?, side("Height")?))
}

/// The benchmark's session: what arrives on channel 0 goes back on
/// channel 1 (exec: stdin as stdout) or channel 0 (port-forward), with no
/// process and no TCP connection; v5's stdin close ends an exec with
/// `Success`.
pub async fn echo(socket: Socket, framing: Framing, port_forward: bool) {
    let (mut sink, mut incoming) = socket.split();
    let reply_channel = if port_forward { 0 } else { STDOUT };
    if port_forward {
        for channel in [0u8, 1] {
            let _ = sink
                .send(framing.encode(channel, &0u16.to_le_bytes()))
                .await;
        }
    } else {
        let _ = sink.send(framing.encode(STDOUT, &[])).await;
    }
    while let Some(Ok(message)) = incoming.next().await {
        if message.is_close() {
            break;
        }
        match framing.decode(message) {
            Some((STDIN, data))
                if sink
                    .send(framing.encode(reply_channel, &data))
                    .await
                    .is_err() =>
            {
                return;
            }
            Some((CLOSE, _)) if !port_forward => {
                let status = exit_status(&[], Some(0)).to_string();
                let _ = sink.send(framing.encode(ERROR, status.as_bytes())).await;
                break;
            }
            _ => {}
        }
    }
    let _ = sink.send(normal_close()).await;
    let _ = sink.close().await;
}

/// Runs a port-forward session: one TCP connection to 127.0.0.1 per
/// requested port, relayed over that port's data channel.
pub async fn port_forward(socket: Socket, framing: Framing, ports: Vec<u16>, pod: PodPorts) {
    let (sink, mut incoming) = socket.split();
    let (out, writing) = writer(sink);
    let mut to_ports = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let data = (index * 2) as u8;
        for channel in [data, data + 1] {
            let _ = out.send(framing.encode(channel, &port.to_le_bytes())).await;
        }
        match pod.dial(*port).await {
            Ok(connection) => {
                let (reader, writer) = tokio::io::split(connection);
                tokio::spawn(pump(reader, data, framing, out.clone()));
                to_ports.push(Some(writer));
            }
            Err(error) => {
                let message = format!(
                    "error forwarding port {port} to pod: dial tcp 127.0.0.1:{port}: {error}"
                );
                let _ = out.send(framing.encode(data + 1, message.as_bytes())).await;
                to_ports.push(None);
            }
        }
    }
    while let Some(Ok(message)) = incoming.next().await {
        if message.is_close() {
            break;
        }
        if let Some((channel, data)) = framing.decode(message)
            && channel % 2 == 0
            && let Some(Some(writer)) = to_ports.get_mut(channel as usize / 2)
            && writer.write_all(&data).await.is_err()
        {
            to_ports[channel as usize / 2] = None;
        }
    }
    drop(out);
    writing.abort();
}

/// Bridges a WebSocket to a byte stream: binary messages in either
/// direction carry the bytes (how `SPDY/3.1+portforward.k8s.io` tunnels
/// SPDY). Returns the other end of the stream.
pub fn into_byte_stream(socket: Socket) -> tokio::io::DuplexStream {
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut incoming) = socket.split();
    let (mut read_half, mut write_half) = tokio::io::split(near);
    tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(data) if write_half.write_all(&data).await.is_err() => return,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = write_half.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match read_half.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::binary(Bytes::copy_from_slice(&buffer[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    far
}
