//! Client connections are bounded whatever clients do: a socket that sends
//! nothing, half an HTTP/2 preface, or nothing after its response is
//! closed at its deadline, a request in flight is never cut, and at
//! `--max-connections` room is made by closing idle connections. (The
//! descriptor limit is in tests/cli.rs, which runs the binary under
//! `prlimit`.)

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: [&str; 2] = [
    "--first-request-timeout=300ms",
    "--client-idle-timeout=300ms",
];

/// Waits until kubegate closes `socket`, reading past what it sends.
async fn closed_by_kubegate(socket: &mut TcpStream) {
    within("kubegate closes the connection", async {
        let mut buffer = [0u8; 4096];
        while let Ok(1..) = socket.read(&mut buffer).await {}
    })
    .await;
}

#[tokio::test]
async fn silent_half_preface_and_idle_connections_are_closed() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &SHORT).await;
    let mut silent = TcpStream::connect(kubegate.address).await.unwrap();
    let mut half_preface = TcpStream::connect(kubegate.address).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut keep_alive = TcpStream::connect(kubegate.address).await.unwrap();
    keep_alive
        .write_all(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // HTTP/2: one request answered, then the connection is left idle.
    let tcp = TcpStream::connect(kubegate.address).await.unwrap();
    let (mut sender, h2) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let h2 = tokio::spawn(h2);
    let request = http::Request::get(kubegate.url("/api"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    drop(answer);
    closed_by_kubegate(&mut silent).await;
    closed_by_kubegate(&mut half_preface).await;
    closed_by_kubegate(&mut keep_alive).await;
    within("the HTTP/2 connection ends", h2)
        .await
        .unwrap()
        .expect("closed with GOAWAY, not reset");
}

#[tokio::test]
async fn a_watch_is_never_cut_for_idleness() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &SHORT).await;
    let mut watch = watch_pods(&double, &kubegate).await;
    // Two idle connections opened one after the other and closed at their
    // deadline: the watch has been open longer than its own would be.
    for _ in 0..2 {
        let mut idle = TcpStream::connect(kubegate.address).await.unwrap();
        closed_by_kubegate(&mut idle).await;
    }
    double.store().create("default", pod("late")).unwrap();
    let event = watch.next().await.expect("the watch is still open");
    assert!(event.contains("\"late\""), "{event}");
}

/// A WebSocket exec of `cat` in the pod `box` (v5 channels).
async fn exec_cat(
    kubegate: &Kubegate,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let path = "/api/v1/namespaces/default/pods/box/exec?command=cat&stdin=true&stdout=true";
    let mut request = kubegate
        .url(path)
        .replace("http", "ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request).await
}

#[tokio::test]
async fn a_relayed_session_holds_a_connection_slot() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--max-connections=2"]).await;
    let exec = || exec_cat(&kubegate);
    let first = exec().await.expect("the first session opens");
    // The first session's slot and this request's connection: none left
    // for a second session.
    match exec().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status(), 503);
            let body =
                String::from_utf8_lossy(refused.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("--max-connections"), "{body}");
        }
        other => panic!("a second session past the limit: {:?}", other.map(|_| ())),
    }
    drop(first);
    eventually("the first session's slot is free", || {
        kubegate.open_relays() == 0
    })
    .await;
    exec()
        .await
        .expect("a session opens once the first has gone");
}

#[tokio::test]
async fn a_session_at_the_limit_makes_room_by_closing_a_silent_socket() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--max-connections=2"]).await;
    let mut silent = TcpStream::connect(kubegate.address).await.unwrap();
    // The silent socket and the exec's connection take both slots; the
    // session's own slot comes from closing the socket that never asked.
    let session = exec_cat(&kubegate).await.expect("the session opens");
    let mut byte = [0u8; 1];
    let closed = within("the silent socket closed", silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(session);
}

/// At `--max-connections`, a flood of ten times the limit in sockets that
/// send nothing or a request head a byte a second (slow loris): kubegate
/// makes room by closing connections with no request in flight, oldest
/// first. A real request is answered, and a watch and an exec opened
/// before the flood go on untouched.
#[tokio::test]
async fn a_flood_of_idle_sockets_past_the_limit_shuts_out_no_real_client() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const LIMIT: usize = 16;
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let limit = format!("--max-connections={LIMIT}");
    let flags = [limit.as_str(), "--admin-address=127.0.0.1:0"];
    let kubegate = Kubegate::start(&double, &flags).await;
    let mut watch = watch_pods(&double, &kubegate).await;
    let (mut exec, _) = exec_cat(&kubegate).await.unwrap();

    // Half the sockets send nothing; the other half trickle a request
    // head, a byte a second, for as long as the test runs (slow loris).
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for i in 0..LIMIT * 10 {
        let socket = TcpStream::connect(kubegate.address).await.unwrap();
        match i % 2 {
            0 => silent.push(socket),
            _ => slow.push(socket),
        }
    }
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        for &byte in b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n" {
            tick.tick().await;
            for socket in &mut slow {
                let _ = socket.write_all(&[byte]).await;
            }
        }
    });

    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 200, "{}", answer.status_message());
    double
        .store()
        .create("default", pod("after-the-flood"))
        .unwrap();
    let event = watch.next().await.expect("the watch is still open");
    assert!(event.contains("\"after-the-flood\""), "{event}");
    exec.send(Message::binary(b"\x00still here".to_vec()))
        .await
        .unwrap();
    // Past the channels' opening frames (a channel byte alone).
    let echoed = within("the exec echoes", async {
        loop {
            let frame = exec.next().await.unwrap().unwrap().into_data();
            if frame.len() > 1 {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(echoed.as_ref(), b"\x01still here");
    let shed = kubegate
        .metric(r#"kubegate_connections_shed_total{reason="no-request"}"#)
        .await;
    assert!(shed.parse::<f64>().unwrap_or(0.0) > 0.0, "shed: {shed:?}");
    trickle.abort();
    drop(silent);
}
