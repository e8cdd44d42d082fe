//! kubectl's filters as a client meets them: each flag with allowed and refused
//! requests, refused paths, and the Status bodies that say which flag.

mod support;

use bytes::Bytes;
use http::Method;
use support::*;

async fn host(kubegate: &Kubegate, host: &str) -> Answer {
    call(
        Method::GET,
        &kubegate.url("/api"),
        &[("host", host)],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn default_hosts_are_loopback_names_including_bracketed_ipv6() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    for allowed in [
        "localhost:8001",
        "127.0.0.1:8001",
        "[::1]:8001",
        "localhost",
    ] {
        assert_eq!(host(&kubegate, allowed).await.status, 200, "{allowed}");
    }
    for refused in ["evil.example", "evil.example:8001", "127.0.0.1.nip.io:8001"] {
        let answer = host(&kubegate, refused).await;
        assert_eq!(answer.status, 403, "{refused}");
        assert!(answer.status_message().contains("--accept-hosts"));
    }
}

#[tokio::test]
async fn accept_hosts_can_be_widened() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[r"--accept-hosts=^kubegate\.internal$"]).await;
    assert_eq!(host(&kubegate, "kubegate.internal:8001").await.status, 200);
    assert_eq!(host(&kubegate, "localhost:8001").await.status, 403);
}

#[tokio::test]
async fn exec_and_attach_are_not_rejected_by_default() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    // Without an upgrade the apiserver refuses the exec itself: the point is
    // that kubegate let the request through (kubectl proxy answers 403).
    double.store().create("default", pod("p")).unwrap();
    let path = "/api/v1/namespaces/default/pods/p/exec?command=true";
    let answer = call(Method::POST, &kubegate.url(path), &[], Bytes::new()).await;
    assert_eq!(answer.status, 400);
    assert!(answer.status_message().contains("Upgrade request required"));
}

#[tokio::test]
async fn reject_paths_refuses_and_names_its_pattern() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(
        &double,
        &["--reject-paths=^/api/.*/pods/.*/exec,^/api/.*/secrets"],
    )
    .await;
    let answer = call(
        Method::POST,
        &kubegate.url("/api/v1/namespaces/default/pods/p/exec"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 403);
    let message = answer.status_message();
    assert!(
        message.contains("--reject-paths") && message.contains("^/api/.*/pods/.*/exec"),
        "{message}"
    );
    assert_eq!(answer.json()["reason"], "Forbidden");
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/secrets"))
            .await
            .status,
        403
    );
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/pods"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn every_spelling_of_a_rejected_path_is_refused() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--reject-paths=^/api/.*/pods/.*/exec"]).await;
    for spelling in [
        "/api/v1/namespaces/default/pods/p/exec",
        "/api/v1/namespaces/default/pods/p/%65xec",
        "/api/v1/namespaces/default/pods/p/./exec",
        "/api/v1/namespaces/default/pods/p/x/../exec",
        "/api/v1/namespaces/default/pods/p//exec",
        "/api/v1/namespaces/default/pods/p%2Fexec",
        "/api/v1/namespaces/default/pods/p/exec/",
        "/api//v1/namespaces/default/pods/p/exec",
    ] {
        let answer = call(Method::POST, &kubegate.url(spelling), &[], Bytes::new()).await;
        assert!(
            answer.status == 400 || answer.status == 403,
            "{spelling} got {}",
            answer.status
        );
        answer.status_message();
    }
}

#[tokio::test]
async fn ambiguous_paths_get_400_with_the_fix() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    for (path, words) in [
        ("/api/./v1", "'.' or '..'"),
        ("/api//v1", "empty segment"),
        ("/api/v1/", "trailing '/'"),
        ("/api/v1%2Fpods", "percent-escape"),
        ("/api/v1/%2e%2e", "percent-escape"),
        ("/api/%00", "percent-escape"),
        ("/api/%zz", "malformed"),
        ("/api/%ff", "UTF-8"),
    ] {
        let answer = get(&kubegate.url(path)).await;
        assert_eq!(answer.status, 400, "{path}");
        let message = answer.status_message();
        assert!(message.contains(words), "{path}: {message}");
    }
    let long = format!("/api/{}", "a".repeat(9000));
    assert_eq!(get(&kubegate.url(&long)).await.status, 400);
}

#[tokio::test]
async fn accept_paths_limits_what_is_served() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(
        &double,
        &["--accept-paths=^/api$,^/api/v1/namespaces/[^/]+/pods$"],
    )
    .await;
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/pods"))
            .await
            .status,
        200
    );
    let refused = get(&kubegate.url("/version")).await;
    assert_eq!(refused.status, 403);
    assert!(refused.status_message().contains("--accept-paths"));
}

#[tokio::test]
async fn reject_methods_makes_a_read_only_proxy() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--reject-methods=POST,PUT,PATCH,DELETE"]).await;
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/pods"))
            .await
            .status,
        200
    );
    let refused = call(
        Method::POST,
        &kubegate.url("/api/v1/namespaces/default/pods"),
        &[],
        pod("x").to_string(),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.status_message().contains("--reject-methods"));
    assert!(
        double.store().get("default", "x").is_none(),
        "nothing reached the apiserver"
    );
}

#[tokio::test]
async fn disable_filter_lets_everything_through() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--disable-filter", "--reject-paths=^/api"]).await;
    assert_eq!(host(&kubegate, "evil.example").await.status, 200);
}

#[tokio::test]
async fn the_deno_client_healthcheck_works_with_no_flags() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let answer = call(
        Method::GET,
        &kubegate.url("/api?healthcheck"),
        &[("host", &format!("localhost:{}", kubegate.address.port()))],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["kind"], "APIVersions");
}

#[tokio::test]
async fn reject_methods_reads_the_method_as_the_apiserver_does() {
    let double = Double::start().await;
    double.store().create("default", pod("kept")).unwrap();
    let kubegate = Kubegate::start(&double, &["--reject-methods=^DELETE$"]).await;
    let url = kubegate.url("/api/v1/namespaces/default/pods/kept");
    // The apiserver lower-cases the method to find the verb.
    let lower = http::Method::from_bytes(b"delete").unwrap();
    let answer = call(lower, &url, &[], bytes::Bytes::new()).await;
    assert_eq!(answer.status, 403, "{}", answer.status_message());
    assert!(answer.status_message().contains("--reject-methods"));
    assert_eq!(get(&url).await.status, 200, "the pod is still there");
}
