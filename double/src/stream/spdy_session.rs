//! exec, attach and port-forward over SPDY/3.1 (raw, or tunneled in a
//! WebSocket): the client opens one stream per standard stream (exec) or
//! two per TCP connection (port-forward), each named by its `streamtype`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dial::PodPorts;
use super::process::{ExecSpec, OnTerminal, exit_status, failure};
use super::spdy::{SpdyStream, StreamWriter};
use crate::apiserver::TerminalSize;

/// How long the client has to open every stream (client-go's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, writer: StreamWriter) {
    let mut buffer = vec![0u8; 32 * 1024];
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0 || !writer.send(Bytes::copy_from_slice(&buffer[..n])).await {
            break;
        }
    }
    writer.finish().await;
}

/// Runs exec or attach. `protocol` is the negotiated
/// `X-Stream-Protocol-Version`; from v4 the error stream carries a Status.
pub async fn exec(
    mut accepted: mpsc::Receiver<SpdyStream>,
    closed: CancellationToken,
    protocol: &str,
    spec: ExecSpec,
    terminal: Arc<TerminalSize>,
) {
    let mut expected = vec!["error"];
    if spec.stdin {
        expected.push("stdin");
    }
    if spec.stdout {
        expected.push("stdout");
    }
    if spec.stderr && !spec.tty {
        expected.push("stderr");
    }
    if spec.tty && protocol != "channel.k8s.io" && protocol != "v2.channel.k8s.io" {
        expected.push("resize");
    }
    let mut streams: HashMap<String, SpdyStream> = HashMap::new();
    let collected = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while streams.len() < expected.len() {
            let stream = accepted.recv().await?;
            let kind = stream
                .headers
                .get("streamtype")
                .cloned()
                .unwrap_or_default();
            if expected.contains(&kind.as_str()) {
                streams.insert(kind, stream);
            } else {
                stream.writer.reset().await;
            }
        }
        Some(())
    })
    .await;
    if !matches!(collected, Ok(Some(()))) {
        return;
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    let status_json = protocol.starts_with("v4") || protocol.starts_with("v5");
    if spec.tty {
        return on_terminal(streams, error, closed, status_json, spec, terminal).await;
    }
    let mut child = match spec.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("exec: {:?}: {e}", spec.command);
            let payload = if status_json {
                failure(&message).to_string()
            } else {
                message
            };
            error.writer.send(Bytes::from(payload)).await;
            error.writer.finish().await;
            return;
        }
    };
    if let (Some(mut stream), Some(mut pipe)) = (streams.remove("stdin"), child.stdin.take()) {
        tokio::spawn(async move {
            while let Some(data) = stream.incoming.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    return;
                }
            }
            // The client's FIN: stdin is closed.
        });
    }
    let mut pumps = Vec::new();
    let stdout = streams.remove("stdout");
    if let (Some(stream), Some(reader)) = (&stdout, child.stdout.take()) {
        pumps.push(tokio::spawn(pump(reader, stream.writer.clone())));
    }
    let stderr_stream = streams
        .remove("stderr")
        .map(|s| s.writer)
        .or(stdout.as_ref().map(|s| s.writer.clone()));
    if let (Some(writer), Some(reader)) = (stderr_stream, child.stderr.take()) {
        pumps.push(tokio::spawn(pump(reader, writer)));
    }
    let finished = async {
        for pump in pumps {
            let _ = pump.await;
        }
        child.wait().await
    };
    tokio::select! {
        status = finished => {
            let code = status.ok().and_then(|s| s.code());
            if status_json {
                error.writer.send(Bytes::from(exit_status(&spec.command, code).to_string())).await;
            } else if code != Some(0) {
                error.writer.send(Bytes::from(format!("command terminated with non-zero exit code: {code:?}"))).await;
            }
            error.writer.finish().await;
        }
        () = closed.cancelled() => {}
    }
}

/// Runs exec or attach on a terminal: stdin is typed into it, each
/// size on the resize stream resizes it (and is recorded in `terminal`),
/// its output is stdout.
async fn on_terminal(
    mut streams: HashMap<String, SpdyStream>,
    error: SpdyStream,
    closed: CancellationToken,
    status_json: bool,
    spec: ExecSpec,
    terminal: Arc<TerminalSize>,
) {
    let OnTerminal {
        mut child,
        output,
        mut input,
    } = match spec.spawn_on_terminal() {
        Ok(on) => on,
        Err(e) => {
            let message = format!("exec: {:?}: {e}", spec.command);
            error
                .writer
                .send(Bytes::from(failure(&message).to_string()))
                .await;
            error.writer.finish().await;
            return;
        }
    };
    let output = streams
        .remove("stdout")
        .map(|stream| tokio::spawn(pump(output, stream.writer)));
    let (mut stdin, mut resize) = (streams.remove("stdin"), streams.remove("resize"));
    let keyboard = async {
        loop {
            tokio::select! {
                Some(data) = async { stdin.as_mut()?.incoming.recv().await } => {
                    if input.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(data) = async { resize.as_mut()?.incoming.recv().await } => {
                    // kubectl writes each size as a JSON line.
                    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        if let Some((width, height)) = super::websocket::terminal_size(line) {
                            let _ = input.resize(pty_process::Size::new(height, width));
                            terminal.set(width, height);
                        }
                    }
                }
                else => return,
            }
        }
    };
    let finished = async {
        let status = child.wait().await;
        if let Some(output) = output {
            let _ = output.await;
        }
        status
    };
    tokio::pin!(finished);
    let status = tokio::select! {
        status = &mut finished => status,
        () = closed.cancelled() => return,
        () = async { keyboard.await; std::future::pending::<()>().await } => unreachable!(),
    };
    let code = status.ok().and_then(|s| s.code());
    if status_json {
        let status = exit_status(&spec.command, code).to_string();
        error.writer.send(Bytes::from(status)).await;
    } else if code != Some(0) {
        let message = format!("command terminated with non-zero exit code: {code:?}");
        error.writer.send(Bytes::from(message)).await;
    }
    error.writer.finish().await;
}

/// Runs port-forward: streams are paired by `requestid` (or, from old
/// clients without one, by stream id), and each pair relays one TCP
/// connection to 127.0.0.1 on the stream's `port` (with `fast`, to an
/// echo in process).
pub async fn port_forward(
    mut accepted: mpsc::Receiver<SpdyStream>,
    closed: CancellationToken,
    pod: PodPorts,
    fast: bool,
) {
    let mut waiting: HashMap<String, SpdyStream> = HashMap::new();
    loop {
        let stream = tokio::select! {
            next = accepted.recv() => match next { Some(stream) => stream, None => return },
            () = closed.cancelled() => return,
        };
        let port: Option<u16> = stream
            .headers
            .get("port")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0);
        let kind = stream
            .headers
            .get("streamtype")
            .cloned()
            .unwrap_or_default();
        if port.is_none() || (kind != "error" && kind != "data") {
            stream.writer.reset().await;
            continue;
        }
        let pair_key = match stream.headers.get("requestid") {
            Some(id) => id.clone(),
            None if kind == "error" => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let Some(other) = waiting.remove(&pair_key) else {
            waiting.insert(pair_key, stream);
            continue;
        };
        let (error, data) = if kind == "error" {
            (stream, other)
        } else {
            (other, stream)
        };
        tokio::spawn(forward(
            error,
            data,
            pod.clone(),
            port.unwrap_or_default(),
            fast,
        ));
    }
}

async fn forward(error: SpdyStream, mut data: SpdyStream, pod: PodPorts, port: u16, fast: bool) {
    let dialed = if fast {
        Ok(echo())
    } else {
        pod.dial(port).await
    };
    let connection = match dialed {
        Ok(connection) => connection,
        Err(e) => {
            let message =
                format!("error forwarding port {port} to pod: dial tcp 127.0.0.1:{port}: {e}");
            error.writer.send(Bytes::from(message)).await;
            error.writer.finish().await;
            data.writer.finish().await;
            return;
        }
    };
    let (reader, mut writer) = tokio::io::split(connection);
    let to_client = tokio::spawn(pump(reader, data.writer.clone()));
    while let Some(bytes) = data.incoming.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    let _ = to_client.await;
    error.writer.finish().await;
}

/// A connection to an echo in process.
fn echo() -> Box<dyn super::dial::Connection> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut reader, mut writer) = tokio::io::split(server);
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    });
    Box::new(client)
}
