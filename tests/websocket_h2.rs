//! WebSockets over HTTP/2 (RFC 8441) on kubegate's TLS port: many exec
//! and port-forward sessions share one client connection, each an
//! extended `CONNECT` stream.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// One HTTP/2 connection to kubegate's TLS port.
async fn connect(double: &Double, kubegate: &Kubegate) -> SendRequest<Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(double.pki.ca_pem().as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(kubegate.address)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    // Extended CONNECT waits on the server's SETTINGS: an ordinary request
    // first brings them.
    let version = Request::get(kubegate_url(kubegate, "/version"))
        .body(Empty::new())
        .unwrap();
    let answer = within("GET /version", sender.send_request(version))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    sender
}

fn kubegate_url(kubegate: &Kubegate, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", kubegate.address.port())
}

/// Opens a WebSocket on a new stream of `sender`.
async fn websocket(
    sender: &mut SendRequest<Empty<Bytes>>,
    url: String,
    protocol: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(url)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", protocol)
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = within("extended CONNECT", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
    let io = hyper::upgrade::on(&mut response).await.unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await
}

#[tokio::test]
async fn a_hundred_exec_sessions_and_twenty_port_forwards_share_one_connection() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start_tls(&double, &[]).await;
    let sender = connect(&double, &kubegate).await;
    let execs = (0..100).map(|i| {
        let mut sender = sender.clone();
        let url = kubegate_url(
            &kubegate,
            &format!(
                "/api/v1/namespaces/default/pods/box/exec?command=echo&command=hi-{i}&stdout=true"
            ),
        );
        async move {
            let mut socket = websocket(&mut sender, url, "v5.channel.k8s.io").await;
            let mut stdout = Vec::new();
            while let Some(Ok(message)) = socket.next().await {
                match message {
                    Message::Binary(data) if data.first() == Some(&1) => {
                        stdout.extend_from_slice(&data[1..]);
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            assert_eq!(String::from_utf8(stdout).unwrap(), format!("hi-{i}\n"));
        }
    });
    within("100 exec sessions", futures_util::future::join_all(execs)).await;

    let echo = EchoServer::start().await;
    let forwards = (0..20).map(|i| {
        let mut sender = sender.clone();
        let url = kubegate_url(
            &kubegate,
            &format!(
                "/api/v1/namespaces/default/pods/box/portforward?ports={}",
                echo.port
            ),
        );
        async move {
            let mut socket = websocket(&mut sender, url, "v4.channel.k8s.io").await;
            for _ in 0..2 {
                socket.next().await.unwrap().unwrap(); // the port prefixes
            }
            let payload = format!("port-forward {i} over HTTP/2");
            let mut frame = vec![0u8];
            frame.extend_from_slice(payload.as_bytes());
            socket.send(Message::binary(frame)).await.unwrap();
            let mut echoed = Vec::new();
            while echoed.len() < payload.len() {
                let data = socket.next().await.unwrap().unwrap().into_data();
                assert_eq!(data[0], 0);
                echoed.extend_from_slice(&data[1..]);
            }
            assert_eq!(echoed, payload.as_bytes());
            socket.close(None).await.unwrap();
        }
    });
    within("20 port-forwards", futures_util::future::join_all(forwards)).await;

    // One client connection, and kubegate's own count says so.
    assert_eq!(double.port_forward_sessions(), 1);
    assert_eq!(
        kubegate
            .metric("kubegate_websockets_over_http2_total")
            .await,
        "120"
    );
}
