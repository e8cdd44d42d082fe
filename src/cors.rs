//! Browsers: which web origins may use kubegate, and the CORS answers that
//! let the allowed ones read what they fetch.
//!
//! Browsers do not apply CORS to WebSockets, so without an origin check any
//! page a developer visits could open `ws://localhost:8001/…/exec` with the
//! developer's credentials (cross-site WebSocket hijacking). kubegate
//! refuses every request that carries an `Origin` unless it is kubegate's
//! own origin (a page served by `--www`) or matches `--accept-origins`.
//! Clients that are not browsers send no `Origin` and are not affected.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::ProxyBody;
use crate::filters::Denial;
use crate::pattern::PatternList;

/// Response headers a page may read (the apiserver's useful ones).
const EXPOSED: &str = "Audit-Id, Warning, Content-Type, Content-Length, Content-Encoding, Date, Location, Retry-After, X-Kubernetes-Pf-Flowschema-Uid, X-Kubernetes-Pf-Prioritylevel-Uid";
/// Methods an allowed page may use: everything the Kubernetes API serves.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// `--accept-origins`, plus kubegate's own origin.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Patterns for origins allowed besides kubegate's own.
    pub accept: PatternList,
}

impl OriginPolicy {
    /// Whether a request from `origin` may proceed. `host` is the request's
    /// `Host` and `scheme` kubegate's own (`http` or `https`): an origin
    /// equal to `scheme://host` is kubegate itself.
    ///
    /// # Errors
    ///
    /// A [`Denial`] naming `--accept-origins`.
    pub fn check(
        &self,
        origin: &HeaderValue,
        host: Option<&str>,
        scheme: &str,
    ) -> Result<(), Denial> {
        let origin = origin.to_str().unwrap_or_default();
        let same = host.is_some_and(|host| {
            origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        });
        if same || self.accept.is_match(origin) {
            return Ok(());
        }
        Err(Denial {
            flag: "accept-origins",
            subject: origin.to_string(),
            pattern: None,
        })
    }
}

/// The Fetch Metadata resource-isolation policy for requests without an
/// `Origin`: a browser marks an `<img>`, a `no-cors` fetch or a link from
/// another site `Sec-Fetch-Site: cross-site` (or `same-site`) and sends no
/// `Origin`, so the origin check never sees it. Such a request is refused;
/// `none` (typed by the user) and `same-origin` pass, as do clients that
/// send no Fetch Metadata at all.
///
/// # Errors
///
/// A [`Denial`] naming `--accept-origins`.
pub fn check_fetch_site(headers: &HeaderMap) -> Result<(), Denial> {
    let site = headers
        .get("sec-fetch-site")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
        return Err(Denial {
            flag: "accept-origins",
            subject: format!(
                "a {} request without Origin (an <img>, a no-cors fetch or a link from another site)",
                String::from_utf8_lossy(site)
            ),
            pattern: None,
        });
    }
    Ok(())
}

/// Whether this is a CORS preflight (answered by kubegate, never forwarded).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin: every API method, the
/// headers the page asked for (credentials are checked on the real request,
/// not here), cached for ten minutes.
pub fn preflight(origin: &HeaderValue, request: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    allow(headers, origin);
    headers.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    response
}

/// Marks a response as readable by `origin`, replacing any CORS headers the
/// apiserver sent (its `--cors-allowed-origins` knows nothing of kubegate's).
pub fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    let upstream: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with("access-control-allow-")
                || name.as_str() == "access-control-expose-headers"
        })
        .filter(|name| {
            *name != header::ACCESS_CONTROL_ALLOW_METHODS
                && *name != header::ACCESS_CONTROL_ALLOW_HEADERS
                && *name != header::ACCESS_CONTROL_MAX_AGE
        })
        .cloned()
        .collect();
    for name in upstream {
        headers.remove(name);
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &str) -> OriginPolicy {
        OriginPolicy {
            accept: PatternList::parse(patterns).unwrap(),
        }
    }

    #[test]
    fn kubegates_own_origin_is_always_allowed() {
        let origin = HeaderValue::from_static("http://localhost:8001");
        assert!(
            policy("")
                .check(&origin, Some("localhost:8001"), "http")
                .is_ok()
        );
        assert!(
            policy("")
                .check(&origin, Some("localhost:8002"), "http")
                .is_err()
        );
        assert!(
            policy("")
                .check(&origin, Some("localhost:8001"), "https")
                .is_err()
        );
    }

    #[test]
    fn other_origins_need_a_pattern() {
        let origin = HeaderValue::from_static("https://tool.example");
        let refused = policy("")
            .check(&origin, Some("localhost:8001"), "http")
            .unwrap_err();
        assert_eq!(refused.flag, "accept-origins");
        assert!(refused.to_string().contains("--accept-origins"));
        assert!(
            policy(r"^https://tool\.example$")
                .check(&origin, Some("localhost:8001"), "http")
                .is_ok()
        );
        let null = HeaderValue::from_static("null");
        assert!(
            policy(r"^https://tool\.example$")
                .check(&null, Some("localhost:8001"), "http")
                .is_err()
        );
    }

    #[test]
    fn upstream_cors_headers_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        let origin = HeaderValue::from_static("https://tool.example");
        allow(&mut headers, &origin);
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://tool.example"
        );
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(
            headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
                .to_str()
                .unwrap()
                .contains("Audit-Id")
        );
    }
}
