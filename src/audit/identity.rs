//! Who kubegate is upstream, for the `user` of every event: asked of the
//! apiserver with a `SelfSubjectReview` where it offers one, else read from
//! the client certificate (CN is the user, O the groups).

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Either, Full};

use super::event::UserInfo;
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
pub async fn self_subject_review(upstream: &Upstream) -> Option<UserInfo> {
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
