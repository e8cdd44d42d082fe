use super::*;
use proptest::prelude::*;

const ISSUE_EXAMPLE: &str = r#"
rules:
  - action: Deny
    resources: [{group: "", resources: ["secrets"]}]
  - action: Allow
    verbs: [get, list, watch]
    namespaces: [team-a]
    resources: [{group: "", resources: ["pods", "pods/log", "configmaps"]}]
  - action: Allow
    nonResourceURLs: ["/api", "/api/*", "/apis", "/apis/*", "/version"]
"#;

fn policy(text: &str, read_only: bool) -> Policy {
    let rules = parse(text).unwrap_or_else(|e| panic!("{e}"));
    Policy {
        file: Some(Arc::new(PolicyFile {
            path: PathBuf::from("policy.yaml"),
            rules: ArcSwap::from_pointee(rules),
        })),
        read_only,
    }
}

fn read_only() -> Policy {
    Policy {
        file: None,
        read_only: true,
    }
}

/// The decision for a request: `Ok(())`, or the refusing rule's label.
fn decide(
    policy: &Policy,
    method: &str,
    path: &str,
    query: &str,
    upgrade: bool,
) -> Result<(), String> {
    let query = (!query.is_empty()).then_some(query);
    let request = RequestInfo::read(method, path, query, upgrade).unwrap();
    policy.check(&request).map_err(|refusal| refusal.rule)
}

#[test]
#[rustfmt::skip]
fn the_first_matching_rule_decides_and_no_match_refuses() {
    let policy = policy(ISSUE_EXAMPLE, false);
    let deny = |rule: &str| Err(format!("policy.yaml#{rule}"));
    for (method, path, query, upgrade, expected) in [
        ("GET", "/api/v1/namespaces/team-a/pods", "", false, Ok(())),
        ("GET", "/api/v1/namespaces/team-a/pods", "watch=1", false, Ok(())),
        ("GET", "/api/v1/watch/namespaces/team-a/pods", "", false, Ok(())),
        ("GET", "/api/v1/namespaces/team-a/pods/web", "", false, Ok(())),
        ("GET", "/api/v1/namespaces/team-a/pods/web/log", "follow=true", false, Ok(())),
        ("GET", "/api/v1/namespaces/team-a/configmaps/settings", "", false, Ok(())),
        ("GET", "/api/v1/namespaces/team-a/secrets/token", "", false, deny("1")),
        ("GET", "/api/v1/secrets", "", false, deny("1")),
        ("GET", "/api/v1/namespaces/team-b/pods", "", false, deny("none")),
        ("GET", "/api/v1/pods", "", false, deny("none")),
        ("DELETE", "/api/v1/namespaces/team-a/pods/web", "", false, deny("none")),
        ("POST", "/api/v1/namespaces/team-a/pods", "", false, deny("none")),
        ("GET", "/api/v1/namespaces/team-a/pods/web/exec", "command=sh", true, deny("none")),
        // An Upgrade header leaves a request's verb as it is.
        ("DELETE", "/api/v1/namespaces/team-a/pods/web", "", true, deny("none")),
        ("GET", "/api/v1/namespaces/team-a/secrets/token", "", true, deny("1")),
        ("GET", "/api/v1/namespaces/team-a/pods/web/status", "", false, deny("none")),
        ("GET", "/apis/apps/v1/namespaces/team-a/deployments", "", false, deny("none")),
        ("GET", "/api", "", false, Ok(())),
        ("GET", "/apis/apps/v1", "", false, Ok(())),
        ("GET", "/version", "", false, Ok(())),
        ("GET", "/metrics", "", false, deny("none")),
    ] {
        assert_eq!(decide(&policy, method, path, query, upgrade), expected, "{method} {path}?{query}");
    }
}

#[test]
#[rustfmt::skip]
fn resources_match_with_subresources_wildcards_groups_and_names() {
    let policy = policy(r#"
rules:
  - action: Allow
    resources: [{group: apps, resources: ["*/scale"]}]
  - action: Allow
    resources: [{group: "", resources: ["pods/*"], resourceNames: [web]}]
  - action: Allow
    verbs: [create]
    resources: [{group: "*", resources: ["jobs"]}]
  - action: Allow
    verbs: ["*"]
    namespaces: [""]
    resources: [{resources: ["nodes"]}]
"#, false);
    for (method, path, expected) in [
        ("GET", "/apis/apps/v1/namespaces/n/deployments/d/scale", true),
        ("PATCH", "/apis/apps/v1/namespaces/n/statefulsets/s/scale", true),
        ("GET", "/apis/apps/v1/namespaces/n/deployments/d", false),
        ("GET", "/api/v1/namespaces/n/replicationcontrollers/r/scale", false),
        ("GET", "/api/v1/namespaces/n/pods/web", true),
        ("GET", "/api/v1/namespaces/n/pods/web/log", true),
        ("GET", "/api/v1/namespaces/n/pods/other/log", false),
        ("POST", "/apis/batch/v1/namespaces/n/jobs", true),
        ("GET", "/apis/batch/v1/namespaces/n/jobs", false),
        ("DELETE", "/api/v1/nodes/n1", true),
        ("GET", "/api/v1/namespaces/n/nodes", false),
    ] {
        assert_eq!(decide(&policy, method, path, "", false).is_ok(), expected, "{method} {path}");
    }
}

#[test]
#[rustfmt::skip]
fn read_only_allows_reads_discovery_and_self_reviews_only() {
    let policy = read_only();
    for (method, path, query, upgrade, allowed) in [
        ("GET", "/api/v1/namespaces/d/pods", "", false, true),
        ("GET", "/api/v1/pods", "watch=true", false, true),
        ("GET", "/api/v1/namespaces/d/pods/p/log", "follow=true", false, true),
        ("GET", "/api/v1/namespaces/d/secrets/s", "", false, true),
        ("GET", "/api", "", false, true),
        ("GET", "/apis", "", false, true),
        ("GET", "/version", "", false, true),
        ("HEAD", "/healthz", "", false, true),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "", false, true),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", "", false, true),
        ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", "", false, true),
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "", false, false),
        ("POST", "/api/v1/namespaces/d/pods", "", false, false),
        ("PUT", "/api/v1/namespaces/d/pods/p", "", false, false),
        ("PATCH", "/api/v1/namespaces/d/pods/p", "", false, false),
        ("DELETE", "/api/v1/namespaces/d/pods/p", "", false, false),
        ("DELETE", "/api/v1/namespaces/d/pods", "", false, false),
        ("GET", "/api/v1/namespaces/d/pods/p/exec", "command=sh", true, false),
        ("POST", "/api/v1/namespaces/d/pods/p/exec", "command=sh", true, false),
        ("GET", "/api/v1/namespaces/d/pods/p/attach", "", true, false),
        ("GET", "/api/v1/namespaces/d/pods/p/portforward", "ports=80", true, false),
        ("GET", "/api/v1/namespaces/d/pods/p/proxy/admin", "", false, false),
        ("GET", "/api/v1/namespaces/d/services/s/proxy", "", false, false),
        ("GET", "/api/v1/proxy/namespaces/d/pods/p", "", false, false),
        ("POST", "/logs", "", false, false),
        // Reads that reach past discovery or into a running program.
        ("GET", "/logs/kube-apiserver.log", "", false, false),
        ("GET", "/debug/pprof/profile", "", false, false),
        ("GET", "/metrics", "", false, false),
        ("GET", "/api/v1/namespaces/d/pods/p/exec", "command=sh", false, false),
        ("GET", "/openapi/v3", "", false, true),
        // An Upgrade header does not turn a write into something else.
        ("DELETE", "/api/v1/namespaces/d/pods/p", "", true, false),
        ("GET", "/api/v1/pods", "watch=1", true, true),
    ] {
        let decision = decide(&policy, method, path, query, upgrade);
        assert_eq!(decision.is_ok(), allowed, "{method} {path}?{query} {decision:?}");
    }
}

#[test]
fn read_only_with_a_file_keeps_the_files_denials() {
    let policy = policy(
        "rules: [{action: Deny, resources: [{resources: [secrets]}]}]",
        true,
    );
    let secret = "/api/v1/namespaces/d/secrets/s";
    assert_eq!(
        decide(&policy, "GET", secret, "", false),
        Err("policy.yaml#1".into())
    );
    assert_eq!(
        decide(&policy, "GET", "/api/v1/namespaces/d/pods", "", false),
        Ok(())
    );
    assert_eq!(
        decide(&policy, "DELETE", "/api/v1/namespaces/d/pods/p", "", false),
        Err("read-only".into())
    );
}

#[test]
fn a_refusal_reads_like_the_apiservers_rbac_refusal() {
    let policy = policy(ISSUE_EXAMPLE, false);
    let request = RequestInfo::read(
        "GET",
        "/api/v1/namespaces/team-a/secrets/token",
        None,
        false,
    )
    .unwrap();
    let refusal = policy.check(&request).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "secrets \"token\" is forbidden: kubegate's policy does not let this proxy get resource \"secrets\" in API group \"\" in the namespace \"team-a\": rule 1 of policy.yaml (Deny) refuses it; change that rule to let it through"
    );
    assert_eq!(
        refusal.details,
        Some(("token".into(), "".into(), "secrets".into()))
    );
    let request = RequestInfo::read("GET", "/api/v1/nodes", None, false).unwrap();
    let refusal = policy.check(&request).unwrap_err();
    assert!(
        refusal.to_string().starts_with(
            "nodes is forbidden: kubegate's policy does not let this proxy list resource \"nodes\" in API group \"\" at the cluster scope: no rule of policy.yaml matches it"
        ),
        "{refusal}"
    );
    let request = RequestInfo::read("POST", "/logs", None, false).unwrap();
    let refusal = read_only().check(&request).unwrap_err();
    assert!(
        refusal
            .to_string()
            .starts_with("forbidden: kubegate's policy does not let this proxy post path \"/logs\": kubegate runs with --read-only"),
        "{refusal}"
    );
}

#[test]
fn a_bad_file_names_the_rule_and_what_is_wrong() {
    for (text, expected) in [
        (
            "rules: [{action: Allow}, {action: Maybe}]",
            "rule 2: unknown variant `Maybe`",
        ),
        (
            "rules: [{action: Allow, verb: [get]}]",
            "rule 1: unknown field `verb`",
        ),
        ("rules: [{verbs: [get]}]", "rule 1: missing field `action`"),
        (
            "rules: [{action: Allow, verbs: [read]}]",
            "rule 1: unknown verb \"read\"",
        ),
        (
            "rules: [{action: Allow, namespaces: [a], nonResourceURLs: [/x]}]",
            "rule 1: nonResourceURLs cannot be combined",
        ),
        (
            "rules: [{action: Allow, nonResourceURLs: [x]}]",
            "rule 1: nonResourceURLs entry \"x\"",
        ),
        (
            "rules: [{action: Allow, nonResourceURLs: [/a*b]}]",
            "rule 1: nonResourceURLs entry",
        ),
        (
            "rules: [{action: Allow, resources: [{resources: [a/b/c]}]}]",
            "rule 1: resource \"a/b/c\"",
        ),
        (
            "rules: [{action: Allow, resources: [{group: \"\", resource: [pods]}]}]",
            "rule 1: unknown field `resource`",
        ),
        (
            "rules: [{action: Deny, resources: [{resources: [\"*/*\"]}]}]",
            "rule 1: resource \"*/*\"",
        ),
        (
            "rules: [{action: Deny, resources: [{resources: [pods/]}]}]",
            "rule 1: resource \"pods/\"",
        ),
        (
            "rules: [{action: Deny, resources: [{resources: [/exec]}]}]",
            "rule 1: resource \"/exec\"",
        ),
        (
            "rules: [{action: Deny, resources: [{resourceNames: [x]}]}]",
            "rule 1: resourceNames needs resources",
        ),
        (
            "rules: [{action: Allow, nonResourceURLs: [/api**]}]",
            "rule 1: nonResourceURLs entry",
        ),
        (
            "kind: Policy\napiVersion: v1\nrules: []",
            "apiVersion must be kubegate.io/v1",
        ),
        ("rule: []", "is not a kubegate policy"),
    ] {
        let error = parse(text).err().unwrap_or_else(|| panic!("{text} parsed"));
        assert!(error.starts_with(expected), "{text}: {error}");
    }
    assert!(parse("apiVersion: kubegate.io/v1\nkind: Policy\nrules: []").is_ok());
}

/// Writes `segment` with some characters percent-encoded (never `/` or
/// `.`, which the canonicaliser refuses encoded).
fn spell(segment: &str, choices: &[bool]) -> String {
    segment
        .chars()
        .zip(choices.iter().cycle())
        .map(|(c, &encode)| match encode && c != '.' {
            true => format!("%{:02X}", c as u32),
            false => c.to_string(),
        })
        .collect()
}

/// The verb the apiserver gives a request, worked out from its parts (an
/// oracle independent of the request reader).
fn expected_verb(
    method: &str,
    named: bool,
    watch: bool,
    stream: bool,
    upgrade: bool,
) -> &'static str {
    match method {
        _ if upgrade && stream && matches!(method, "GET" | "POST") => "create",
        "GET" | "HEAD" if named => "get",
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        _ => "deletecollection",
    }
}

proptest! {
    /// However a request is spelled, the policy decides what the apiserver
    /// will read: a rule allowing reads of pods in team-a lets nothing
    /// through in another namespace, nor any cluster-scoped or other
    /// resource, nor any write, exec or attach.
    #[test]
    fn no_spelling_gets_a_denied_request_through(
        namespace in prop_oneof![Just("team-a".to_string()), "[a-z]{1,8}(-a)?"],
        core in any::<bool>(),
        resource in prop_oneof![Just("pods"), Just("secrets"), Just("configmaps"), Just("nodes")],
        name in proptest::option::of("[a-z]{1,6}"),
        subresource in proptest::option::of(prop_oneof![Just("log"), Just("exec"), Just("status"), Just("attach")]),
        scoped in any::<bool>(),
        watch_prefix in any::<bool>(),
        watch_query in any::<bool>(),
        upgrade in any::<bool>(),
        method in prop_oneof![Just("GET"), Just("HEAD"), Just("DELETE"), Just("POST"), Just("PUT"), Just("PATCH")],
        choices in proptest::collection::vec(any::<bool>(), 1..16),
    ) {
        let policy = policy(ISSUE_EXAMPLE, false);
        let mut plain: Vec<String> = match core {
            true => vec!["api".into(), "v1".into()],
            false => vec!["apis".into(), "apps".into(), "v1".into()],
        };
        if watch_prefix {
            plain.push("watch".into());
        }
        if scoped {
            plain.extend(["namespaces".to_string(), namespace.clone()]);
        }
        plain.push(resource.to_string());
        plain.extend(name.clone());
        let subresource = subresource.filter(|_| name.is_some());
        plain.extend(subresource.map(str::to_string));
        let spelled: Vec<String> = plain.iter().map(|s| spell(s, &choices)).collect();
        let spelled_path = format!("/{}", spelled.join("/"));
        let query = if watch_query { Some("watch=1") } else { None };
        let request = RequestInfo::read(method, &spelled_path, query, upgrade).unwrap();
        let decision = policy.check(&request);

        let sub = subresource.unwrap_or_default();
        let verb = match watch_prefix {
            true => "watch",
            false => expected_verb(method, name.is_some(), watch_query, resource == "pods" && matches!(sub, "exec" | "attach"), upgrade),
        };
        let readable = matches!((resource, sub), ("pods", "") | ("pods", "log") | ("configmaps", ""));
        let allowed = core && scoped && namespace == "team-a" && readable
            && matches!(verb, "get" | "list" | "watch");
        prop_assert_eq!(request.verb_text(), verb, "{} {}", method, spelled_path);
        prop_assert_eq!(decision.is_ok(), allowed, "{} {} {:?}", method, spelled_path, decision);
    }
}

#[test]
fn a_namespaced_deny_undercut_by_a_later_cluster_wide_allow_is_named() {
    let warnings = |text: &str| undercut_denials(&parse(text).unwrap());
    // Hidden in team-b, listed everywhere by the catch-all.
    let undercut = warnings(
        r#"
rules:
  - {action: Deny, namespaces: [team-b], resources: [{resources: ["secrets", "pods/log"]}]}
  - {action: Allow, verbs: ["*"]}
"#,
    );
    assert_eq!(undercut.len(), 1, "{undercut:?}");
    assert!(
        undercut[0].starts_with("rule 1 denies secrets in namespaces team-b"),
        "{undercut:?}"
    );
    // A cluster-wide Deny first, an Allow limited to namespaces, a Deny of
    // writes only, or nothing allowed after: nothing to say.
    for quiet in [
        "rules:\n  - {action: Deny, resources: [{resources: [secrets]}]}\n  - {action: Deny, namespaces: [b], resources: [{resources: [secrets]}]}\n  - {action: Allow}\n",
        "rules:\n  - {action: Deny, namespaces: [b], resources: [{resources: [secrets]}]}\n  - {action: Allow, namespaces: [a]}\n",
        "rules:\n  - {action: Deny, verbs: [delete], namespaces: [b]}\n  - {action: Allow}\n",
        "rules:\n  - {action: Deny, namespaces: [b]}\n  - {action: Allow, verbs: [get]}\n",
        ISSUE_EXAMPLE,
    ] {
        assert_eq!(warnings(quiet), Vec::<String>::new(), "{quiet}");
    }
    // A Deny of every resource in a namespace, undercut by an Allow of all.
    let everything = warnings(
        "rules:\n  - {action: Deny, namespaces: [b]}\n  - {action: Allow, verbs: [list]}\n",
    );
    assert_eq!(everything.len(), 1, "{everything:?}");
}
