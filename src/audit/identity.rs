//! Who kubegate is upstream, for the `user` of every event: asked of the
//! apiserver with a `SelfSubjectReview` where it offers one, else read from
//! the client certificate (CN is the user, O the groups).

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Either, Full};

use super::event::UserInfo;
use super::{Audit, Settings};
use crate::config::{AuditConfig, StartupError};
use crate::upstream::Upstream;

/// The user a client certificate names.
pub fn from_certificate(der: &[u8]) -> UserInfo {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return UserInfo::default();
    };
    let subject = cert.subject();
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str().unwrap_or_default().to_string()
    };
    UserInfo {
        username: subject
            .iter_common_name()
            .next()
            .map(text)
            .unwrap_or_default(),
        groups: subject.iter_organization().map(text).collect(),
        ..UserInfo::default()
    }
}

/// Asks the apiserver who kubegate is (`authentication.k8s.io/v1`
/// `SelfSubjectReview`).
async fn self_subject_review(upstream: &Upstream) -> Option<UserInfo> {
    let uri = upstream
        .uri_for(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews"
                .parse()
                .ok()?,
        )
        .ok()?;
    let body = Bytes::from_static(
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview","metadata":{}}"#,
    );
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Right(Either::Left(Full::new(body))))
        .ok()?;
    upstream.authorize(request.headers_mut());
    let response = upstream.send(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).ok()?;
    serde_json::from_value(review["status"]["userInfo"].clone()).ok()
}

/// Starts auditing, learning kubegate's identity first.
///
/// # Errors
///
/// A [`StartupError`] when the log cannot be opened and
/// `--audit-failure=refuse`.
pub async fn start(
    config: AuditConfig,
    upstream: &Upstream,
    fallback: UserInfo,
) -> Result<Audit, StartupError> {
    let user = match self_subject_review(upstream).await {
        Some(user) => user,
        None => {
            tracing::info!(
                "the apiserver answered no SelfSubjectReview; audit events name the client certificate's user"
            );
            fallback
        }
    };
    let webhook = match config.webhook {
        Some(mut webhook) => {
            // The collector's URL path is where batches go, not a prefix.
            let path = std::mem::take(&mut webhook.collector.server_path);
            Some(super::webhook::Settings {
                collector: Upstream::new(webhook.collector).await?,
                path,
                batch_max_size: webhook.batch_max_size,
                batch_max_wait: webhook.batch_max_wait,
                buffer: webhook.buffer,
                initial_backoff: webhook.initial_backoff,
            })
        }
        None => None,
    };
    let log_path = config.log.clone();
    let settings = Settings {
        log: config.log,
        webhook,
        policy: config.policy,
        failure: config.failure,
        max_body_bytes: config.max_body_bytes,
    };
    Audit::start(settings, user).map_err(|error| StartupError::File {
        what: "audit log",
        path: match log_path {
            Some(super::log::Target::File { path, .. }) => path.display().to_string(),
            _ => "-".into(),
        },
        message: format!("{}; fix --audit-log-path", crate::config::io_reason(&error)),
    })
}
