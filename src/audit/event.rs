//! The `audit.k8s.io/v1` `Event`, as kube-apiserver writes it
//! (k8s.io/apiserver/pkg/apis/audit/v1/types.go), and the request
//! attributes (verb, object) read from a request the way the apiserver's
//! RequestInfoFactory reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Nothing.
    None,
    /// Who, what, when, the answer's code.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata and both bodies.
    RequestResponse,
}

/// When in a request's life the event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Before anything is done with the request.
    RequestReceived,
    /// The response head is sent (long-running requests only).
    ResponseStarted,
    /// The response is done.
    ResponseComplete,
    /// The handler failed badly.
    Panic,
}

/// The identity a request acted as (`authentication/v1.UserInfo`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name.
    #[serde(default)]
    pub username: String,
    /// The user's uid, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a resource request is about.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// The resource (e.g. `pods`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// The namespace, for namespaced requests.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The object's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The API group (`""` for the core group).
    pub api_group: String,
    /// The API version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The subresource (`log`, `exec`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The answer, as a `metav1.Status`: only `code` on success.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponseStatus {
    /// Always empty.
    pub metadata: BTreeMap<String, String>,
    /// `Failure` for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `StatusReason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The HTTP status code.
    pub code: u16,
}

/// One audit event, one JSON line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `Event`.
    pub kind: &'static str,
    /// `audit.k8s.io/v1`.
    pub api_version: &'static str,
    /// The level the policy chose.
    pub level: Level,
    /// The request's audit ID (also `Audit-Id` to the client and upstream).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// This event's stage.
    pub stage: Stage,
    /// The URI as the client sent it.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The Kubernetes verb.
    pub verb: String,
    /// Who kubegate acts as upstream.
    pub user: UserInfo,
    /// The local client's address.
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The client's `User-Agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The object, for resource requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    /// The answer (not on `RequestReceived`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request body, at level `Request` and above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Box<RawValue>>,
    /// The response body, at level `RequestResponse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Box<RawValue>>,
    /// When the request arrived (RFC 3339, microseconds).
    pub request_received_timestamp: String,
    /// When this stage was reached.
    pub stage_timestamp: String,
    /// Decisions and what only the proxy knows.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<&'static str, String>,
}

/// A timestamp as the apiserver writes them: RFC 3339, microseconds, UTC.
pub fn timestamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// The verb and object of a request, as the apiserver's RequestInfoFactory
/// reads them; `None` for the object means a non-resource request.
pub fn request_info(
    method: &str,
    path: &str,
    query: Option<&str>,
    upgrade: bool,
) -> (String, Option<ObjectRef>) {
    let watch_param = query
        .unwrap_or_default()
        .split('&')
        .any(|p| matches!(p, "watch=true" | "watch=1" | "watch"));
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (api_group, api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return (method.to_ascii_lowercase(), None),
    };
    if rest.is_empty() {
        // Discovery (`/api/v1`, `/apis/apps/v1`) is a non-resource request.
        return (method.to_ascii_lowercase(), None);
    }
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let mut object = ObjectRef {
        api_group: api_group.to_string(),
        api_version: api_version.to_string(),
        ..ObjectRef::default()
    };
    let rest = match rest {
        ["namespaces", namespace, more @ ..] if !more.is_empty() => {
            object.namespace = namespace.to_string();
            more
        }
        ["namespaces", namespace] => {
            object.resource = "namespaces".into();
            object.name = namespace.to_string();
            &[][..]
        }
        other => other,
    };
    if let [resource, more @ ..] = rest {
        object.resource = resource.to_string();
        if let [name, sub @ ..] = more {
            object.name = name.to_string();
            object.subresource = sub.join("/");
        }
    }
    let verb = match method {
        _ if upgrade => "create",
        "GET" | "HEAD" if watch_prefix || watch_param => "watch",
        "GET" | "HEAD" if object.name.is_empty() => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if object.name.is_empty() => "deletecollection",
        "DELETE" => "delete",
        other => return (other.to_ascii_lowercase(), Some(object)),
    };
    (verb.to_string(), Some(object))
}

/// Whether kube-apiserver treats the request as long-running (it then
/// writes a `ResponseStarted` event).
pub fn long_running(verb: &str, object: Option<&ObjectRef>) -> bool {
    verb == "watch"
        || verb == "proxy"
        || object.is_some_and(|o| {
            matches!(
                o.subresource.as_str(),
                "attach" | "exec" | "proxy" | "log" | "portforward"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str, query: Option<&str>) -> (String, Option<ObjectRef>) {
        request_info(method, path, query, false)
    }

    #[test]
    fn verbs_and_objects_read_like_the_apiservers() {
        let (verb, object) = info("GET", "/api/v1/namespaces/default/pods", None);
        assert_eq!(verb, "list");
        let object = object.unwrap();
        assert_eq!(
            (
                object.resource.as_str(),
                object.namespace.as_str(),
                object.api_version.as_str()
            ),
            ("pods", "default", "v1")
        );
        assert_eq!(
            info("GET", "/api/v1/namespaces/default/pods", Some("watch=true")).0,
            "watch"
        );
        assert_eq!(
            info("GET", "/api/v1/watch/namespaces/default/pods", None).0,
            "watch"
        );
        assert_eq!(
            info("GET", "/api/v1/namespaces/default/pods/web", None).0,
            "get"
        );
        assert_eq!(
            info("POST", "/api/v1/namespaces/default/pods", None).0,
            "create"
        );
        assert_eq!(
            info("PUT", "/api/v1/namespaces/default/pods/web", None).0,
            "update"
        );
        assert_eq!(
            info("PATCH", "/api/v1/namespaces/default/pods/web", None).0,
            "patch"
        );
        assert_eq!(
            info("DELETE", "/api/v1/namespaces/default/pods/web", None).0,
            "delete"
        );
        assert_eq!(
            info("DELETE", "/api/v1/namespaces/default/pods", None).0,
            "deletecollection"
        );
        let (verb, object) = info(
            "GET",
            "/apis/apps/v1/namespaces/ns/deployments/d/scale",
            None,
        );
        let object = object.unwrap();
        assert_eq!(verb, "get");
        assert_eq!(
            (
                object.api_group.as_str(),
                object.subresource.as_str(),
                object.name.as_str()
            ),
            ("apps", "scale", "d")
        );
        let (verb, object) = info("GET", "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (verb.as_str(), object.unwrap().resource.as_str()),
            ("get", "namespaces")
        );
        assert_eq!(info("GET", "/version", None), ("get".to_string(), None));
        assert_eq!(info("GET", "/api", None), ("get".to_string(), None));
        let (verb, object) = request_info(
            "GET",
            "/api/v1/namespaces/d/pods/p/exec",
            Some("command=sh"),
            true,
        );
        assert_eq!(
            (verb.as_str(), object.unwrap().subresource.as_str()),
            ("create", "exec")
        );
    }

    #[test]
    fn timestamps_have_microseconds() {
        let at: jiff::Timestamp = "2026-01-02T03:04:05.123456789Z".parse().unwrap();
        assert_eq!(timestamp(at), "2026-01-02T03:04:05.123456Z");
    }
}
