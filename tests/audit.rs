//! The audit trail: events that Kubernetes tooling can read (checked by an
//! independent reader against the project's schema), one `ResponseComplete`
//! per request under load and rotation, what only the proxy knows, failure
//! modes, the webhook backend, and no secrets.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use support::*;

/// The log file and its rotated backups, oldest first.
fn log_files(log: &Path) -> Vec<PathBuf> {
    let dir = log.parent().unwrap();
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p != log
                && p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("audit-")
        })
        .collect();
    backups.sort();
    backups.push(log.to_path_buf());
    backups
}

fn events(log: &Path) -> Vec<Value> {
    log_files(log)
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks every event with the Python validator (an independent reader).
async fn validate(log: &Path) -> String {
    let python = "python3";
    let probe = std::process::Command::new(python)
        .args(["-c", "import jsonschema"])
        .output();
    assert!(
        probe.map(|o| o.status.success()).unwrap_or(false),
        "the Python jsonschema package is missing; pip install jsonschema (scripts/test installs it)"
    );
    let mut command = tokio::process::Command::new(python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/validate_audit.py"
        ))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/audit-event.schema.json"
        ))
        .args(log_files(log));
    let output = within("validator", command.output()).await.unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{printed}");
    printed
}

fn of<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["auditID"] == id).collect()
}

#[tokio::test]
async fn events_read_like_the_apiservers_and_join_on_the_audit_id() {
    let double = Double::start().await;
    let log = double.path("audit/audit.log");
    let kubegate = Kubegate::start(
        &double,
        &[
            "--audit-log-path",
            log.to_str().unwrap(),
            "--reject-paths=^/api/v1/namespaces/[^/]+/secrets",
        ],
    )
    .await;

    let listed = call(
        Method::GET,
        &kubegate.url("/api/v1/namespaces/default/pods"),
        &[("audit-id", "client-id"), ("user-agent", "test/1.0")],
        Bytes::new(),
    )
    .await;
    assert_eq!(listed.status, 200);
    let id = listed.headers["audit-id"].to_str().unwrap().to_string();
    // `Connection: Audit-ID` would make a hop-by-hop header of it.
    let echo = call(
        Method::POST,
        &kubegate.url("/echo"),
        &[("audit-id", "client-id"), ("connection", "Audit-ID")],
        Bytes::new(),
    )
    .await;
    let echo_id = echo.headers["audit-id"].to_str().unwrap().to_string();
    assert_eq!(
        echo.json()["headers"]["audit-id"][0],
        echo_id,
        "kubegate's audit ID goes upstream"
    );
    let refused = get(&kubegate.url("/api/v1/namespaces/default/secrets")).await;
    assert_eq!(refused.status, 403);
    let refused_id = refused.headers["audit-id"].to_str().unwrap().to_string();
    let created = call(
        Method::POST,
        &kubegate.url("/api/v1/namespaces/default/pods"),
        &[],
        pod("audited").to_string(),
    )
    .await;
    assert_eq!(created.status, 201);
    kubegate.shutdown().await;

    let all = events(&log);
    let list = of(&all, &id);
    assert_eq!(
        list.iter()
            .map(|e| e["stage"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["RequestReceived", "ResponseComplete"]
    );
    let complete = list[1];
    assert_eq!(complete["kind"], "Event");
    assert_eq!(complete["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(complete["level"], "Metadata");
    assert_eq!(complete["verb"], "list");
    assert_eq!(complete["requestURI"], "/api/v1/namespaces/default/pods");
    assert_eq!(
        complete["user"]["username"], "alice",
        "the identity kubegate acts as (SelfSubjectReview)"
    );
    assert_eq!(complete["user"]["groups"][0], "devs");
    assert_eq!(complete["sourceIPs"][0], "127.0.0.1");
    assert_eq!(complete["userAgent"], "test/1.0");
    assert_eq!(complete["objectRef"]["resource"], "pods");
    assert_eq!(complete["objectRef"]["namespace"], "default");
    assert_eq!(complete["responseStatus"]["code"], 200);
    assert_eq!(
        complete["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert_eq!(
        complete["annotations"]["kubegate.io/client-audit-id"],
        "client-id"
    );
    assert!(
        complete["annotations"]["kubegate.io/client"]
            .as_str()
            .unwrap()
            .starts_with("tcp 127.0.0.1:")
    );

    let refusal = of(&all, &refused_id);
    let last = refusal.last().unwrap();
    assert_eq!(last["responseStatus"]["code"], 403);
    assert_eq!(
        last["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert!(
        last["annotations"]["authorization.k8s.io/reason"]
            .as_str()
            .unwrap()
            .contains("--reject-paths")
    );
    assert!(validate(&log).await.contains("events valid"));
}

#[tokio::test]
async fn escaped_spellings_and_an_api_prefix_are_audited_as_the_apiserver_reads_them() {
    let double = Double::start().await;
    double.store().create("default", pod("busybox")).unwrap();
    let log = double.path("audit.log");
    let kubegate = Kubegate::start(
        &double,
        &[
            "--api-prefix=/k8s/",
            "--audit-log-path",
            log.to_str().unwrap(),
        ],
    )
    .await;
    // (method, path as sent, verb, resource, subresource, name)
    let cases = [
        (
            "GET",
            "/k8s/%61pi/v1/namespaces/default/pods",
            "list",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/k8s/api/v1/namespaces/default/pods/%62usybox/l%6Fg",
            "get",
            "pods",
            "log",
            "busybox",
        ),
        (
            "DELETE",
            "/k8s/api/v1/namespaces/default/p%6Fds/busybox",
            "delete",
            "pods",
            "",
            "busybox",
        ),
    ];
    for (method, path, ..) in cases {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = send(method, &kubegate.url(path), &[], Bytes::new()).await;
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        http_body_util::BodyExt::collect(answer.into_body())
            .await
            .unwrap();
    }
    assert!(
        double.store().get("default", "busybox").is_none(),
        "the DELETE deleted"
    );
    kubegate.shutdown().await;
    let all = events(&log);
    for (_, path, verb, resource, subresource, name) in cases {
        let event = all
            .iter()
            .find(|e| e["requestURI"] == path && e["stage"] == "ResponseComplete")
            .unwrap_or_else(|| panic!("no event for {path}"));
        assert_eq!(event["verb"], verb, "{event}");
        let object = &event["objectRef"];
        assert_eq!(object["resource"], resource, "{event}");
        assert_eq!(object["namespace"], "default", "{event}");
        assert_eq!(
            object["subresource"].as_str().unwrap_or(""),
            subresource,
            "{event}"
        );
        assert_eq!(object["name"].as_str().unwrap_or(""), name, "{event}");
    }
}

#[tokio::test]
async fn a_policy_selects_levels_bodies_and_stages() {
    let double = Double::start().await;
    let log = double.path("audit.log");
    let policy = double.path("policy.yaml");
    std::fs::write(
        &policy,
        r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["/version"]
  - level: RequestResponse
    verbs: ["create"]
    resources: [{ group: "", resources: ["pods"] }]
  - level: Metadata
"#,
    )
    .unwrap();
    let kubegate = Kubegate::start(
        &double,
        &[
            "--audit-log-path",
            log.to_str().unwrap(),
            "--audit-policy-file",
            policy.to_str().unwrap(),
            "--audit-max-body-bytes",
            "2048",
        ],
    )
    .await;
    get(&kubegate.url("/version")).await;
    let created = call(
        Method::POST,
        &kubegate.url("/api/v1/namespaces/default/pods"),
        &[],
        pod("small").to_string(),
    )
    .await;
    let created_id = created.headers["audit-id"].to_str().unwrap().to_string();
    let mut big = pod("big");
    big["metadata"]["annotations"] = serde_json::json!({ "padding": "x".repeat(4096) });
    let large = call(
        Method::POST,
        &kubegate.url("/api/v1/namespaces/default/pods"),
        &[],
        big.to_string(),
    )
    .await;
    let large_id = large.headers["audit-id"].to_str().unwrap().to_string();
    kubegate.shutdown().await;

    let all = events(&log);
    assert!(
        all.iter().all(|e| e["requestURI"] != "/version"),
        "level None writes nothing"
    );
    assert!(
        all.iter().all(|e| e["stage"] != "RequestReceived"),
        "omitted stage"
    );
    let small = of(&all, &created_id);
    assert_eq!(small.len(), 1);
    assert_eq!(small[0]["level"], "RequestResponse");
    assert_eq!(small[0]["requestObject"]["metadata"]["name"], "small");
    assert_eq!(
        small[0]["responseObject"]["metadata"]["namespace"],
        "default"
    );
    let large = of(&all, &large_id);
    assert!(large[0].get("requestObject").is_none());
    assert!(
        large[0]["annotations"]["kubegate.io/request-body"]
            .as_str()
            .unwrap()
            .starts_with("truncated")
    );
    validate(&log).await;
}

#[tokio::test]
async fn a_watch_gets_response_started_then_complete_when_it_ends() {
    let double = Double::start().await;
    let log = double.path("audit.log");
    let kubegate = Kubegate::start(&double, &["--audit-log-path", log.to_str().unwrap()]).await;
    let watch = send(
        Method::GET,
        &kubegate.url("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1"),
        &[],
        Bytes::new(),
    )
    .await;
    let id = watch.headers()["audit-id"].to_str().unwrap().to_string();
    http_body_util::BodyExt::collect(watch.into_body())
        .await
        .unwrap();
    kubegate.shutdown().await;
    let all = events(&log);
    let stages: Vec<_> = of(&all, &id)
        .iter()
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stages,
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
    assert_eq!(of(&all, &id)[1]["verb"], "watch");
}

#[tokio::test]
async fn requests_their_clients_give_up_on_still_complete() {
    use tokio::io::AsyncWriteExt;
    let double = Double::start().await;
    let log = double.path("audit.log");
    let kubegate = Kubegate::start(&double, &["--audit-log-path", log.to_str().unwrap()]).await;
    let requests = &double.server.state().stats.requests;
    // Counted from here: kubegate's own start-up request is not one of them.
    let before = requests.load(Ordering::Acquire);
    let reached = || requests.load(Ordering::Acquire) - before;
    let slow = kubegate.url("/faults/slow?ms=60000");
    // HTTP/2: 300 streams sent upstream, then reset by their client.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let streams: Vec<_> = (0..300)
        .map(|_| tokio::spawn(h2.get(slow.parse().unwrap())))
        .collect();
    eventually("300 streams reach the apiserver", || reached() >= 300).await;
    for stream in streams {
        stream.abort();
    }
    // HTTP/1.1: a client that hangs up while its request is upstream.
    let mut tcp = tokio::net::TcpStream::connect(kubegate.address)
        .await
        .unwrap();
    tcp.write_all(b"GET /faults/slow?ms=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    eventually("the HTTP/1.1 request reaches the apiserver", || {
        reached() >= 301
    })
    .await;
    drop(tcp);
    let completes = || {
        events(&log)
            .into_iter()
            .filter(|e| e["stage"] == "ResponseComplete")
            .collect::<Vec<_>>()
    };
    eventually("301 ResponseComplete events", || completes().len() == 301).await;
    for event in completes() {
        assert_eq!(
            event["annotations"]["kubegate.io/response"], "ended before the response",
            "{event}"
        );
        assert_eq!(event["responseStatus"]["code"], 499, "{event}");
    }
    validate(&log).await;
}

#[tokio::test]
async fn an_exec_session_records_command_subprotocol_duration_and_bytes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let log = double.path("audit.log");
    let kubegate = Kubegate::start(&double, &["--audit-log-path", log.to_str().unwrap()]).await;
    let path = "/api/v1/namespaces/default/pods/box/exec?container=main&command=cat&stdin=true&stdout=true";
    let mut request = format!("ws://{}{path}", kubegate.address)
        .into_client_request()
        .unwrap();
    let token = "base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu";
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("v5.channel.k8s.io, {token}").parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(kubegate.address)
        .await
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let id = response.headers()["audit-id"].to_str().unwrap().to_string();
    let payload = vec![7u8; 10_000];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&payload);
    socket.send(Message::binary(frame)).await.unwrap();
    socket.send(Message::binary(vec![255u8, 0])).await.unwrap();
    while let Some(Ok(message)) = within("session", socket.next()).await {
        if message.is_close() {
            break;
        }
    }
    drop(socket);
    eventually("relay closed", || kubegate.open_relays() == 0).await;
    kubegate.shutdown().await;

    let all = events(&log);
    let session = of(&all, &id);
    let stages: Vec<_> = session
        .iter()
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
    let complete = session[2];
    assert_eq!(complete["verb"], "create");
    assert_eq!(complete["objectRef"]["subresource"], "exec");
    assert_eq!(complete["responseStatus"]["code"], 101);
    let notes = &complete["annotations"];
    assert_eq!(notes["kubegate.io/command"], "[\"cat\"]");
    assert_eq!(notes["kubegate.io/container"], "main");
    assert_eq!(
        notes["kubegate.io/subprotocol"],
        "websocket v5.channel.k8s.io"
    );
    assert!(
        notes["kubegate.io/duration"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );
    let to_server: u64 = notes["kubegate.io/bytes-to-server"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let to_client: u64 = notes["kubegate.io/bytes-to-client"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(to_server > 10_000, "{to_server}");
    assert!(to_client > 10_000, "{to_client}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("c2VjcmV0LXRva2Vu") && !text.contains("secret-token"),
        "a token reached the audit log"
    );
    validate(&log).await;
}

#[tokio::test]
async fn twenty_thousand_requests_each_complete_once_across_rotated_files() {
    let double = Double::start().await;
    let dir = double.path("rotating");
    let log = dir.join("audit.log");
    let kubegate = Kubegate::start(
        &double,
        &[
            "--audit-log-path",
            log.to_str().unwrap(),
            "--audit-log-maxsize",
            "1",
            "--audit-log-maxbackup",
            "0",
        ],
    )
    .await;
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(20_000)));
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..64).map(|_| {
        let (ids, next) = (ids.clone(), next.clone());
        let url = kubegate.url("/api");
        tokio::spawn(async move {
            let client = client();
            while next.fetch_add(1, Ordering::Relaxed) < 20_000 {
                let request = http::Request::get(&url)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let id = response.headers()["audit-id"].to_str().unwrap().to_string();
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                ids.lock().unwrap().push(id);
            }
        })
    });
    within("load", futures_util::future::join_all(workers)).await;
    kubegate.shutdown().await;

    let files = log_files(&log);
    assert!(files.len() > 5, "the log rotated: {} files", files.len());
    let mut completes = std::collections::HashMap::new();
    for event in events(&log)
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
    {
        *completes
            .entry(event["auditID"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap());
    assert_eq!(ids.len(), 20_000);
    assert_eq!(completes.len(), 20_000, "one ResponseComplete per request");
    assert!(ids.iter().all(|id| completes.get(id) == Some(&1)));
    validate(&log).await;
}

#[tokio::test]
async fn an_unwritable_log_refuses_requests_or_continues_as_the_flag_says() {
    let double = Double::start().await;
    let refusing = Kubegate::start(&double, &["--audit-log-path", "/dev/full"]).await;
    get(&refusing.url("/api")).await;
    let mut answer = get(&refusing.url("/api")).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
    within("refusal", async {
        while answer.status != 503 {
            tick.tick().await;
            answer = get(&refusing.url("/api")).await;
        }
    })
    .await;
    assert!(answer.status_message().contains("--audit-failure"));

    let continuing = Kubegate::start(
        &double,
        &[
            "--audit-log-path",
            "/dev/full",
            "--audit-failure",
            "continue",
        ],
    )
    .await;
    for _ in 0..20 {
        assert_eq!(get(&continuing.url("/api")).await.status, 200);
    }

    let error = Kubegate::try_start(
        &double.kubeconfig,
        &["--audit-log-path", "/dev/null/audit.log"],
    )
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("/dev/null/audit.log"), "{error}");
}

/// A TLS collector for the webhook backend, counting the events it gets;
/// with a `limit`, it answers 413 to a larger batch, as collectors do.
struct Collector {
    events: Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(
        pki: &kubegate_double::Pki,
        listener: tokio::net::TcpListener,
        limit: Option<usize>,
    ) -> Collector {
        use hyper::service::service_fn;
        use rustls::pki_types::pem::PemObject;
        let server = pki.server();
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let seen = seen.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/k8s-audit");
                        let body = http_body_util::BodyExt::collect(request.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        if limit.is_some_and(|limit| body.len() > limit) {
                            let mut refused =
                                http::Response::new(http_body_util::Full::new(Bytes::new()));
                            *refused.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
                            return Ok::<_, std::convert::Infallible>(refused);
                        }
                        let list: Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(list["kind"], "EventList");
                        seen.lock()
                            .unwrap()
                            .extend(list["items"].as_array().unwrap().iter().cloned());
                        Ok(http::Response::new(http_body_util::Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
                );
            }
        });
        Collector { events, task }
    }

    fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn webhook_config(double: &Double, port: u16) -> PathBuf {
    let path = double.path("webhook.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: collector\n  cluster:\n    server: https://127.0.0.1:{port}/k8s-audit\n    certificate-authority: {}\nusers:\n- name: kubegate\n  user: {{}}\ncontexts:\n- name: webhook\n  context: {{cluster: collector, user: kubegate}}\ncurrent-context: webhook\n",
            double.path("ca.crt").display()
        ),
    )
    .unwrap();
    path
}

/// kubegate sending to the webhook in `config` in small, quick batches.
async fn with_webhook(double: &Double, config: &Path, extra: &[&str]) -> Kubegate {
    let mut flags = vec![
        "--audit-webhook-config-file",
        config.to_str().unwrap(),
        "--audit-webhook-batch-max-wait",
        "50ms",
        "--audit-webhook-batch-max-size",
        "7",
        "--audit-webhook-initial-backoff",
        "50ms",
    ];
    flags.extend_from_slice(extra);
    Kubegate::start(double, &flags).await
}

#[tokio::test]
async fn the_webhook_gets_every_event_in_batches_even_after_being_down() {
    let double = Double::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = webhook_config(&double, port);
    // The collector is down at first: its port accepts nothing.
    drop(listener);
    let kubegate = with_webhook(&double, &config, &[]).await;
    for _ in 0..20 {
        assert_eq!(get(&kubegate.url("/api")).await.status, 200);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the collector's port is free again");
    let collector = Collector::start(&double.pki, listener, None).await;
    eventually("every event delivered", || collector.count() >= 40).await;
    for _ in 0..10 {
        get(&kubegate.url("/api")).await;
    }
    eventually("later events delivered", || collector.count() >= 60).await;
    kubegate.shutdown().await;
    let events = collector.events.lock().unwrap();
    assert_eq!(events.len(), 60, "two events per request, none twice");
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|e| (e["auditID"].as_str().unwrap(), e["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(ids.len(), 60);
}

#[tokio::test]
async fn huge_events_are_bounded_and_none_holds_up_the_webhook() {
    let double = Double::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = webhook_config(&double, listener.local_addr().unwrap().port());
    let collector = Collector::start(&double.pki, listener, Some(64 * 1024)).await;
    let policy = double.path("policy.yaml");
    let rules = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Request\n";
    std::fs::write(&policy, rules).unwrap();
    let reject = "--reject-paths=^/api/v1/namespaces/default/secrets";
    let flags = [
        reject,
        "--audit-policy-file",
        policy.to_str().unwrap(),
        "--audit-max-body-bytes",
        "1000000",
    ];
    let kubegate = with_webhook(&double, &config, &flags).await;
    // A 200 KiB User-Agent, on a request refused here: recorded cut to
    // its bound, and marked.
    let huge = "x".repeat(200 * 1024);
    let answer = call(
        Method::GET,
        &kubegate.url("/api/v1/namespaces/default/secrets"),
        &[("user-agent", huge.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 403);
    // Bodies: 90 KiB makes an event the collector refuses (413), which is
    // dropped alone; 150 KiB is over the webhook's event limit, so its
    // event goes without the body, marked as the apiserver marks it.
    for (name, size) in [("ninety", 90 * 1024), ("big", 150 * 1024)] {
        let mut body = pod(name);
        body["metadata"]["annotations"] = serde_json::json!({ "filler": "y".repeat(size) });
        let pods = kubegate.url("/api/v1/namespaces/default/pods");
        call(Method::POST, &pods, &[], body.to_string()).await;
    }
    for _ in 0..10 {
        assert_eq!(get(&kubegate.url("/api")).await.status, 200);
    }
    eventually("the other events delivered", || collector.count() >= 25).await;
    kubegate.shutdown().await;
    let events = collector.events.lock().unwrap();
    assert_eq!(events.len(), 25, "every event once, but the refused one");
    let refused = events
        .iter()
        .find(|e| e["stage"] == "ResponseComplete" && e["responseStatus"]["code"] == 403)
        .unwrap();
    assert_eq!(refused["userAgent"].as_str().unwrap().len(), 1024);
    assert_eq!(
        refused["annotations"]["kubegate.io/truncated"],
        "userAgent (204800 bytes)"
    );
    let cut = events
        .iter()
        .filter(|e| e["annotations"]["audit.k8s.io/truncated"] == "true")
        .collect::<Vec<_>>();
    assert_eq!(cut.len(), 1, "the 150 KiB body's event, without it");
    assert!(cut[0].get("requestObject").is_none());
}

#[tokio::test]
async fn a_refusal_that_names_a_huge_path_still_reaches_the_webhook_within_its_limit() {
    let double = Double::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = webhook_config(&double, listener.local_addr().unwrap().port());
    let collector = Collector::start(&double.pki, listener, None).await;
    let reject = "--reject-paths=^/api/v1/namespaces/default/secrets";
    let kubegate = with_webhook(&double, &config, &[reject]).await;
    // Every client-chosen field at its largest: a name that fills
    // kubegate's 8 KiB path limit, named again by the refusal's message
    // and reason, a 20 KiB query, a long method, client Audit-ID and
    // User-Agent.
    let name = "n".repeat(8000);
    let query = "q".repeat(20 * 1024);
    let path = format!("/api/v1/namespaces/default/secrets/{name}?{query}");
    let long = "y".repeat(8 * 1024);
    let method = Method::from_bytes("Z".repeat(8 * 1024).as_bytes()).unwrap();
    let answer = call(
        method,
        &kubegate.url(&path),
        &[("audit-id", long.as_str()), ("user-agent", long.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        answer.status,
        403,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    eventually("the refusal's events delivered", || collector.count() >= 2).await;
    kubegate.shutdown().await;
    let events = collector.events.lock().unwrap();
    for event in events.iter() {
        let size = serde_json::to_vec(event).unwrap().len();
        assert!(
            size <= 100 * 1024,
            "an event of {size} bytes went to the webhook"
        );
    }
    let refused = events
        .iter()
        .find(|e| e["stage"] == "ResponseComplete")
        .unwrap();
    assert_eq!(refused["responseStatus"]["code"], 403);
    assert_eq!(refused["responseStatus"]["reason"], "Forbidden");
    let truncated = refused["annotations"]["kubegate.io/truncated"]
        .as_str()
        .unwrap();
    assert!(refused["verb"].as_str().unwrap().len() <= 1024);
    for field in ["requestURI", "userAgent", "Audit-ID", "objectRef.name"] {
        assert!(truncated.contains(field), "{field} not in {truncated}");
    }
}
