//! Client connections are bounded whatever clients do: a socket that sends
//! nothing, half an HTTP/2 preface, or nothing after its response is
//! closed at its deadline, and a request in flight is never cut. (The
//! descriptor limit and `--max-connections` are in tests/cli.rs, which
//! runs the binary under `prlimit`.)

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

#[tokio::test]
async fn a_relayed_session_holds_a_connection_slot() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--max-connections=2"]).await;
    let exec = || async {
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
    };
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
