//! exec, attach and port-forward through kubegate over every WebSocket
//! subprotocol, driven frame by frame by a test client, plus what must hold
//! around them: refusals passed through, the token subprotocol dropped,
//! upgrades counted as writes, and nothing leaking when either side goes.

mod support;

use std::sync::atomic::Ordering;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use kubegate_double::Options;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

type Socket = WebSocketStream<TcpStream>;

/// Opens a WebSocket through kubegate offering `protocols`.
async fn open(
    kubegate: &Kubegate,
    path: &str,
    protocols: &[&str],
) -> Result<(Socket, String), WsError> {
    let mut request = format!("ws://{}{path}", kubegate.address)
        .into_client_request()
        .unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(kubegate.address).await.unwrap();
    let (socket, response) = within("websocket handshake", client_async(request, tcp)).await?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((socket, chosen))
}

fn exec_path(command: &[&str], stdin: bool) -> String {
    let mut path = "/api/v1/namespaces/default/pods/box/exec?stdout=true&stderr=true".to_string();
    if stdin {
        path.push_str("&stdin=true");
    }
    for part in command {
        path.push_str("&command=");
        path.push_str(
            &part
                .replace(' ', "%20")
                .replace(';', "%3B")
                .replace('>', "%3E")
                .replace('&', "%26"),
        );
    }
    path
}

fn base64_protocol(protocol: &str) -> bool {
    protocol.contains("base64")
}

fn frame(protocol: &str, channel: u8, data: &[u8]) -> Message {
    if base64_protocol(protocol) {
        Message::text(format!(
            "{}{}",
            channel,
            base64::engine::general_purpose::STANDARD.encode(data)
        ))
    } else {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    }
}

/// Reads until the server closes; returns what each channel carried.
async fn collect(socket: &mut Socket) -> [Vec<u8>; 5] {
    let mut channels: [Vec<u8>; 5] = Default::default();
    within("session end", async {
        while let Some(Ok(message)) = socket.next().await {
            let (channel, data) = match message {
                Message::Binary(data) if !data.is_empty() => (data[0], data[1..].to_vec()),
                Message::Text(text) if !text.is_empty() => (
                    text.as_bytes()[0] - b'0',
                    base64::engine::general_purpose::STANDARD
                        .decode(&text.as_str()[1..])
                        .unwrap(),
                ),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Some(buffer) = channels.get_mut(channel as usize) {
                buffer.extend_from_slice(&data);
            }
        }
    })
    .await;
    channels
}

/// Waits until no session is open in the double and no relay in kubegate.
async fn nothing_left_open(double: &Double, kubegate: &Kubegate) {
    let stats = &double.server.state().stats;
    eventually("sessions closed in the double", || {
        stats.open_streams.load(Ordering::Acquire) == 0
    })
    .await;
    eventually("relays closed in kubegate", || kubegate.open_relays() == 0).await;
}

async fn double_with_box() -> (Double, Kubegate) {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    (double, kubegate)
}

#[tokio::test]
async fn exec_works_over_every_channel_subprotocol() {
    let (_double, kubegate) = double_with_box().await;
    for protocol in [
        "channel.k8s.io",
        "base64.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
    ] {
        let path = exec_path(&["sh", "-c", "head -c 5; echo oops >&2; exit 5"], true);
        let (mut socket, chosen) = open(&kubegate, &path, &[protocol]).await.unwrap();
        assert_eq!(chosen, protocol);
        socket
            .send(frame(protocol, 0, b"hello, and more"))
            .await
            .unwrap();
        let [_, stdout, stderr, error, _] = collect(&mut socket).await;
        assert_eq!(stdout, b"hello", "{protocol}");
        assert_eq!(stderr, b"oops\n", "{protocol}");
        let error = String::from_utf8(error).unwrap();
        if protocol.starts_with("v4") {
            let status: serde_json::Value = serde_json::from_str(&error).unwrap();
            assert_eq!(status["status"], "Failure");
            assert_eq!(status["reason"], "NonZeroExitCode");
            assert_eq!(status["details"]["causes"][0]["message"], "5", "{protocol}");
        } else {
            assert!(error.contains("non-zero exit code"), "{protocol}: {error}");
        }
    }
}

#[tokio::test]
async fn v5_closes_stdin_with_channel_255() {
    let (_double, kubegate) = double_with_box().await;
    let path = exec_path(&["sh", "-c", "cat; echo closed >&2"], true);
    let (mut socket, chosen) = open(
        &kubegate,
        &path,
        &["v5.channel.k8s.io", "v4.channel.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(chosen, "v5.channel.k8s.io");
    socket
        .send(frame(&chosen, 0, b"all of stdin"))
        .await
        .unwrap();
    socket.send(Message::binary(vec![255u8, 0])).await.unwrap();
    let [_, stdout, stderr, error, _] = collect(&mut socket).await;
    assert_eq!(stdout, b"all of stdin");
    assert_eq!(stderr, b"closed\n");
    let status: serde_json::Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn attach_streams_the_containers_process() {
    let (_double, kubegate) = double_with_box().await;
    let path = "/api/v1/namespaces/default/pods/box/attach?stdin=true&stdout=true&stderr=true";
    let (mut socket, chosen) = open(&kubegate, path, &["v5.channel.k8s.io"]).await.unwrap();
    socket.send(frame(&chosen, 0, b"attached")).await.unwrap();
    socket.send(Message::binary(vec![255u8, 0])).await.unwrap();
    let [_, stdout, ..] = collect(&mut socket).await;
    assert_eq!(stdout, b"attached");
}

#[tokio::test]
async fn port_forward_works_over_both_websocket_subprotocols() {
    let (_double, kubegate) = double_with_box().await;
    let echo = EchoServer::start().await;
    for protocol in ["portforward.k8s.io", "v4.channel.k8s.io"] {
        let path = format!(
            "/api/v1/namespaces/default/pods/box/portforward?ports={}",
            echo.port
        );
        let (mut socket, chosen) = open(&kubegate, &path, &[protocol]).await.unwrap();
        assert_eq!(chosen, protocol);
        // The server opens both channels with the port, little-endian.
        let port = echo.port.to_le_bytes();
        for channel in [0u8, 1] {
            let first = within("port frame", socket.next())
                .await
                .unwrap()
                .unwrap()
                .into_data();
            assert_eq!(&first[..], &[channel, port[0], port[1]]);
        }
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        socket.send(frame(protocol, 0, &payload)).await.unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < payload.len() {
            let data = within("echo", socket.next())
                .await
                .unwrap()
                .unwrap()
                .into_data();
            assert_eq!(data[0], 0);
            echoed.extend_from_slice(&data[1..]);
        }
        assert_eq!(echoed, payload);
    }
}

#[tokio::test]
async fn a_refused_upgrade_returns_the_apiservers_status_and_body() {
    let (_double, kubegate) = double_with_box().await;
    let path = "/api/v1/namespaces/default/pods/missing/exec?command=true&stdout=true";
    match open(&kubegate, path, &["v5.channel.k8s.io"]).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["kind"], "Status");
            assert_eq!(body["reason"], "NotFound");
        }
        other => panic!(
            "expected the apiserver's 404, got {:?}",
            other.map(|(_, p)| p)
        ),
    }
}

#[tokio::test]
async fn the_bearer_token_subprotocol_never_reaches_the_apiserver() {
    let (_double, kubegate) = double_with_box().await;
    // /echo answers an upgrade with 200 and what it received, so the
    // refused upgrade shows exactly what kubegate sent upstream.
    let offered = [
        "base64url.bearer.authorization.k8s.io.c2VjcmV0",
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
    ];
    let Err(WsError::Http(response)) = open(&kubegate, "/echo", &offered).await else {
        panic!("/echo does not upgrade");
    };
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
    let headers = &echo["headers"];
    assert_eq!(
        headers["sec-websocket-protocol"],
        serde_json::json!(["v5.channel.k8s.io, v4.channel.k8s.io"])
    );
    assert_eq!(headers["upgrade"][0], "websocket");
    assert!(headers["sec-websocket-key"].is_array());
    assert_eq!(echo["user"]["username"], "alice");
    assert!(!echo.to_string().contains("c2VjcmV0"));
}

#[tokio::test]
async fn a_read_only_proxy_refuses_websocket_exec_sent_as_get() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--reject-methods=POST,PUT,PATCH,DELETE"]).await;
    let path = exec_path(&["true"], false);
    let Err(WsError::Http(response)) = open(&kubegate, &path, &["v5.channel.k8s.io"]).await else {
        panic!("the upgrade must be refused");
    };
    assert_eq!(response.status(), 403);
    let body = String::from_utf8_lossy(response.body().as_ref().unwrap()).into_owned();
    assert!(
        body.contains("--reject-methods") && body.contains("count as POST"),
        "{body}"
    );
    assert_eq!(
        double
            .server
            .state()
            .stats
            .open_streams
            .load(Ordering::Acquire),
        0
    );
}

#[tokio::test]
async fn a_hundred_concurrent_sessions_all_finish_and_leave_nothing_open() {
    let (double, kubegate) = double_with_box().await;
    let mut sessions = Vec::new();
    for i in 0..100 {
        let path = exec_path(&["cat"], true);
        let kubegate_address = kubegate.address;
        sessions.push(tokio::spawn(async move {
            let mut request = format!("ws://{kubegate_address}{path}")
                .into_client_request()
                .unwrap();
            request.headers_mut().insert(
                "sec-websocket-protocol",
                "v5.channel.k8s.io".parse().unwrap(),
            );
            let tcp = TcpStream::connect(kubegate_address).await.unwrap();
            let (mut socket, _) = client_async(request, tcp).await.unwrap();
            let text = format!("session {i}");
            socket.send(frame("v5", 0, text.as_bytes())).await.unwrap();
            socket.send(Message::binary(vec![255u8, 0])).await.unwrap();
            let [_, stdout, ..] = collect(&mut socket).await;
            assert_eq!(stdout, text.as_bytes());
        }));
    }
    for session in sessions {
        within("session", session).await.unwrap();
    }
    nothing_left_open(&double, &kubegate).await;
}

#[tokio::test]
async fn a_client_that_vanishes_closes_the_session_upstream() {
    let (double, kubegate) = double_with_box().await;
    let (mut socket, _) = open(
        &kubegate,
        &exec_path(&["cat"], true),
        &["v5.channel.k8s.io"],
    )
    .await
    .unwrap();
    socket.send(frame("v5", 0, b"ping")).await.unwrap();
    // The first stdout message is the empty "ready" signal; then the echo.
    let mut stdout = Vec::new();
    while stdout != b"ping" {
        let data = within("echo", socket.next())
            .await
            .unwrap()
            .unwrap()
            .into_data();
        stdout.extend_from_slice(&data[1..]);
    }
    let stats = &double.server.state().stats;
    assert_eq!(stats.open_streams.load(Ordering::Acquire), 1);
    assert_eq!(kubegate.open_relays(), 1);
    drop(socket);
    nothing_left_open(&double, &kubegate).await;
}

#[tokio::test]
async fn an_apiserver_that_drops_mid_session_closes_the_client() {
    let double = Double::with(Options::default(), Identity::Certificate).await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let (mut socket, _) = open(
        &kubegate,
        &exec_path(&["cat"], true),
        &["v5.channel.k8s.io"],
    )
    .await
    .unwrap();
    eventually("session open", || {
        double
            .server
            .state()
            .stats
            .open_streams
            .load(Ordering::Acquire)
            == 1
    })
    .await;
    let Double { server, .. } = double;
    server.stop().await;
    within("client sees the end", async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    eventually("relay closed in kubegate", || kubegate.open_relays() == 0).await;
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_refused_not_left_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (double, kubegate) = double_with_box().await;
    let mut client = TcpStream::connect(kubegate.address).await.unwrap();
    client
        .write_all(
            b"POST /api/v1/namespaces/default/pods/box/exec?command=cat&stdin=true HTTP/1.1\r\n\
              Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let read = within("the answer", client.read(&mut head)).await.unwrap();
    let head = String::from_utf8_lossy(&head[..read]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("carries no request body"), "{head}");
    nothing_left_open(&double, &kubegate).await;
}
