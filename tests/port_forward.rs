//! Multiplexed port-forward: WebSocket port-forwards answered by kubegate
//! and carried as stream pairs on one shared upstream session per pod,
//! driven frame by frame by a test client; the double's counter shows how
//! many upstream sessions (kubelet dials) they cost.

mod support;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use kubegate_double::Options;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

type Socket = WebSocketStream<TcpStream>;

const BINARY: &str = "v4.channel.k8s.io";
const BASE64: &str = "v4.base64.channel.k8s.io";

async fn with_box(flags: &[&str]) -> (Double, Kubegate) {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, flags).await;
    (double, kubegate)
}

/// Opens a port-forward WebSocket to `ports` of pod `box`.
async fn open(kubegate: &Kubegate, protocol: &str, ports: &[u16]) -> Socket {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let path = format!(
        "/api/v1/namespaces/default/pods/box/portforward?ports={}",
        list.join(",")
    );
    let mut request = format!("ws://{}{path}", kubegate.address)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let tcp = TcpStream::connect(kubegate.address).await.unwrap();
    let (socket, response) = within("websocket handshake", client_async(request, tcp))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
    socket
}

fn encode(protocol: &str, channel: u8, data: &[u8]) -> Message {
    if protocol == BASE64 {
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        Message::text(format!("{channel}{text}"))
    } else {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    }
}

/// The next message's channel and bytes; `None` at close.
async fn next(socket: &mut Socket, protocol: &str) -> Option<(u8, Vec<u8>)> {
    match within("a port-forward message", socket.next()).await? {
        Ok(Message::Binary(data)) if protocol != BASE64 => Some((data[0], data[1..].to_vec())),
        Ok(Message::Text(text)) if protocol == BASE64 => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(&text.as_str()[1..])
                .unwrap();
            Some((text.as_bytes()[0] - b'0', data))
        }
        Ok(Message::Close(_)) | Err(_) => None,
        Ok(other) => panic!("unexpected message {other:?}"),
    }
}

/// Reads the port prefix kubelets send on both channels of each port.
async fn read_prefixes(socket: &mut Socket, protocol: &str, ports: &[u16]) {
    for (index, port) in ports.iter().enumerate() {
        for channel in [index as u8 * 2, index as u8 * 2 + 1] {
            let (got, data) = next(socket, protocol).await.unwrap();
            assert_eq!((got, data), (channel, port.to_le_bytes().to_vec()));
        }
    }
}

/// One forwarded connection: `payload` out, its echo back, byte for byte.
async fn round_trip(kubegate: &Kubegate, protocol: &str, port: u16, payload: &[u8]) {
    let mut socket = open(kubegate, protocol, &[port]).await;
    read_prefixes(&mut socket, protocol, &[port]).await;
    for chunk in payload.chunks(32 * 1024) {
        socket.send(encode(protocol, 0, chunk)).await.unwrap();
    }
    let mut echoed = Vec::with_capacity(payload.len());
    while echoed.len() < payload.len() {
        let (channel, data) = next(&mut socket, protocol).await.expect("the echo");
        assert_eq!(channel, 0, "{}", String::from_utf8_lossy(&data));
        echoed.extend_from_slice(&data);
    }
    assert!(echoed == payload, "the echo differs from what was sent");
    socket.close(None).await.unwrap();
}

fn payload(seed: usize, length: usize) -> Vec<u8> {
    (0..length).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

#[tokio::test]
async fn seventy_connections_to_one_pod_cost_one_upstream_session() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    for (i, protocol) in (0..50).zip([BINARY, BASE64].into_iter().cycle()) {
        round_trip(&kubegate, protocol, echo.port, &payload(i, 1000 + i * 997)).await;
    }
    let concurrent = (0..20).map(|i| {
        let kubegate = &kubegate;
        async move { round_trip(kubegate, BINARY, echo.port, &payload(i, 64 * 1024 + i)).await }
    });
    futures_util::future::join_all(concurrent).await;
    assert_eq!(double.port_forward_sessions(), 1);
}

#[tokio::test]
async fn several_ports_in_one_websocket_each_get_their_pair() {
    let (double, kubegate) = with_box(&[]).await;
    let (one, two) = (EchoServer::start().await, EchoServer::start().await);
    let ports = [one.port, two.port];
    let mut socket = open(&kubegate, BINARY, &ports).await;
    read_prefixes(&mut socket, BINARY, &ports).await;
    socket.send(encode(BINARY, 0, b"to one")).await.unwrap();
    socket.send(encode(BINARY, 2, b"to two")).await.unwrap();
    let mut heard = Vec::new();
    while heard.len() < 2 {
        heard.push(next(&mut socket, BINARY).await.unwrap());
    }
    heard.sort();
    assert_eq!(
        heard,
        vec![(0, b"to one".to_vec()), (2, b"to two".to_vec())]
    );
    assert_eq!(double.port_forward_sessions(), 1);
}

#[tokio::test]
async fn a_closed_port_gets_the_kubelets_error_and_the_session_keeps_serving() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    round_trip(&kubegate, BINARY, echo.port, b"first").await;
    let closed = free_port();
    let mut socket = open(&kubegate, BINARY, &[closed]).await;
    read_prefixes(&mut socket, BINARY, &[closed]).await;
    let mut error = Vec::new();
    while let Some((channel, data)) = next(&mut socket, BINARY).await {
        assert_eq!(channel, 1, "only the error channel speaks");
        error.extend_from_slice(&data);
    }
    let error = String::from_utf8(error).unwrap();
    assert!(
        error.contains(&format!("error forwarding port {closed} to pod")),
        "{error}"
    );
    round_trip(&kubegate, BINARY, echo.port, b"after the error").await;
    assert_eq!(double.port_forward_sessions(), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_up_another_on_the_same_pod() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    // The stalled client sends 16 MiB to the echo and reads nothing.
    let mut stalled = open(&kubegate, BINARY, &[echo.port]).await;
    read_prefixes(&mut stalled, BINARY, &[echo.port]).await;
    let (mut stalled_sink, mut stalled_stream) = stalled.split();
    let sending = tokio::spawn(async move {
        for _ in 0..256 {
            if stalled_sink
                .send(encode(BINARY, 0, &[7u8; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
        stalled_sink
    });
    // Meanwhile another client keeps moving.
    for i in 0..20 {
        round_trip(&kubegate, BINARY, echo.port, &payload(i, 10_000)).await;
    }
    assert_eq!(double.port_forward_sessions(), 1);
    // When the stalled client reads at last: the echo it was due, in
    // order and whole up to the cut, then why its stream was reset.
    let mut received = 0usize;
    let mut error = String::new();
    while let Some(Ok(message)) =
        within("the stalled client's messages", stalled_stream.next()).await
    {
        let Message::Binary(data) = message else {
            break;
        };
        match data[0] {
            0 => {
                assert!(data[1..].iter().all(|b| *b == 7));
                received += data.len() - 1;
            }
            1 => error.push_str(&String::from_utf8_lossy(&data[1..])),
            other => panic!("channel {other}"),
        }
    }
    assert!(error.contains("left 1024 KiB unread"), "{error:?}");
    assert!(received > 0 && received < 16 << 20, "{received}");
    drop(within("the stalled sender", sending).await);
    round_trip(&kubegate, BINARY, echo.port, b"still serving").await;
}

#[tokio::test]
async fn an_idle_session_closes_and_the_next_client_gets_a_fresh_one() {
    let (double, kubegate) = with_box(&[
        "--port-forward-idle-timeout=200ms",
        "--admin-address=127.0.0.1:0",
    ])
    .await;
    let echo = EchoServer::start().await;
    round_trip(&kubegate, BINARY, echo.port, b"one").await;
    assert_eq!(
        kubegate
            .metric("kubegate_port_forward_sessions_opened_total")
            .await,
        "1"
    );
    // The double sees the session end when kubegate closes it.
    let open = &double.server.state().stats.open_streams;
    eventually("the idle session to close", || {
        open.load(std::sync::atomic::Ordering::Acquire) == 0
    })
    .await;
    round_trip(&kubegate, BINARY, echo.port, b"two").await;
    assert_eq!(double.port_forward_sessions(), 2);
    for counter in ["streams_opened_total", "clients_total"] {
        let name = format!("kubegate_port_forward_{counter}");
        assert_eq!(kubegate.metric(&name).await, "2", "{name}");
    }
}

#[tokio::test]
async fn without_multiplexing_each_port_forward_is_its_own_upstream_session() {
    let (double, kubegate) = with_box(&["--port-forward-multiplex=false"]).await;
    let echo = EchoServer::start().await;
    for i in 0..5 {
        round_trip(&kubegate, BINARY, echo.port, &payload(i, 5000)).await;
    }
    assert_eq!(double.port_forward_sessions(), 5);
}

/// A port-forward WebSocket to `path` that kubegate or the apiserver
/// refuses: the refusal.
async fn refused(kubegate: &Kubegate, path: &str) -> http::Response<Option<Vec<u8>>> {
    let mut request = format!("ws://{}{path}", kubegate.address)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", BINARY.parse().unwrap());
    let tcp = TcpStream::connect(kubegate.address).await.unwrap();
    match client_async(request, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => *response,
        other => panic!("{path} was not refused: {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn a_port_forward_without_ports_is_refused_with_a_status() {
    let (_double, kubegate) = with_box(&[]).await;
    let response = refused(&kubegate, "/api/v1/namespaces/default/pods/box/portforward").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
    assert_eq!(body["reason"], "BadRequest");
    assert!(body["message"].as_str().unwrap().contains("\"ports\""));
}

#[tokio::test]
async fn a_missing_pod_gets_the_apiservers_answer() {
    let (_double, kubegate) = with_box(&[]).await;
    let path = "/api/v1/namespaces/default/pods/nobody/portforward?ports=80";
    assert_eq!(refused(&kubegate, path).await.status(), 404);
}

#[tokio::test]
async fn clients_of_a_session_the_apiserver_drops_hear_why_and_the_next_gets_a_new_one() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    let mut socket = open(&kubegate, BINARY, &[echo.port]).await;
    read_prefixes(&mut socket, BINARY, &[echo.port]).await;
    socket.send(encode(BINARY, 0, b"before")).await.unwrap();
    assert_eq!(
        next(&mut socket, BINARY).await,
        Some((0, b"before".to_vec()))
    );
    // As an apiserver restart would: every session cut.
    double.server.state().cut_streams();
    // The client hears why on its error channel, then a close: never
    // silence.
    let mut error = String::new();
    while let Some((channel, data)) = next(&mut socket, BINARY).await {
        assert_eq!(channel, 1, "{}", String::from_utf8_lossy(&data));
        error.push_str(&String::from_utf8_lossy(&data));
    }
    assert!(error.contains("port-forward session"), "{error:?}");
    round_trip(&kubegate, BINARY, echo.port, b"after").await;
    assert_eq!(double.port_forward_sessions(), 2);
}

#[tokio::test]
async fn an_apiserver_that_refuses_the_tunnel_gets_raw_spdy() {
    let options = Options {
        refuse_spdy_tunnel: true,
        ..Options::default()
    };
    let double = Double::with(options, Identity::Certificate).await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let echo = EchoServer::start().await;
    for i in 0..5 {
        round_trip(&kubegate, BASE64, echo.port, &payload(i, 3000)).await;
    }
    // The refused tunnel and the raw session that replaced it; then no
    // more.
    assert_eq!(double.port_forward_sessions(), 2);
}

/// A gateway before the apiserver that passes WebSockets but no SPDY:
/// kubegate relays each client's own WebSocket, as kubectl proxy does,
/// once both SPDY forms have been refused; a missing pod is still the
/// apiserver's 404.
#[tokio::test]
async fn an_apiserver_that_takes_no_spdy_gets_each_clients_own_websocket() {
    let options = Options {
        refuse_spdy: true,
        ..Options::default()
    };
    let double = Double::with(options, Identity::Certificate).await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--admin-address=127.0.0.1:0"]).await;
    let path = "/api/v1/namespaces/default/pods/nobody/portforward?ports=80";
    assert_eq!(refused(&kubegate, path).await.status(), 404);
    let echo = EchoServer::start().await;
    for i in 0..3 {
        round_trip(&kubegate, BINARY, echo.port, &payload(i, 3000)).await;
    }
    // The first client's refused tunnel and raw SPDY (a 404 is counted
    // by no one), then one relayed WebSocket per client.
    assert_eq!(double.port_forward_sessions(), 2 + 3);
    let relayed = kubegate.metric("kubegate_port_forward_relayed_total").await;
    assert_eq!(relayed, "3");
    assert_eq!(refused(&kubegate, path).await.status(), 404);
}

#[tokio::test]
async fn a_bulk_transfer_both_ways_at_once_completes_byte_exact() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    let mut socket = open(&kubegate, BINARY, &[echo.port]).await;
    read_prefixes(&mut socket, BINARY, &[echo.port]).await;
    let (mut sink, mut stream) = socket.split();
    // 64 MiB, far past the 1 MiB budget: the client sends and reads at
    // once, so nothing may wait on anything but the other end.
    let total = 64usize << 20;
    let sending = tokio::spawn(async move {
        let chunk = payload(3, 64 * 1024);
        for _ in 0..total / chunk.len() {
            sink.send(encode(BINARY, 0, &chunk)).await.unwrap();
        }
        sink
    });
    let expected = payload(3, 64 * 1024);
    let mut received = 0usize;
    while received < total {
        let message = within("the echo", stream.next()).await.unwrap().unwrap();
        let data = message.into_data();
        assert_eq!(data[0], 0, "{}", String::from_utf8_lossy(&data[1..]));
        for (i, byte) in data[1..].iter().enumerate() {
            assert_eq!(*byte, expected[(received + i) % expected.len()]);
        }
        received += data.len() - 1;
    }
    let mut sink = within("the sender", sending).await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(double.port_forward_sessions(), 1);
}

/// A TCP server that reads one connection to its end and reports how many
/// bytes came.
async fn counting_sink() -> (u16, tokio::sync::oneshot::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (report, counted) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut all).await;
        let _ = report.send(all.len());
    });
    (port, counted)
}

#[tokio::test]
async fn what_a_client_sends_just_before_it_closes_reaches_the_pod() {
    let (_double, kubegate) = with_box(&[]).await;
    let (port, counted) = counting_sink().await;
    let mut socket = open(&kubegate, BINARY, &[port]).await;
    read_prefixes(&mut socket, BINARY, &[port]).await;
    for _ in 0..64 {
        socket
            .send(encode(BINARY, 0, &[1u8; 64 * 1024]))
            .await
            .unwrap();
    }
    socket.close(None).await.unwrap();
    assert_eq!(within("the pod's count", counted).await.unwrap(), 4 << 20);
}

#[tokio::test]
async fn a_message_larger_than_a_spdy_frame_is_carried_whole() {
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    let mut socket = open(&kubegate, BINARY, &[echo.port]).await;
    read_prefixes(&mut socket, BINARY, &[echo.port]).await;
    // One WebSocket message past SPDY's 24-bit frame length, in two
    // fragments (a single WebSocket frame may not be that long).
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let sent = payload(9, 18 << 20);
    let (first, rest) = sent.split_at(10 << 20);
    let mut opening = vec![0u8];
    opening.extend_from_slice(first);
    let fragments = [
        Frame::message(opening, OpCode::Data(Data::Binary), false),
        Frame::message(rest.to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for fragment in fragments {
        socket.send(Message::Frame(fragment)).await.unwrap();
    }
    let mut echoed = Vec::with_capacity(sent.len());
    while echoed.len() < sent.len() {
        let (channel, data) = next(&mut socket, BINARY).await.expect("the echo");
        assert_eq!(channel, 0, "{}", String::from_utf8_lossy(&data));
        echoed.extend_from_slice(&data);
    }
    assert!(echoed == sent, "the echo differs from what was sent");
    // The session still carries others.
    round_trip(&kubegate, BINARY, echo.port, b"after").await;
    assert_eq!(double.port_forward_sessions(), 1);
}

#[tokio::test]
async fn a_session_whose_every_connection_fails_is_replaced() {
    // As when the pod was recreated under the same name: the kubelet
    // reports an error for every connection on the old session.
    let (double, kubegate) = with_box(&[]).await;
    let echo = EchoServer::start().await;
    round_trip(&kubegate, BINARY, echo.port, b"first").await;
    for _ in 0..3 {
        let closed = free_port();
        let mut socket = open(&kubegate, BINARY, &[closed]).await;
        read_prefixes(&mut socket, BINARY, &[closed]).await;
        while let Some((channel, _)) = next(&mut socket, BINARY).await {
            assert_eq!(channel, 1);
        }
    }
    round_trip(&kubegate, BINARY, echo.port, b"on a new session").await;
    assert_eq!(double.port_forward_sessions(), 2);
}
