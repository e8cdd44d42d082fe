//! The apiserver's own request-info cases (k8s.io/apiserver
//! `pkg/endpoints/request/requestinfo_test.go`), as facts checked here.

use super::*;

/// One expectation: method, path and query; then the verb and the group,
/// version, namespace, resource, subresource and name.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    [&'static str; 6],
);

fn read<'a>(method: &'a str, path: &'a str, query: &'a str) -> RequestInfo<'a> {
    let query = (!query.is_empty()).then_some(query);
    RequestInfo::read(method, path, query, false).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn check(cases: &[Case]) {
    for (method, path, query, verb, [group, version, namespace, resource, sub, name]) in cases {
        let info = read(method, path, query);
        let expected = Resource {
            group,
            version,
            namespace,
            resource,
            subresource: sub,
            name,
        };
        let what = format!("{method} {path}?{query}");
        assert_eq!(info.verb_text(), *verb, "{what}");
        assert_eq!(info.resource(), Some(expected), "{what}");
    }
}

/// The name a collection read of `query` is narrowed to, with its verb.
fn selected(query: &str) -> (String, String) {
    let info = read("GET", "/apis/group/version/resource", query);
    let name = info
        .resource()
        .map(|r| r.name.to_string())
        .unwrap_or_default();
    (info.verb_text().into_owned(), name)
}

#[test]
#[rustfmt::skip]
fn resource_requests_read_as_the_apiserver_reads_them() {
    check(&[
        ("GET", "/api/v1/namespaces", "", "list", ["", "v1", "", "namespaces", "", ""]),
        ("GET", "/api/v1/namespaces/other", "", "get", ["", "v1", "other", "namespaces", "", "other"]),
        ("GET", "/api/v1/namespaces/other/pods", "", "list", ["", "v1", "other", "pods", "", ""]),
        ("GET", "/api/v1/namespaces/other/pods/foo", "", "get", ["", "v1", "other", "pods", "", "foo"]),
        ("HEAD", "/api/v1/namespaces/other/pods/foo", "", "get", ["", "v1", "other", "pods", "", "foo"]),
        ("GET", "/api/v1/pods", "", "list", ["", "v1", "", "pods", "", ""]),
        ("HEAD", "/api/v1/pods", "", "list", ["", "v1", "", "pods", "", ""]),
        ("GET", "/api/v1/namespaces/other/pods/foo/status", "", "get", ["", "v1", "other", "pods", "status", "foo"]),
        ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "", "get", ["", "v1", "other", "pods", "proxy", "foo"]),
        ("PUT", "/api/v1/namespaces/other/finalize", "", "update", ["", "v1", "other", "namespaces", "finalize", "other"]),
        ("PUT", "/api/v1/namespaces/other/status", "", "update", ["", "v1", "other", "namespaces", "status", "other"]),
        ("PATCH", "/api/v1/namespaces/other/pods/foo", "", "patch", ["", "v1", "other", "pods", "", "foo"]),
        ("DELETE", "/api/v1/namespaces/other/pods/foo", "", "delete", ["", "v1", "other", "pods", "", "foo"]),
        ("POST", "/api/v1/namespaces/other/pods", "", "create", ["", "v1", "other", "pods", "", ""]),
        ("DELETE", "/api/v1/nodes", "", "deletecollection", ["", "v1", "", "nodes", "", ""]),
        ("DELETE", "/api/v1/namespaces", "", "deletecollection", ["", "v1", "", "namespaces", "", ""]),
        ("DELETE", "/api/v1/namespaces/other/pods", "", "deletecollection", ["", "v1", "other", "pods", "", ""]),
        ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "", "deletecollection", ["extensions", "v1", "other", "pods", "", ""]),
        ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "", "create", ["extensions", "v1beta3", "other", "pods", "", ""]),
        ("GET", "/apis/batch/v1/job/foo/scale", "", "get", ["batch", "v1", "", "job", "scale", "foo"]),
        ("OPTIONS", "/api/v1/pods", "", "", ["", "v1", "", "pods", "", ""]),
    ]);
}

#[test]
#[rustfmt::skip]
fn watch_and_proxy_as_path_segments_are_verbs() {
    check(&[
        ("GET", "/api/v1/watch/pods", "", "watch", ["", "v1", "", "pods", "", ""]),
        ("GET", "/api/v1/watch/namespaces/other/pods", "", "watch", ["", "v1", "other", "pods", "", ""]),
        ("DELETE", "/api/v1/watch/pods", "", "watch", ["", "v1", "", "pods", "", ""]),
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "", "proxy", ["", "v1", "other", "pods", "", "foo"]),
        // A proxy's further segments are the proxied path, never a subresource.
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "", "proxy", ["", "v1", "other", "pods", "", "foo"]),
    ]);
    for path in ["/api/v1/watch", "/api/v1/proxy", "/apis/g/v1/watch"] {
        let read = RequestInfo::read("GET", path, None, false);
        assert!(matches!(read, Err(PathError::NoResource(_))), "{path}");
    }
}

#[test]
#[rustfmt::skip]
fn the_watch_parameter_reads_as_the_apiserver_converts_a_bool() {
    for (query, verb) in [
        ("watch=true", "watch"),
        ("watch=1", "watch"),
        ("watch", "watch"),
        ("watch=", "watch"),
        ("watch=yes", "watch"),
        ("watch=false", "list"),
        ("watch=FALSE", "list"),
        ("watch=0", "list"),
        ("watch=0&watch=1", "list"),
        ("limit=5", "list"),
        // Go's query parser skips a pair with a ';' or a broken escape.
        ("watch=1;", "list"),
        ("watch=%zz&watch=1", "watch"),
    ] {
        let info = read("GET", "/api/v1/namespaces/other/pods", query);
        assert_eq!(info.verb_text(), verb, "{query}");
    }
    // A named read is never a list or a watch.
    assert_eq!(read("GET", "/api/v1/namespaces/o/pods/p", "watch=true").verb_text(), "get");
}

#[test]
#[rustfmt::skip]
fn a_field_selector_on_the_name_names_the_object() {
    let named = |verb: &str, name: &str| (verb.to_string(), name.to_string());
    for (query, expected) in [
        ("", named("list", "")),
        ("fieldSelector=metadata.name=name1", named("list", "name1")),
        ("fieldSelector=metadata.name%3D%3Dname1", named("list", "name1")),
        ("watch=true&fieldSelector=metadata.name=name1", named("watch", "name1")),
        ("fieldSelector=foo=bar&labelSelector=baz=qux", named("list", "")),
        // An unparseable selector (a term with no operator) names nothing.
        ("fieldSelector=metadata.name=name1,foo", named("list", "")),
        ("fieldSelector=metadata.name=name1,foo&watch=true", named("watch", "")),
        // Only the first fieldSelector counts.
        ("fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar", named("list", "foo")),
        ("fieldSelector=metadata.name=ok;&fieldSelector=metadata.name=secret", named("list", "secret")),
        // Among several name terms, the first in sorted order.
        ("fieldSelector=metadata.name=b,metadata.name=a", named("list", "a")),
        ("fieldSelector=metadata.name!=x", named("list", "")),
        ("fieldSelector=metadata.name=a%5C%2Cb", named("list", "a,b")),
        ("fieldSelector=metadata.name=a%5Cb", named("list", "")),
        ("fieldSelector=metadata.name=..", named("list", "")),
        // List options that do not decode name nothing; only the first counts.
        ("fieldSelector=metadata.name=x&limit=ten", named("list", "")),
        ("fieldSelector=metadata.name=x&limit=1&limit=ten", named("list", "x")),
    ] {
        assert_eq!(selected(query), expected, "{query}");
    }
    let delete = read("DELETE", "/apis/group/version/resource", "fieldSelector=metadata.name=x");
    assert_eq!(delete.verb_text(), "deletecollection");
    assert_eq!(delete.resource().unwrap().name, "");
}

#[test]
fn non_resource_paths_keep_the_method_as_verb() {
    for path in [
        "/",
        "/api",
        "/apis",
        "/api/v1",
        "/apis/extensions/v1beta1",
        "/not-api/version/resource",
        "/version",
        "/healthz",
    ] {
        let info = read("GET", path, "");
        assert_eq!((info.verb(), info.resource()), (Verb::Get, None), "{path}");
    }
    assert_eq!(read("POST", "/apis", "").verb_text(), "post");
    assert_eq!(read("PROPFIND", "/version", "").verb_text(), "propfind");
}

#[test]
#[rustfmt::skip]
fn upgrades_are_creates_and_long_running_requests_are_known() {
    let upgrade = |path, query| RequestInfo::read("GET", path, Some(query), true).unwrap();
    let exec = upgrade("/api/v1/namespaces/d/pods/p/exec", "command=sh");
    assert_eq!((exec.verb(), exec.upgrade(), exec.long_running()), (Verb::Create, true, true));
    let forward = RequestInfo::read("POST", "/api/v1/namespaces/d/pods/p/portforward", None, true).unwrap();
    assert_eq!(forward.verb(), Verb::Create);
    // Other upgrades keep their method's verb: no Upgrade header turns a
    // read or a delete into a create.
    let watch = upgrade("/api/v1/pods", "watch=1");
    assert_eq!((watch.verb(), watch.long_running()), (Verb::Watch, true));
    let delete = RequestInfo::read("DELETE", "/api/v1/namespaces/d/pods/p", None, true).unwrap();
    assert_eq!(delete.verb(), Verb::Delete);
    let exec = RequestInfo::read("DELETE", "/api/v1/namespaces/d/pods/p/exec", None, true).unwrap();
    assert_eq!(exec.verb(), Verb::Delete);
    let secret = upgrade("/api/v1/namespaces/d/secrets/s", "");
    assert_eq!(secret.verb(), Verb::Get);
    for (method, path, query, long) in [
        ("GET", "/api/v1/pods", "watch=1", true),
        ("GET", "/api/v1/watch/pods", "", true),
        ("GET", "/api/v1/namespaces/d/pods/p/log", "follow=true", true),
        ("POST", "/api/v1/namespaces/d/pods/p/portforward", "", true),
        ("GET", "/api/v1/namespaces/d/pods/p/proxy/x", "", true),
        ("GET", "/api/v1/proxy/namespaces/d/pods/p", "", true),
        ("GET", "/debug/pprof/profile", "", true),
        ("GET", "/api/v1/pods", "", false),
        ("GET", "/api/v1/namespaces/d/pods/p/status", "", false),
        ("GET", "/debug/pprof", "", false),
    ] {
        assert_eq!(read(method, path, query).long_running(), long, "{method} {path}?{query}");
    }
}

#[test]
fn escapes_are_read_after_decoding() {
    let info = read("DELETE", "/api/v1/namespaces/default/p%6Fds/busybox", "");
    let resource = info.resource().unwrap();
    assert_eq!(
        (info.verb(), resource.resource, resource.name),
        (Verb::Delete, "pods", "busybox")
    );
    assert_eq!(
        info.path().as_str(),
        "/api/v1/namespaces/default/pods/busybox"
    );
    let deep = "/api/v1/namespaces/n/pods/p/proxy/a/b/c/d/e/f/g/h";
    assert_eq!(
        read("GET", deep, "").resource().unwrap().subresource,
        "proxy"
    );
}
