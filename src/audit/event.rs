//! The `audit.k8s.io/v1` `Event`, as kube-apiserver writes it
//! (k8s.io/apiserver/pkg/apis/audit/v1/types.go).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::request::Resource;

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

/// What a resource request is about, borrowed from the request.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    /// The resource (e.g. `pods`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub resource: &'a str,
    /// The namespace, for namespaced requests.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: &'a str,
    /// The object's name.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    /// The API group (`""` for the core group).
    pub api_group: &'a str,
    /// The API version.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub api_version: &'a str,
    /// The subresource (`log`, `exec`, …).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub subresource: &'a str,
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

/// One audit event, one JSON line; it borrows what its request's record
/// holds, so writing it copies nothing but the line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    /// `Event`.
    pub kind: &'static str,
    /// `audit.k8s.io/v1`.
    pub api_version: &'static str,
    /// The level the policy chose.
    pub level: Level,
    /// The request's audit ID (also `Audit-Id` to the client and upstream).
    #[serde(rename = "auditID")]
    pub audit_id: &'a str,
    /// This event's stage.
    pub stage: Stage,
    /// The URI as the client sent it.
    #[serde(rename = "requestURI")]
    pub request_uri: &'a str,
    /// The Kubernetes verb.
    pub verb: &'a str,
    /// Who kubegate acts as upstream, rendered once at start-up.
    pub user: &'a RawValue,
    /// The local client's address.
    #[serde(rename = "sourceIPs", skip_serializing_if = "<[String]>::is_empty")]
    pub source_ips: &'a [String],
    /// The client's `User-Agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// The object, for resource requests, rendered once per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<&'a RawValue>,
    /// The answer (not on `RequestReceived`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request body, at level `Request` and above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<&'a RawValue>,
    /// The response body, at level `RequestResponse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<&'a RawValue>,
    /// When the request arrived.
    pub request_received_timestamp: Micros,
    /// When this stage was reached.
    pub stage_timestamp: Micros,
    /// Decisions and what only the proxy knows.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: &'a BTreeMap<&'static str, Cow<'static, str>>,
}

/// A timestamp as the apiserver writes them: RFC 3339, microseconds, UTC.
#[derive(Debug, Clone, Copy)]
pub struct Micros(pub jiff::Timestamp);

impl Micros {
    /// `2006-01-02T15:04:05.000000Z`: digits put in place, since two of
    /// these go in every event and `fmt` machinery costs several times as
    /// much.
    fn text(self) -> [u8; 27] {
        let at = jiff::tz::Offset::UTC.to_datetime(self.0);
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |end: usize, width: usize, value: i64| {
            let mut value = value.max(0);
            for digit in text[end - width..end].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(4, 4, at.year().into());
        put(7, 2, at.month().into());
        put(10, 2, at.day().into());
        put(13, 2, at.hour().into());
        put(16, 2, at.minute().into());
        put(19, 2, at.second().into());
        put(26, 6, (at.subsec_nanosecond() / 1000).into());
        text
    }
}

impl Serialize for Micros {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(std::str::from_utf8(&self.text()).unwrap_or_default())
    }
}

impl<'a> From<Resource<'a>> for ObjectRef<'a> {
    fn from(resource: Resource<'a>) -> Self {
        ObjectRef {
            resource: resource.resource,
            namespace: resource.namespace,
            name: resource.name,
            api_group: resource.group,
            api_version: resource.version,
            subresource: resource.subresource,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestInfo;
    use proptest::prelude::*;

    /// The attributes an event records of a request: its verb and object.
    fn audited(method: &str, path: &str, query: &str) -> (String, Option<String>) {
        let info = RequestInfo::read(method, path, Some(query), false)
            .unwrap_or_else(|error| panic!("{path}?{query} is refused: {error}"));
        let object = info
            .resource()
            .map(|resource| format!("{:?}", ObjectRef::from(resource)));
        (info.verb_text().into_owned(), object)
    }

    /// `text` with each byte percent-encoded where `escape` says, in upper
    /// or lower case hex: a spelling the apiserver decodes to `text`.
    fn spelled(text: &str, escape: &[(bool, bool)]) -> String {
        text.bytes()
            .zip(escape.iter().cycle())
            .map(|(byte, &(escaped, upper))| match (escaped, upper) {
                (false, _) => (byte as char).to_string(),
                (true, true) => format!("%{byte:02X}"),
                (true, false) => format!("%{byte:02x}"),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Audit reads the request the apiserver acts on: any spelling of
        /// a path (escaped letters, digits, dashes) and of a field selector
        /// is recorded with the plain spelling's verb and object.
        #[test]
        fn every_spelling_is_audited_as_its_plain_form(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
            group in prop::sample::select(vec!["api/v1", "apis/apps/v1", "apis/batch/v1"]),
            namespace in proptest::option::of("[a-z0-9][a-z0-9-]{0,8}"),
            resource in prop::sample::select(vec!["pods", "deployments", "secrets", "configmaps"]),
            name in proptest::option::of("[a-z0-9][a-z0-9-]{0,8}"),
            subresource in proptest::option::of(prop::sample::select(vec!["exec", "log", "status", "attach", "portforward"])),
            selected in proptest::option::of("[a-z0-9][a-z0-9-]{0,8}"),
            escape in proptest::collection::vec((prop::bool::weighted(0.3), any::<bool>()), 1..64),
        ) {
            let mut segments = vec![group.to_string()];
            if let Some(namespace) = &namespace {
                segments.push(format!("namespaces/{namespace}"));
            }
            segments.push(resource.to_string());
            if let Some(name) = &name {
                segments.push(name.clone());
                if let Some(subresource) = subresource {
                    segments.push(subresource.to_string());
                }
            }
            let plain_path = format!("/{}", segments.join("/"));
            let plain_query = selected
                .as_ref()
                .map(|name| format!("fieldSelector=metadata.name%3D{name}"))
                .unwrap_or_default();
            let path: String = plain_path
                .split('/')
                .map(|segment| spelled(segment, &escape))
                .collect::<Vec<_>>()
                .join("/");
            let query = selected
                .as_ref()
                .map(|name| format!("fieldSelector={}", spelled(&format!("metadata.name={name}"), &escape)))
                .unwrap_or_default();
            prop_assert_eq!(
                audited(method, &path, &query),
                audited(method, &plain_path, &plain_query),
                "{}?{}", path, query
            );
        }
    }

    #[test]
    fn timestamps_have_microseconds() {
        let at: jiff::Timestamp = "2026-01-02T03:04:05.123456789Z".parse().unwrap();
        let written = |at| serde_json::to_string(&Micros(at)).unwrap();
        assert_eq!(written(at), r#""2026-01-02T03:04:05.123456Z""#);
        let early: jiff::Timestamp = "0987-06-05T04:03:02.000001Z".parse().unwrap();
        assert_eq!(written(early), r#""0987-06-05T04:03:02.000001Z""#);
    }
}
