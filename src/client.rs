//! Who is at the other end of a connection: computed once when it is
//! accepted, read by the header rewriting, the origin check and audit.

use http::HeaderValue;

/// What kubegate knows about the client's connection, computed once per
/// connection so that requests only clone it.
#[derive(Debug, Clone)]
pub struct ClientOrigin {
    /// The peer's IP for `X-Forwarded-For`; none on a unix socket.
    pub forwarded_for: Option<HeaderValue>,
    /// `http` or `https`.
    pub proto: HeaderValue,
    /// The client as audit names it.
    pub peer: Peer,
}

impl ClientOrigin {
    /// kubegate's own scheme on this connection: `http` or `https`.
    pub fn proto_str(&self) -> &str {
        self.proto.to_str().unwrap_or("http")
    }
}

/// The client as audit names it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The peer's IP, for `sourceIPs`.
    pub ip: Option<String>,
    /// How to name the client in the `kubegate.io/client` annotation.
    pub description: String,
}
