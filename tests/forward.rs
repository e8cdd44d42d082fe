//! Forwarding through kubegate to the apiserver double over real mutual
//! TLS: identity, headers, every method, streaming, big bodies, HTTP/2.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use kubegate_double::Options;
use support::*;

#[tokio::test]
async fn kubegate_acts_with_its_client_certificate() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let echo = get(&kubegate.url("/echo")).await;
    assert_eq!(echo.status, 200);
    let echo = echo.json();
    assert_eq!(echo["user"]["username"], "alice");
    assert_eq!(echo["user"]["groups"][0], "devs");
    assert_eq!(
        echo["version"], "HTTP/2.0",
        "kubegate speaks HTTP/2 when the server offers it"
    );
}

#[tokio::test]
async fn kubegate_falls_back_to_http1_when_the_server_has_no_h2() {
    let options = Options {
        http1_only: true,
        ..Options::default()
    };
    let double = Double::with(options, Identity::Certificate).await;
    let kubegate = Kubegate::start(&double, &[]).await;
    for _ in 0..3 {
        let echo = get(&kubegate.url("/echo")).await.json();
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["user"]["username"], "alice");
    }
}

#[tokio::test]
async fn a_bearer_token_from_the_kubeconfig_is_sent() {
    let double = Double::with(Options::default(), Identity::Token).await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let echo = get(&kubegate.url("/echo")).await.json();
    assert_eq!(echo["user"]["username"], "token-user");
}

#[tokio::test]
async fn a_rotated_token_file_is_used_after_the_old_token_is_refused() {
    let options = Options::default();
    let double = Double::with(options, Identity::TokenFile).await;
    let kubegate = Kubegate::start(&double, &[]).await;
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "token-user"
    );
    // The kubelet rotates the token: new file contents, old token revoked.
    std::fs::write(double.path("token"), "token-2\n").unwrap();
    double.server.state().revoke_token("token-1");
    let refused = get(&kubegate.url("/echo")).await;
    assert_eq!(refused.status, 401, "the apiserver's 401 is passed through");
    assert!(refused.status_message().contains("Unauthorized"));
    let echo = get(&kubegate.url("/echo")).await.json();
    assert_eq!(
        echo["user"]["username"], "rotated-user",
        "the next request carries the new token"
    );
}

#[tokio::test]
async fn forwarded_headers_come_from_the_connection_not_the_client() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let echo = call(
        Method::GET,
        &kubegate.url("/echo?x=1&y=%2F"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("authorization", "Bearer stolen"),
            ("impersonate-user", "system:admin"),
            ("impersonate-group", "system:masters"),
            ("x-remote-user", "system:admin"),
            ("x-remote-group", "system:masters"),
            ("x-remote-extra-scopes", "all"),
            (
                "sec-websocket-protocol",
                "base64url.bearer.authorization.k8s.io.c2VjcmV0",
            ),
            ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io"),
            ("accept-encoding", "gzip"),
        ],
        Bytes::new(),
    )
    .await
    .json();
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        headers["x-forwarded-host"],
        serde_json::json!([kubegate.address.to_string()])
    );
    for gone in [
        "x-real-ip",
        "forwarded",
        "authorization",
        "impersonate-user",
        "impersonate-group",
        "x-remote-user",
        "x-remote-group",
        "x-remote-extra-scopes",
        "sec-websocket-protocol",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the apiserver: {headers}"
        );
    }
    assert_eq!(
        headers["accept"][0],
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    );
    assert_eq!(headers["accept-encoding"][0], "gzip");
    assert_eq!(echo["query"], "x=1&y=%2F", "the query is forwarded as sent");
    assert_eq!(
        echo["user"]["username"], "alice",
        "the proxy is the only identity"
    );
}

#[tokio::test]
async fn client_credentials_pass_only_when_a_flag_allows_it() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--forward-client-credentials"]).await;
    let echo = call(
        Method::GET,
        &kubegate.url("/echo"),
        &[
            ("authorization", "Bearer token-2"),
            ("impersonate-user", "bob"),
        ],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(echo["headers"]["authorization"][0], "Bearer token-2");
    assert_eq!(echo["headers"]["impersonate-user"][0], "bob");
}

#[tokio::test]
async fn every_method_is_forwarded_with_its_body() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let echo = call(
            method.clone(),
            &kubegate.url("/echo"),
            &[],
            Bytes::from_static(b"0123456789"),
        )
        .await;
        assert_eq!(echo.status, 200, "{method}");
        let echo = echo.json();
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["bodyBytes"], 10, "{method}");
    }
    let head = call(Method::HEAD, &kubegate.url("/echo"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn pods_are_created_listed_patched_and_deleted() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let url = kubegate.url("/api/v1/namespaces/default/pods");
    let created = call(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        pod("web").to_string(),
    )
    .await;
    assert_eq!(created.status, 201);
    let conflict = call(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        pod("web").to_string(),
    )
    .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["reason"], "AlreadyExists");
    let list = get(&url).await.json();
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    let patched = call(
        Method::PATCH,
        &kubegate.url("/api/v1/namespaces/default/pods/web"),
        &[("content-type", "application/merge-patch+json")],
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    )
    .await
    .json();
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    let deleted = call(
        Method::DELETE,
        &kubegate.url("/api/v1/namespaces/default/pods/web"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, 200);
    let missing = get(&kubegate.url("/api/v1/namespaces/default/pods/web")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["reason"], "NotFound");
}

#[tokio::test]
async fn a_watch_delivers_each_event_while_the_stream_stays_open() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let rv = double.store().resource_version();
    let watch = send(
        Method::GET,
        &kubegate.url(&format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
        )),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(watch.status(), 200);
    let mut events = Lines::new(watch);
    for name in ["one", "two"] {
        double.store().create("default", pod(name)).unwrap();
        let event: serde_json::Value = serde_json::from_str(&events.next().await.unwrap()).unwrap();
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["name"], name);
    }
}

#[tokio::test]
async fn a_followed_log_arrives_line_by_line() {
    let double = Double::start().await;
    double.store().create("default", pod("app")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    double.store().append_log("default", "app", "first");
    let follow = send(
        Method::GET,
        &kubegate.url("/api/v1/namespaces/default/pods/app/log?follow=true"),
        &[],
        Bytes::new(),
    )
    .await;
    let mut lines = Lines::new(follow);
    assert_eq!(lines.next().await.unwrap(), "first");
    double.store().append_log("default", "app", "second");
    assert_eq!(lines.next().await.unwrap(), "second");
}

#[tokio::test]
async fn a_large_body_streams_both_ways() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    const SIZE: u64 = 256 << 20;
    assert_eq!(
        download_length(&kubegate.url(&format!("/bytes?size={SIZE}"))).await,
        SIZE
    );
    assert_eq!(
        upload_mib(&kubegate.url("/echo"), 256).await["bodyBytes"],
        SIZE
    );
}

/// `watches` watches opened at once through kubegate against an apiserver
/// that allows `options.max_concurrent_streams` per connection: every one
/// gets its head and the next event, none queued behind a full connection.
async fn watches_flow_past_a_stream_limit(options: Options, watches: usize) {
    let limit = options.max_concurrent_streams;
    let double = Double::with(options, Identity::Certificate).await;
    let kubegate = Kubegate::start(&double, &[]).await;
    double.store().create("default", pod("seed")).unwrap();
    let rv = double.store().resource_version();
    let url = kubegate.url(&format!(
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
    ));
    // The clients speak HTTP/2 to kubegate too: 4 connections.
    let mut senders = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(kubegate.address)
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    let mut opened = Vec::new();
    for i in 0..watches {
        let mut sender = senders[i % 4].clone();
        let request = http::Request::get(&url)
            .header("host", "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        opened.push(tokio::spawn(async move {
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body()
        }));
    }
    let mut bodies = Vec::new();
    for watch in opened {
        bodies.push(within("watch head", watch).await.unwrap());
    }
    let open = double
        .server
        .state()
        .stats
        .open_watches
        .load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(open, watches);
    let needed = watches.div_ceil(limit as usize);
    assert!(
        kubegate.upstream_connections() >= needed,
        "opened {}",
        kubegate.upstream_connections()
    );
    double
        .store()
        .create("default", pod("everyone-sees-this"))
        .unwrap();
    for body in &mut bodies {
        let frame = within("watch event", body.frame()).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
        assert!(text.contains("everyone-sees-this"), "{text}");
    }
}

#[tokio::test]
async fn a_thousand_watches_flow_past_a_hundred_stream_limit() {
    watches_flow_past_a_stream_limit(streams(100), 1000).await;
}

/// SETTINGS that arrive late, with a limit below what a pool might assume
/// meanwhile: no connection is over-committed while they are on their way.
#[tokio::test]
async fn three_hundred_watches_at_once_flow_past_a_fifty_stream_limit_set_late() {
    let late = Options {
        settings_delay: std::time::Duration::from_millis(300),
        ..streams(50)
    };
    watches_flow_past_a_stream_limit(late, 300).await;
}

#[tokio::test]
async fn a_custom_api_prefix_is_stripped_and_others_are_not_found() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--api-prefix=/k8s"]).await;
    assert_eq!(
        get(&kubegate.url("/k8s/api")).await.json()["kind"],
        "APIVersions"
    );
    let outside = get(&kubegate.url("/api")).await;
    assert_eq!(outside.status, 404);
    assert!(outside.status_message().contains("--api-prefix"));
}

#[tokio::test]
async fn append_server_path_prefixes_every_request() {
    let double = Double::start().await;
    let ca = double.path("ca.crt");
    let (cert, key) = (double.path("alice.crt"), double.path("alice.key"));
    let kubeconfig = double.kubeconfig_with(
        "prefixed",
        &format!("{}/k8s/clusters/c-1", double.server.url()),
        &ca,
        kubegate_double::KubeconfigUser::Certificate {
            cert: &cert,
            key: &key,
        },
    );
    let appended = Kubegate::try_start(&kubeconfig, &["--append-server-path"])
        .await
        .unwrap();
    assert_eq!(
        get(&appended.url("/echo")).await.json()["path"],
        "/k8s/clusters/c-1/echo"
    );
    let plain = Kubegate::try_start(&kubeconfig, &[]).await.unwrap();
    assert_eq!(get(&plain.url("/echo")).await.json()["path"], "/echo");
}

#[tokio::test]
async fn static_files_are_served_under_the_www_prefix() {
    let double = Double::start().await;
    let www = double.path("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "<h1>hello</h1>").unwrap();
    let kubegate = Kubegate::start(&double, &["--www", www.to_str().unwrap()]).await;
    let page = get(&kubegate.url("/static/")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(&page.body[..], b"<h1>hello</h1>");
    assert_eq!(get(&kubegate.url("/static/index.html")).await.status, 200);
    assert_eq!(
        get(&kubegate.url("/static/../kubeconfig")).await.status,
        400
    );
    assert_eq!(get(&kubegate.url("/static/missing.js")).await.status, 404);
    // A DNS-rebinding page (any other Host) cannot read the files either.
    let rebound = call(
        Method::GET,
        &kubegate.url("/static/index.html"),
        &[("host", "attacker.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(rebound.status, 403);
    assert!(rebound.status_message().contains("--accept-hosts"));
    assert_eq!(
        get(&kubegate.url("/api")).await.json()["kind"],
        "APIVersions"
    );
}

#[tokio::test]
async fn connect_to_the_api_is_refused_with_405() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let answer = call(Method::CONNECT, &kubegate.url("/api"), &[], Bytes::new()).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.json()["reason"], "MethodNotAllowed");
    assert!(answer.status_message().contains("CONNECT"));
}
