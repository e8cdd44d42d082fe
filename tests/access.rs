//! Who may use kubegate at all, over plain HTTP: browser origins, CORS
//! preflights and headers, and the local access token.

mod support;

use bytes::Bytes;
use http::Method;
use support::*;

const PAGE: &str = "https://tool.example";

async fn allowed() -> (Double, Kubegate) {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[r"--accept-origins=^https://tool\.example$"]).await;
    (double, kubegate)
}

#[tokio::test]
async fn a_request_from_an_unknown_origin_is_refused_naming_the_flag() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let answer = call(
        Method::GET,
        &kubegate.url("/api"),
        &[("origin", "https://evil.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert!(answer.status_message().contains("--accept-origins"));
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
    // Clients that are not browsers send no Origin and are not affected.
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
}

#[tokio::test]
async fn kubegates_own_origin_is_allowed_without_a_flag() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let own = format!("http://{}", kubegate.address);
    let answer = call(
        Method::GET,
        &kubegate.url("/api"),
        &[("origin", &own)],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_allowed_origin_gets_preflights_answered_and_headers_exposed() {
    let (double, kubegate) = allowed().await;
    let before = double
        .server
        .state()
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Acquire);
    let preflight = call(
        Method::OPTIONS,
        &kubegate.url("/api/v1/namespaces/default/pods/x"),
        &[
            ("origin", PAGE),
            ("access-control-request-method", "PATCH"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.headers["access-control-allow-origin"], PAGE);
    assert!(
        preflight.headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    assert_eq!(
        preflight.headers["access-control-allow-headers"],
        "authorization,content-type"
    );
    assert_eq!(
        double
            .server
            .state()
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Acquire),
        before,
        "preflights are answered by kubegate"
    );

    for content_type in [
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
        "application/json-patch+json",
    ] {
        let echo = call(
            Method::PATCH,
            &kubegate.url("/echo"),
            &[("origin", PAGE), ("content-type", content_type)],
            "{}",
        )
        .await;
        assert_eq!(echo.status, 200);
        assert_eq!(echo.headers["access-control-allow-origin"], PAGE);
        let exposed = echo.headers["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("Warning") && exposed.contains("Audit-Id"));
        assert_eq!(echo.json()["headers"]["content-type"][0], content_type);
    }
}

#[tokio::test]
async fn a_refused_preflight_gets_a_clear_answer() {
    let (_double, kubegate) = allowed().await;
    let refused = call(
        Method::OPTIONS,
        &kubegate.url("/api"),
        &[
            ("origin", "https://other.example"),
            ("access-control-request-method", "GET"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.status_message().contains("--accept-origins"));
}

#[tokio::test]
async fn the_access_token_is_required_compared_and_never_forwarded() {
    let double = Double::start().await;
    let token = double.path("token-file");
    std::fs::write(&token, "local-secret\n").unwrap();
    let kubegate =
        Kubegate::start(&double, &["--access-token-file", token.to_str().unwrap()]).await;

    let missing = get(&kubegate.url("/echo")).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.headers["www-authenticate"],
        "Bearer realm=\"kubegate\""
    );
    assert!(missing.status_message().contains("--access-token-file"));
    let wrong = call(
        Method::GET,
        &kubegate.url("/echo"),
        &[("authorization", "Bearer local-secreT")],
        Bytes::new(),
    )
    .await;
    assert_eq!(wrong.status, 401);

    let echo = call(
        Method::GET,
        &kubegate.url("/echo"),
        &[("authorization", "Bearer local-secret")],
        Bytes::new(),
    )
    .await;
    assert_eq!(echo.status, 200);
    let echo = echo.json();
    assert!(
        echo["headers"].get("authorization").is_none(),
        "the access token went upstream"
    );
    assert_eq!(echo["user"]["username"], "alice");
}

#[tokio::test]
async fn the_token_wins_over_forwarded_client_credentials() {
    let double = Double::start().await;
    let token = double.path("token-file");
    std::fs::write(&token, "local-secret").unwrap();
    let kubegate = Kubegate::start(
        &double,
        &[
            "--access-token-file",
            token.to_str().unwrap(),
            "--forward-client-credentials",
        ],
    )
    .await;
    let echo = call(
        Method::GET,
        &kubegate.url("/echo"),
        &[("authorization", "Bearer local-secret")],
        Bytes::new(),
    )
    .await;
    assert!(echo.json()["headers"].get("authorization").is_none());
}

#[tokio::test]
async fn an_empty_or_missing_token_file_stops_start_up() {
    let double = Double::start().await;
    let empty = double.path("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let error = Kubegate::try_start(
        &double.kubeconfig,
        &["--access-token-file", empty.to_str().unwrap()],
    )
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("is empty"), "{error}");
    let error = Kubegate::try_start(
        &double.kubeconfig,
        &["--access-token-file", "/nonexistent/token"],
    )
    .await
    .err()
    .unwrap();
    assert!(error.to_string().contains("/nonexistent/token"), "{error}");
}

#[tokio::test]
async fn an_origin_pattern_matches_the_whole_origin() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--accept-origins=https://tool.example"]).await;
    let from = |origin: &'static str| {
        let url = kubegate.url("/api");
        async move {
            call(Method::GET, &url, &[("origin", origin)], Bytes::new())
                .await
                .status
        }
    };
    assert_eq!(from("https://tool.example").await, 200);
    assert_eq!(from("https://tool.example.evil.example").await, 403);
    assert_eq!(from("https://evil.example/https://tool.example").await, 403);
}
