//! Rewriting a request for the apiserver and its response for the client:
//! hop-by-hop headers out, the client's credentials out (unless allowed),
//! `X-Forwarded-*` set from the connection and never copied from the client,
//! kubegate's credentials in. Bodies are not touched here: they stream.

use http::HeaderValue;
use http::header::{self, HeaderMap, HeaderName};

use crate::client::ClientOrigin;
use crate::upstream::Upstream;

/// Where a request goes upstream and for whom: what both ways out (the
/// forwarder and the upgrade relay) need to rewrite a request.
pub struct Outbound<'a> {
    /// The apiserver.
    pub upstream: &'a Upstream,
    /// The client's connection.
    pub client: &'a ClientOrigin,
    /// `--forward-client-credentials`.
    pub forward_client_credentials: bool,
    /// kubegate's audit ID for the request, which the apiserver adopts.
    pub audit_id: Option<HeaderValue>,
}

impl Outbound<'_> {
    /// Rewrites a request's headers for the apiserver and adds kubegate's
    /// credentials.
    pub fn request_headers(&self, headers: &mut HeaderMap) {
        request_headers(headers, self.client, self.forward_client_credentials);
        self.upstream.authorize(headers);
        // Set after the hop-by-hop headers are gone, so that a client's
        // `Connection: Audit-ID` cannot strip it.
        if let Some(id) = &self.audit_id {
            headers.insert(AUDIT_ID, id.clone());
        }
    }
}

const AUDIT_ID: HeaderName = HeaderName::from_static("audit-id");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers a client could use to lie about where a request came from; the
/// apiserver records `X-Forwarded-For` and `X-Real-Ip` in audit `sourceIPs`.
const CLIENT_ORIGIN: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Rewrites the headers of a request bound for the apiserver. The caller
/// adds kubegate's credentials after this.
pub fn request_headers(
    headers: &mut HeaderMap,
    origin: &ClientOrigin,
    forward_client_credentials: bool,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
    crate::access::drop_bearer_subprotocol(headers);
    let host = headers.remove(header::HOST);
    for name in &CLIENT_ORIGIN {
        headers.remove(name);
    }
    if !forward_client_credentials {
        strip_client_credentials(headers);
    }
    if let Some(ip) = &origin.forwarded_for {
        headers.insert(CLIENT_ORIGIN[0].clone(), ip.clone());
    }
    if let Some(host) = host {
        headers.insert(CLIENT_ORIGIN[1].clone(), host);
    }
    headers.insert(CLIENT_ORIGIN[2].clone(), origin.proto.clone());
}

/// Drops `Authorization`, every `Impersonate-*` header and the front-proxy
/// identity headers (`X-Remote-User`, `-Group`, `-Extra-*`), which an
/// apiserver believes when kubegate authenticates with a front-proxy
/// certificate.
pub fn strip_client_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    let impersonation: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("impersonate-") || name.starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for name in impersonation {
        headers.remove(name);
    }
}

/// Rewrites the headers of an ordinary (non-101) response for the client.
pub fn response_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn origin() -> ClientOrigin {
        ClientOrigin {
            forwarded_for: Some(HeaderValue::from_static("127.0.0.1")),
            proto: HeaderValue::from_static("http"),
            peer: crate::client::Peer::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn client_origin_and_credentials_are_replaced() {
        let mut map = headers(&[
            ("host", "localhost:8001"),
            ("authorization", "Bearer stolen"),
            ("impersonate-user", "admin"),
            ("impersonate-group", "system:masters"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("accept", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        request_headers(&mut map, &origin(), false);
        assert_eq!(map.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(map.get("x-forwarded-host").unwrap(), "localhost:8001");
        assert_eq!(map.get("x-forwarded-proto").unwrap(), "http");
        for gone in [
            "host",
            "authorization",
            "impersonate-user",
            "impersonate-group",
            "x-real-ip",
            "forwarded",
        ] {
            assert!(!map.contains_key(gone), "{gone} was kept");
        }
        assert_eq!(map.get("accept").unwrap(), "application/json");
        assert_eq!(map.get("content-encoding").unwrap(), "gzip");
    }

    #[test]
    fn credentials_pass_when_allowed() {
        let mut map = headers(&[
            ("authorization", "Bearer mine"),
            ("impersonate-user", "bob"),
        ]);
        request_headers(&mut map, &origin(), true);
        assert_eq!(map.get("authorization").unwrap(), "Bearer mine");
        assert_eq!(map.get("impersonate-user").unwrap(), "bob");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        request_headers(&mut map, &origin(), false);
        assert_eq!(
            map.keys()
                .map(|k| k.as_str())
                .filter(|k| !k.starts_with("x-forwarded"))
                .collect::<Vec<_>>(),
            ["x-kept"]
        );
    }
}
