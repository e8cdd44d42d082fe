use super::*;
use crate::pattern::PatternList;
use proptest::prelude::*;

fn kubectl_defaults() -> Filters {
    Filters {
        accept_hosts: PatternList::parse(r"^localhost$,^127\.0\.0\.1$,^\[::1\]$").unwrap(),
        accept_paths: PatternList::parse("^.*").unwrap(),
        reject_paths: PatternList::parse("^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach").unwrap(),
        reject_methods: PatternList::parse("^$").unwrap(),
        disabled: false,
    }
}

fn check(filters: &Filters, method: &str, host: &str, raw: &str) -> Result<(), String> {
    let request = RequestInfo::read(method, raw, None, false).map_err(|e| e.to_string())?;
    filters
        .check(method, Some(host), &request)
        .map_err(|e| e.to_string())
}

#[test]
fn hosts_are_matched_without_their_port_and_ipv6_keeps_brackets() {
    let policy = kubectl_defaults();
    for host in [
        "localhost",
        "localhost:8001",
        "127.0.0.1:8001",
        "[::1]:8001",
        "[::1]",
    ] {
        assert!(check(&policy, "GET", host, "/api").is_ok(), "{host}");
    }
    for host in [
        "evil.example",
        "evil.example:8001",
        "localhost.evil.example",
        "::1",
        "",
    ] {
        let error = check(&policy, "GET", host, "/api").unwrap_err();
        assert!(error.contains("--accept-hosts"), "{host}: {error}");
    }
}

#[test]
fn a_missing_host_is_refused() {
    let request = RequestInfo::read("GET", "/api", None, false).unwrap();
    assert_eq!(
        kubectl_defaults()
            .check("GET", None, &request)
            .unwrap_err()
            .flag,
        "accept-hosts"
    );
}

#[test]
fn reject_paths_wins_and_names_the_pattern() {
    let policy = kubectl_defaults();
    let error = check(
        &policy,
        "POST",
        "localhost",
        "/api/v1/namespaces/a/pods/b/exec",
    )
    .unwrap_err();
    assert!(
        error.contains("--reject-paths") && error.contains("^/api/.*/pods/.*/exec"),
        "{error}"
    );
    assert!(
        check(
            &policy,
            "GET",
            "localhost",
            "/api/v1/namespaces/a/pods/b/log"
        )
        .is_ok()
    );
}

#[test]
fn accept_paths_and_reject_methods_refuse_with_their_flag() {
    let mut policy = kubectl_defaults();
    policy.accept_paths = PatternList::parse("^/api$,^/version$").unwrap();
    policy.reject_methods = PatternList::parse("POST,PUT").unwrap();
    assert!(check(&policy, "GET", "localhost", "/version").is_ok());
    assert!(
        check(&policy, "GET", "localhost", "/apis")
            .unwrap_err()
            .contains("--accept-paths")
    );
    assert!(
        check(&policy, "POST", "localhost", "/api")
            .unwrap_err()
            .contains("--reject-methods")
    );
}

#[test]
fn an_upgrade_counts_as_post_for_reject_methods() {
    let mut policy = kubectl_defaults();
    policy.reject_paths = PatternList::parse("").unwrap();
    policy.reject_methods = PatternList::parse("^POST$").unwrap();
    let path = "/api/v1/namespaces/a/pods/b/exec";
    let plain = RequestInfo::read("GET", path, None, false).unwrap();
    assert!(policy.check("GET", Some("localhost"), &plain).is_ok());
    let upgrade = RequestInfo::read("GET", path, None, true).unwrap();
    let refused = policy
        .check("GET", Some("localhost"), &upgrade)
        .unwrap_err();
    assert_eq!(refused.flag, "reject-methods");
    assert!(refused.to_string().contains("count as POST"), "{refused}");
}

#[test]
fn an_empty_list_matches_nothing_and_a_bad_pattern_is_named() {
    assert!(!PatternList::parse("").unwrap().is_match("/anything"));
    let error = PatternList::parse("^/ok,(unclosed").unwrap_err();
    assert!(error.starts_with("the pattern \"(unclosed\""), "{error}");
}

#[test]
fn disable_filter_passes_everything() {
    let mut policy = kubectl_defaults();
    policy.disabled = true;
    assert!(
        check(
            &policy,
            "POST",
            "evil.example",
            "/api/v1/namespaces/a/pods/b/exec"
        )
        .is_ok()
    );
}

/// The most lenient reading a server could give a path: decode once
/// (`%2F` included), drop empty and `.` segments, resolve `..`, drop a
/// trailing slash.
fn lenient_reading(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn spell(segments: &[&str], choices: &[u8]) -> String {
    let mut out = String::new();
    let mut k = 0;
    let mut next = || {
        k += 1;
        choices[k % choices.len()]
    };
    for segment in segments {
        match next() % 7 {
            0 => out.push_str("/."),
            1 => out.push_str("/x/.."),
            2 => out.push('/'),
            3 => out.push_str("%2F"),
            4 => out.push_str("/%2e"),
            _ => {}
        }
        out.push('/');
        for c in segment.chars() {
            if next() % 4 == 0 {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
    }
    if next() % 5 == 0 {
        out.push('/');
    }
    out
}

proptest! {
    /// Whatever the spelling, a path the apiserver could read as an exec or
    /// attach is never let through by the default reject list.
    #[test]
    fn no_spelling_of_a_rejected_path_is_accepted(
        ns in "[a-z]{1,6}",
        pod in "[a-z]{1,6}",
        verb in prop_oneof![Just("exec"), Just("attach")],
        choices in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let segments = ["api", "v1", "namespaces", &ns, "pods", &pod, verb];
        let raw = spell(&segments, &choices);
        let target = format!("/api/v1/namespaces/{ns}/pods/{pod}/{verb}");
        prop_assert_eq!(lenient_reading(&raw), target);
        prop_assert!(check(&kubectl_defaults(), "POST", "localhost", &raw).is_err(), "{} was accepted", raw);
    }
}

#[test]
fn a_host_is_read_strictly_name_then_an_optional_numeric_port() {
    for (host, name) in [
        ("localhost", "localhost"),
        ("localhost:8001", "localhost"),
        ("[::1]:8001", "[::1]"),
        ("[::1]", "[::1]"),
        // Junk after the name or the port keeps the whole value, which no
        // host pattern of kubectl's defaults accepts.
        ("localhost:8001x", "localhost:8001x"),
        ("localhost:", "localhost:"),
        ("localhost:80@evil.example", "localhost:80@evil.example"),
        ("[::1]junk", "[::1]junk"),
        ("[::1]:80:80", "[::1]:80:80"),
        ("::1", "::1"),
    ] {
        assert_eq!(host_without_port(host), name, "{host}");
    }
}
