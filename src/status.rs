//! Every refusal and failure as the apiserver would answer it: an HTTP status
//! and a `metav1.Status` JSON body whose message says what went wrong and
//! what to do. This is the only place where an error becomes HTTP.

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::ProxyBody;
use crate::filters::Denial;
use crate::policy::Refusal;
use crate::request::PathError;

/// Why a request was not served. Grouped by side, as the log reads them.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // Downstream: the request itself.
    /// The path can be read more than one way, so it is refused.
    #[error("{0}")]
    BadPath(#[from] PathError),
    /// A filter refused the request.
    #[error("{0}")]
    Denied(#[from] Denial),
    /// `--policy-file` or `--read-only` refused the request.
    #[error("{0}")]
    Forbidden(Box<Refusal>),
    /// The access token is missing or wrong.
    #[error(
        "this kubegate requires its access token: send \"Authorization: Bearer TOKEN\" or, for a WebSocket, the subprotocol base64url.bearer.authorization.k8s.io.BASE64URL(TOKEN); the token is in --access-token-file or was printed when kubegate started"
    )]
    Unauthorized,
    /// An upgrade on a connection that cannot switch protocols (HTTP/1.0).
    #[error(
        "this connection cannot switch protocols; send exec, attach and port-forward over HTTP/1.1"
    )]
    NotUpgradable,
    /// `/clusters/<name>/` names no served context.
    #[error(
        "the path {0} names no context this kubegate serves; GET /clusters lists them, and each is served under /clusters/<context>/"
    )]
    UnknownContext(String),
    /// An exec, attach or port-forward upgrade that announces a body.
    #[error(
        "an exec, attach or port-forward upgrade carries no request body; send it without Content-Length or Transfer-Encoding"
    )]
    UpgradeWithBody,
    /// A WebSocket port-forward kubegate cannot serve as asked.
    #[error("{0}")]
    BadPortForward(String),
    /// A method kubegate does not relay to the API.
    #[error(
        "kubegate does not relay {0} requests to the API; exec, attach and port-forward use GET or POST with an upgrade"
    )]
    MethodNotAllowed(&'static str),
    /// The path is outside `--api-prefix` and `--www-prefix`.
    #[error("the path {0} is not served here (see --api-prefix and --www-prefix)")]
    NotFound(String),

    // Upstream: reaching the apiserver.
    /// No connection to the apiserver could be made.
    #[error(
        "cannot reach the apiserver at {server}: {reason}; check that it is running and that the kubeconfig's server address is right"
    )]
    Connect {
        /// The apiserver address from the kubeconfig.
        server: String,
        /// What failed, in words.
        reason: String,
    },
    /// The apiserver did not accept a connection in time.
    #[error(
        "the apiserver at {server} did not complete a connection within {seconds}s; it may be overloaded or unreachable"
    )]
    ConnectTimeout {
        /// The apiserver address.
        server: String,
        /// The limit that ran out.
        seconds: u64,
    },
    /// The forward proxy to the apiserver failed or refused.
    #[error(
        "proxy {proxy} {reason}; check the proxy's address and credentials (the kubeconfig's proxy-url, or HTTPS_PROXY and NO_PROXY)"
    )]
    Proxy {
        /// The proxy's `host:port`, never its credentials.
        proxy: String,
        /// What the proxy did.
        reason: String,
    },
    /// The TLS handshake with the apiserver failed.
    #[error("TLS with the apiserver at {server} failed: {source}; {hint}")]
    Tls {
        /// The apiserver address.
        server: String,
        /// The TLS error, kept typed until the message is rendered.
        #[source]
        source: rustls::Error,
        /// What the user can change.
        hint: &'static str,
    },
    /// The connection broke or the apiserver spoke nonsense.
    #[error("the apiserver at {server} broke off the request: {reason}")]
    Upstream {
        /// The apiserver address.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The audit log cannot be written and `--audit-failure=refuse`.
    #[error(
        "the audit log cannot be written, so kubegate refuses requests (--audit-failure=refuse); free disk space or fix --audit-log-path"
    )]
    AuditUnavailable,
    /// Every connection slot stayed taken by a busy connection or session,
    /// and an upgraded session holds one.
    #[error(
        "kubegate has {0} connections open, its --max-connections, and every one is busy: close an exec, attach or port-forward session, or raise the limit"
    )]
    AtConnectionLimit(usize),
    /// Sessions must be recorded, and cannot be now
    /// (`--record-failure=refuse`).
    #[error(
        "kubegate records exec and attach sessions and cannot now ({0}), so it refuses them (--record-failure=refuse); free space in --record-sessions-dir or raise its limits"
    )]
    RecordingUnavailable(String),
}

/// The `metav1.Status` body, written by kubegate.
#[derive(Debug, Serialize)]
struct Status<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Metadata,
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    code: u16,
}

#[derive(Debug, Serialize)]
struct Metadata {}

/// `metav1.StatusDetails`: what was refused.
#[derive(Debug, Serialize)]
struct Details<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    group: &'a str,
    kind: &'a str,
}

impl From<Box<Refusal>> for ProxyError {
    fn from(refusal: Box<Refusal>) -> Self {
        ProxyError::Forbidden(refusal)
    }
}

impl ProxyError {
    /// The status code and `metav1.StatusReason` for this error.
    pub fn code_and_reason(&self) -> (StatusCode, &'static str) {
        use ProxyError as E;
        use StatusCode as S;
        match self {
            E::BadPath(_) | E::NotUpgradable | E::UpgradeWithBody | E::BadPortForward(_) => {
                (S::BAD_REQUEST, "BadRequest")
            }
            E::Denied(_) | E::Forbidden(_) => (S::FORBIDDEN, "Forbidden"),
            E::Unauthorized => (S::UNAUTHORIZED, "Unauthorized"),
            E::NotFound(_) | E::UnknownContext(_) => (S::NOT_FOUND, "NotFound"),
            E::MethodNotAllowed(_) => (S::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            E::Connect { .. } => (S::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            E::ConnectTimeout { .. } => (S::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            E::Proxy { .. } => (S::BAD_GATEWAY, "InternalError"),
            E::Tls { .. } => (S::BAD_GATEWAY, "InternalError"),
            E::Upstream { .. } => (S::BAD_GATEWAY, "InternalError"),
            E::AuditUnavailable | E::AtConnectionLimit(_) | E::RecordingUnavailable(_) => {
                (S::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
        }
    }

    /// Whether kubegate itself refused the request (a filter, the access
    /// token, an unreadable path), rather than failing to serve it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ProxyError::Denied(_)
                | ProxyError::Forbidden(_)
                | ProxyError::Unauthorized
                | ProxyError::BadPath(_)
                | ProxyError::NotUpgradable
                | ProxyError::MethodNotAllowed(_)
                | ProxyError::UpgradeWithBody
                | ProxyError::BadPortForward(_)
        )
    }

    /// The response a client gets for this error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let (code, reason) = self.code_and_reason();
        let details = match self {
            ProxyError::Forbidden(refusal) => refusal.details.as_ref(),
            _ => None,
        };
        let mut response = status_body(code, reason, &self.to_string(), details);
        if let ProxyError::Unauthorized = self {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kubegate\""),
            );
        }
        response
    }
}

/// A `metav1.Status` failure response with the given code, reason and message.
pub fn status_response(
    code: StatusCode,
    reason: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    status_body(code, reason, message, None)
}

fn status_body(
    code: StatusCode,
    reason: &'static str,
    message: &str,
    details: Option<&(String, String, String)>,
) -> Response<ProxyBody> {
    let status = Status {
        kind: "Status",
        api_version: "v1",
        metadata: Metadata {},
        status: "Failure",
        message,
        reason,
        details: details.map(|(name, group, kind)| Details { name, group, kind }),
        code: code.as_u16(),
    };
    // Serialising a struct of strings and numbers cannot fail.
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_status_body_reads_like_the_apiservers() {
        let error = ProxyError::NotFound("/nope".into());
        let response = error.to_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "Status");
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["status"], "Failure");
        assert_eq!(value["reason"], "NotFound");
        assert_eq!(value["code"], 404);
        assert!(value["message"].as_str().unwrap().contains("--api-prefix"));
    }
}
