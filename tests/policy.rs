//! `--policy-file` and `--read-only` as a client meets them: RBAC-worded
//! refusals with details, the file read again under a live watch, audit and
//! metrics naming the rule, and the shipped examples checked against the
//! schema.

mod support;

use support::*;

const TEAM_A: &str = r#"
rules:
  - action: Deny
    resources: [{group: "", resources: ["secrets"]}]
  - action: Allow
    verbs: [get, list, watch]
    namespaces: [default]
    resources: [{group: "", resources: ["pods", "pods/log"]}]
  - action: Allow
    nonResourceURLs: ["/api", "/api/*", "/apis", "/apis/*", "/version"]
"#;

#[tokio::test]
async fn a_refusal_names_the_rule_with_the_apiservers_status_details() {
    let double = Double::start().await;
    let policy = double.path("policy.yaml");
    std::fs::write(&policy, TEAM_A).unwrap();
    let flag = format!("--policy-file={}", policy.display());
    let kubegate = Kubegate::start(&double, &[&flag]).await;

    let secret = get(&kubegate.url("/api/v1/namespaces/default/secrets/token")).await;
    assert_eq!(secret.status, 403);
    let status = secret.json();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["details"],
        serde_json::json!({"name": "token", "group": "", "kind": "secrets"})
    );
    let message = secret.status_message();
    assert!(
        message.starts_with("secrets \"token\" is forbidden: kubegate's policy does not let this proxy get resource \"secrets\" in API group \"\" in the namespace \"default\": rule 1 of "),
        "{message}"
    );
    // However it is spelled.
    let spelled = get(&kubegate.url("/api/v1/namespaces/default/s%65crets/token")).await;
    assert_eq!(spelled.status_message(), message);

    let elsewhere = get(&kubegate.url("/api/v1/namespaces/kube-system/pods")).await;
    assert_eq!(elsewhere.status, 403);
    assert!(
        elsewhere.status_message().contains("no rule of"),
        "{}",
        elsewhere.status_message()
    );
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/pods"))
            .await
            .status,
        200
    );
    assert_eq!(get(&kubegate.url("/version")).await.status, 200);
}

#[tokio::test]
async fn the_file_is_read_again_under_a_live_watch_and_audit_and_metrics_name_the_rule() {
    let double = Double::start().await;
    double.store().create("default", pod("web")).unwrap();
    let policy = double.path("policy.yaml");
    std::fs::write(&policy, TEAM_A).unwrap();
    let audit = double.path("audit.log");
    let kubegate = Kubegate::start(
        &double,
        &[
            &format!("--policy-file={}", policy.display()),
            &format!("--audit-log-path={}", audit.display()),
            "--token-reload-interval=20ms",
            "--admin-address=127.0.0.1:0",
        ],
    )
    .await;
    let mut events = watch_pods(&double, &kubegate).await;
    let pod_url = kubegate.url("/api/v1/namespaces/default/pods/web");
    assert_eq!(get(&pod_url).await.status, 200);

    // Named pods are now refused; lists and watches still allowed.
    let stricter = format!(
        "rules:\n  - action: Deny\n    verbs: [get]\n    resources: [{{resources: [pods]}}]\n{}",
        TEAM_A.trim_start_matches("\nrules:\n")
    );
    std::fs::write(&policy, stricter).unwrap();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    within("the new rules", async {
        while get(&pod_url).await.status != 403 {
            tick.tick().await;
        }
    })
    .await;
    // The watch opened under the old rules goes on.
    double.store().create("default", pod("after")).unwrap();
    within("the watch event", async {
        while let Some(line) = events.next().await {
            if line.contains("\"after\"") {
                return;
            }
        }
        panic!("the watch ended");
    })
    .await;

    // A file that no longer parses keeps the rules it had.
    std::fs::write(&policy, "rules: [{action: Perhaps}]").unwrap();
    let refusals = format!(
        "kubegate_policy_refusals_total{{rule=\"{}#1\"}}",
        policy.display()
    );
    let admin = kubegate.admin.expect("admin port");
    let metrics = get(&format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&refusals))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{refusals} missing:\n{text}"));
    assert!(counted >= 1.0);
    for _ in 0..3 {
        tick.tick().await;
    }
    assert_eq!(get(&pod_url).await.status, 403);
    assert_eq!(
        get(&kubegate.url("/api/v1/namespaces/default/pods"))
            .await
            .status,
        200
    );

    drop(events);
    kubegate.shutdown().await;
    let log = std::fs::read_to_string(&audit).unwrap();
    // The first ResponseComplete with `code`: its decision and reason.
    let complete = |code: u16| {
        let event = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["stage"] == "ResponseComplete" && e["responseStatus"]["code"] == code)
            .unwrap_or_else(|| panic!("no event answered {code}"));
        let annotations = &event["annotations"];
        let decision = annotations["authorization.k8s.io/decision"].clone();
        let reason = annotations["authorization.k8s.io/reason"].clone();
        (
            event,
            decision,
            reason.as_str().unwrap_or_default().to_string(),
        )
    };
    let (refused, decision, reason) = complete(403);
    assert_eq!(decision, "forbid");
    assert!(
        reason.contains("pods \"web\" is forbidden") && reason.contains("rule 1 of"),
        "{reason}"
    );
    assert_eq!(refused["verb"], "get");
    assert_eq!(refused["objectRef"]["name"], "web");
    // An allowed request names the rule that let it through.
    let (_, decision, reason) = complete(200);
    assert_eq!(decision, "allow");
    assert!(reason.contains("(Allow)"), "{reason}");
}

#[tokio::test]
async fn the_shipped_examples_load_and_match_the_schema() {
    let double = Double::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    for example in &examples {
        let flag = format!("--policy-file={}", example.display());
        Kubegate::try_start(&double.kubeconfig, &[&flag])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    }
    // An independent reader: Python's jsonschema with the shipped schema.
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/policy.schema.json");
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
for path in sys.argv[2:]:
    jsonschema.validate(yaml.safe_load(open(path)), schema, cls=jsonschema.Draft202012Validator)
try:
    jsonschema.validate({'rules': [{'action': 'Allow', 'verb': ['get']}]}, schema)
    sys.exit('a misspelt field passed the schema')
except jsonschema.ValidationError:
    print('ok', len(sys.argv) - 2)
",
        ])
        .arg(&schema)
        .args(&examples)
        .output()
        .expect("python3 runs (scripts/test installs jsonschema)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
