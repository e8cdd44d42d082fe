//! Reaching the apiserver, and every way that can fail: each failure gets
//! the status an apiserver (or gateway) would give and a message that says
//! what to do.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt;
use kubegate_double::{ApiServer, KubeconfigUser, Options, Pki};
use support::*;

/// A kubeconfig with a raw `cluster` and `user` body.
fn kubeconfig(dir: &Path, name: &str, cluster: &str, user: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    path
}

fn certificate_user(double: &Double) -> String {
    format!(
        "    client-certificate: {}\n    client-key: {}",
        double.path("alice.crt").display(),
        double.path("alice.key").display()
    )
}

fn cluster(server: &str, extra: &str) -> String {
    format!("    server: {server}\n{extra}")
}

#[tokio::test]
async fn an_apiserver_that_is_down_gets_503_naming_it() {
    let double = Double::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let ca = format!(
        "    certificate-authority: {}",
        double.path("ca.crt").display()
    );
    let config = kubeconfig(
        double.dir.path(),
        "down",
        &cluster(&format!("https://{closed}"), &ca),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 503);
    let message = answer.status_message();
    assert!(
        message.contains(&closed.to_string()) && message.contains("connection refused"),
        "{message}"
    );
    assert_eq!(answer.json()["reason"], "ServiceUnavailable");
}

#[tokio::test]
async fn an_apiserver_that_never_answers_the_handshake_gets_503_after_the_timeout() {
    let double = Double::start().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let ca = format!(
        "    certificate-authority: {}",
        double.path("ca.crt").display()
    );
    let config = kubeconfig(
        double.dir.path(),
        "silent",
        &cluster(&format!("https://{address}"), &ca),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&config, &["--connect-timeout=1s"])
        .await
        .unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 503);
    let message = answer.status_message();
    assert!(
        message.contains("did not complete a connection within 1s"),
        "{message}"
    );
    drop(silent);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_gets_502_with_the_reason() {
    let double = Double::start().await;
    let other = double.path("other-ca.crt");
    std::fs::write(&other, Pki::new("someone-else").ca_pem()).unwrap();
    let ca = format!("    certificate-authority: {}", other.display());
    let config = kubeconfig(
        double.dir.path(),
        "wrong-ca",
        &cluster(&double.server.url(), &ca),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 502);
    let message = answer.status_message();
    assert!(
        message.contains("not signed by the kubeconfig's certificate-authority"),
        "{message}"
    );
}

#[tokio::test]
async fn tls_server_name_is_what_the_certificate_is_checked_against() {
    let double = Double::start().await;
    let ca = format!(
        "    certificate-authority: {}",
        double.path("ca.crt").display()
    );
    let right = kubeconfig(
        double.dir.path(),
        "right-name",
        &cluster(
            &double.server.url(),
            &format!("{ca}\n    tls-server-name: localhost"),
        ),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&right, &[]).await.unwrap();
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);

    let wrong = kubeconfig(
        double.dir.path(),
        "wrong-name",
        &cluster(
            &double.server.url(),
            &format!("{ca}\n    tls-server-name: kubernetes.example"),
        ),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&wrong, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 502);
    assert!(answer.status_message().contains("tls-server-name"));
}

#[tokio::test]
async fn insecure_skip_tls_verify_accepts_any_server_certificate() {
    let double = Double::start().await;
    let config = kubeconfig(
        double.dir.path(),
        "insecure",
        &cluster(&double.server.url(), "    insecure-skip-tls-verify: true"),
        &certificate_user(&double),
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "alice"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_gets_the_apiservers_401() {
    let double = Double::start().await;
    let (cert, key) = double
        .pki
        .expired_client("old-alice")
        .write(double.dir.path(), "expired")
        .unwrap();
    let ca = format!(
        "    certificate-authority: {}",
        double.path("ca.crt").display()
    );
    let user = format!(
        "    client-certificate: {}\n    client-key: {}",
        cert.display(),
        key.display()
    );
    let config = kubeconfig(
        double.dir.path(),
        "expired",
        &cluster(&double.server.url(), &ca),
        &user,
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 401);
    let message = answer.status_message();
    assert!(
        message.contains("x509") && message.to_lowercase().contains("expired"),
        "{message}"
    );
}

#[tokio::test]
async fn inline_certificate_data_works_like_files() {
    use base64::Engine;
    let double = Double::start().await;
    let b64 = |name: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(double.path(name)).unwrap())
    };
    let config = kubeconfig(
        double.dir.path(),
        "inline",
        &cluster(
            &double.server.url(),
            &format!("    certificate-authority-data: {}", b64("ca.crt")),
        ),
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}",
            b64("alice.crt"),
            b64("alice.key")
        ),
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "alice"
    );
}

#[tokio::test]
async fn a_bare_ipv6_server_is_reached() {
    let pki = Pki::new("v6-ca");
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("this machine has IPv6 loopback ([::1]); the test needs it");
    let server = ApiServer::start_on(listener, &pki, Options::default()).unwrap();
    let double = Double::start().await;
    let ca = double.path("v6-ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let (cert, key) = pki
        .client("v6-user", &[])
        .write(double.dir.path(), "v6")
        .unwrap();
    let config = kubeconfig(
        double.dir.path(),
        "v6",
        &cluster(
            &format!("https://{}", server.address()),
            &format!("    certificate-authority: {}", ca.display()),
        ),
        &format!(
            "    client-certificate: {}\n    client-key: {}",
            cert.display(),
            key.display()
        ),
    );
    assert!(server.address().is_ipv6());
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "v6-user"
    );
}

#[tokio::test]
async fn an_exec_plugin_supplies_the_token_and_runs_again_after_a_401() {
    let double = Double::with(Options::default(), Identity::Token).await;
    let plugin = double.path("plugin.sh");
    let which = double.path("which-token");
    let runs = double.path("runs");
    std::fs::write(&which, "token-1").unwrap();
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho run >> {runs}\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\",\"expirationTimestamp\":\"2099-01-01T00:00:00Z\"}}}}' \"$(cat {which})\"\n",
            runs = runs.display(),
            which = which.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ca = format!(
        "    certificate-authority: {}",
        double.path("ca.crt").display()
    );
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never",
        plugin.display()
    );
    let config = kubeconfig(
        double.dir.path(),
        "exec",
        &cluster(&double.server.url(), &ca),
        &user,
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "token-user"
    );

    std::fs::write(&which, "token-2").unwrap();
    double.server.state().revoke_token("token-1");
    assert_eq!(get(&kubegate.url("/echo")).await.status, 401);
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "rotated-user"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);

    // The plugin's token is refused too: a burst of 401s does not storm it.
    double.server.state().revoke_token("token-2");
    let url = kubegate.url("/echo");
    let burst = (0..30).map(|_| get(&url));
    for answer in within("burst", futures_util::future::join_all(burst)).await {
        assert_eq!(answer.status, 401);
    }
    let runs = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert!(
        runs <= 3,
        "the plugin ran {runs} times for 30 refused requests"
    );
}

#[tokio::test]
async fn a_slow_first_byte_is_waited_for() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let answer = get(&kubegate.url("/faults/slow?ms=300")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["slept"], 300);
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_breaks_the_clients_body_too() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    // Depending on when the break reaches kubegate, the client sees the
    // head and then a broken body, or the connection closed before a head:
    // either way, never a response that looks complete.
    let request = http::Request::get(kubegate.url("/faults/drop"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    if let Ok(response) = within("head", client.request(request)).await {
        assert_eq!(response.status(), 200);
        let result = within("body", response.into_body().collect()).await;
        assert!(result.is_err(), "a truncated body must not look complete");
    }
    // kubegate and the apiserver are fine afterwards.
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
}

#[tokio::test]
async fn an_apiserver_that_goes_away_and_comes_back_is_used_again() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
    let address = double.server.address();
    let Double {
        server,
        pki,
        dir,
        kubeconfig,
    } = double;
    server.stop().await;
    assert_eq!(get(&kubegate.url("/api")).await.status, 503);
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let _back = ApiServer::start_on(listener, &pki, Options::default()).unwrap();
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
    drop((dir, kubeconfig));
}

#[tokio::test]
async fn kubectls_global_flags_override_the_kubeconfig() {
    let double = Double::with(Options::default(), Identity::Token).await;
    let url = double.server.url();
    let ca = double.path("ca.crt");
    let wrong_ca = double.path("other-ca.crt");
    std::fs::write(&wrong_ca, Pki::new("other-ca").ca_pem()).unwrap();
    let (bob_cert, bob_key) = double
        .pki
        .client("bob", &["ops"])
        .write(double.dir.path(), "bob")
        .unwrap();
    let token = |name: &str, server: &str, ca: &Path, token: &str| {
        double.kubeconfig_with(name, server, ca, KubeconfigUser::Token(token))
    };
    let bad_token = token("bad-token.yaml", &url, &ca, "nope");
    let down = token("down.yaml", "https://127.0.0.1:1", &ca, "token-1");
    let wrong_ca_config = token("wrong-ca.yaml", &url, &wrong_ca, "token-1");
    let (bob_cert, bob_key, ca_text) = (
        format!("--client-certificate={}", bob_cert.display()),
        format!("--client-key={}", bob_key.display()),
        format!("--certificate-authority={}", ca.display()),
    );
    let server = format!("--server={url}");
    let cases: [(&Path, &[&str], &str); 5] = [
        (&bad_token, &["--token=token-1"], "token-user"),
        (&down, &[&server], "token-user"),
        (&wrong_ca_config, &[&ca_text], "token-user"),
        (
            &wrong_ca_config,
            &["--insecure-skip-tls-verify"],
            "token-user",
        ),
        (&double.kubeconfig, &[&bob_cert, &bob_key], "bob"),
    ];
    for (kubeconfig, flags, user) in cases {
        let kubegate = Kubegate::try_start(kubeconfig, flags)
            .await
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        let echo = get(&kubegate.url("/echo")).await;
        assert_eq!(echo.json()["user"]["username"], user, "{flags:?}");
    }

    let kubegate = Kubegate::start(
        &double,
        &[
            "--as=admin",
            "--as-group=ops",
            "--as-group=dev",
            "--as-uid=42",
        ],
    )
    .await;
    let headers = get(&kubegate.url("/echo")).await.json()["headers"].clone();
    assert_eq!(headers["impersonate-user"], serde_json::json!(["admin"]));
    assert_eq!(
        headers["impersonate-group"],
        serde_json::json!(["ops", "dev"])
    );
    assert_eq!(headers["impersonate-uid"], serde_json::json!(["42"]));

    let misnamed = Kubegate::start(&double, &["--tls-server-name=wrong.example"]).await;
    let refused = get(&misnamed.url("/api")).await;
    assert_eq!(refused.status, 502);
    assert!(
        refused.status_message().contains("tls-server-name"),
        "{}",
        refused.status_message()
    );
}

#[tokio::test]
async fn server_token_and_certificate_authority_flags_need_no_kubeconfig() {
    let double = Double::with(Options::default(), Identity::Token).await;
    let ca = format!(
        "--certificate-authority={}",
        double.path("ca.crt").display()
    );
    let server = format!("--server={}", double.server.url());
    let kubegate = Kubegate::try_start_with(&[&server, "--token=token-1", &ca])
        .await
        .expect("kubegate starts from flags alone");
    let echo = get(&kubegate.url("/echo")).await;
    assert_eq!(echo.json()["user"]["username"], "token-user");
    // Flags kubectl proxy accepts that mean nothing to a proxy still parse.
    let ignored = Kubegate::try_start_with(&[
        &server,
        "--token=token-1",
        &ca,
        "-n",
        "kube-system",
        "--request-timeout=5s",
        "--cache-dir=/tmp/cache",
        "--match-server-version",
        "--warnings-as-errors",
        "--disable-compression",
        "--log-flush-frequency=5s",
        "--profile=none",
        "--profile-output=profile.pprof",
        "--vmodule=",
    ])
    .await
    .expect("kubegate starts");
    assert_eq!(get(&ignored.url("/api")).await.status, 200);
}
