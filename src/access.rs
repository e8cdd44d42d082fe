//! The local access token (opt in): when set, every API request must
//! present it, so that other local users and processes, or anything but a
//! sidecar's own app, cannot borrow the credentials kubegate holds.
//!
//! A client presents it as `Authorization: Bearer <token>` or, where headers
//! cannot be set (browser WebSockets), as the subprotocol
//! `base64url.bearer.authorization.k8s.io.<base64url(token)>` that
//! Kubernetes browser clients already send. It never goes upstream.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use http::header::{self, HeaderMap};
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

use crate::error::{StartupError, io_reason};

/// The WebSocket subprotocol prefix that carries a bearer token, where a
/// browser cannot set `Authorization`.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// The token, kept only as its SHA-256 digest so that comparisons take the
/// same time whatever the length or content of a guess.
pub struct AccessToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl AccessToken {
    /// A token from its text.
    pub fn new(token: &str) -> Self {
        AccessToken {
            digest: sha256(token.as_bytes()),
        }
    }

    /// Reads the token from `path` (surrounding white space ignored).
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming the file when it is unreadable or empty.
    pub fn load(path: &Path) -> Result<(Self, String), StartupError> {
        let fail = |message: String| StartupError::File {
            what: "access token file",
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "{}; write a token into it or use --generate-access-token",
                io_reason(&e)
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(fail(
                "is empty; write a token into it or use --generate-access-token".into(),
            ));
        }
        Ok((AccessToken::new(token), token.to_string()))
    }

    /// Writes a generated `token` to `path`, readable by this user only.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming the file when it cannot be written.
    pub fn write(path: &Path, token: &str) -> Result<(), StartupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |message: String| StartupError::File {
            what: "access token file",
            path: path.display().to_string(),
            message,
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(fail(
                "is a symbolic link, which kubegate will not write through; give the path of a regular file".into(),
            ));
        }
        // A new 0600 file beside the target, renamed over it: no reader ever
        // sees a partial token, and an old file's looser mode is not kept.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let fresh = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .and_then(|mut file| {
                file.write_all(format!("{token}\n").as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&fresh, path));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&fresh);
            fail(format!("{}; give a writable path", io_reason(&e)))
        })
    }

    /// A fresh random token: 32 bytes, base64url.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] if the system has no randomness to give.
    pub fn generate() -> Result<String, StartupError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
            |_| {
                StartupError::Credential(
                    "cannot generate an access token: no system randomness".into(),
                )
            },
        )?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    fn matches(&self, candidate: &[u8]) -> bool {
        bool::from(sha256(candidate).ct_eq(&self.digest))
    }

    /// Whether the request presents the token, as a bearer header or as the
    /// bearer WebSocket subprotocol.
    pub fn presented(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if bearer.is_some_and(|token| self.matches(token)) {
            return true;
        }
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
            .filter_map(|encoded| URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok())
            .any(|token| self.matches(&token))
    }
}

/// Removes `base64url.bearer.authorization.k8s.io.*` from the offered
/// WebSocket subprotocols, keeping the others in order: the access token
/// is kubegate's own and never goes upstream, upgrade or not.
pub fn drop_bearer_subprotocol(headers: &mut HeaderMap) {
    // Read as bytes: a line that is not text (obs-text) must not hide an
    // entry from this check.
    let entries = |value: &HeaderValue| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|entry| !entry.is_empty())
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
    };
    // Anywhere in the entry: the apiserver trims more kinds of space
    // (Unicode's) than an ASCII trim does.
    let prefix = BEARER_SUBPROTOCOL_PREFIX.as_bytes();
    let is_bearer = |entry: &Vec<u8>| entry.windows(prefix.len()).any(|w| w == prefix);
    let offered: Vec<Vec<u8>> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(entries)
        .collect();
    if !offered.iter().any(is_bearer) {
        return;
    }
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    let kept: Vec<Vec<u8>> = offered.into_iter().filter(|e| !is_bearer(e)).collect();
    if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b", "[..]))
        && !kept.is_empty()
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_token_is_accepted_as_bearer_or_subprotocol_only_when_right() {
        let token = AccessToken::new("s3cret");
        let mut headers = HeaderMap::new();
        assert!(!token.presented(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(token.presented(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cre"),
        );
        assert!(!token.presented(&headers));
        headers.clear();
        let protocol = format!(
            "v5.channel.k8s.io, {BEARER_SUBPROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode("s3cret")
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&protocol).unwrap(),
        );
        assert!(token.presented(&headers));
        let wrong = format!(
            "{BEARER_SUBPROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode("nope")
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&wrong).unwrap(),
        );
        assert!(!token.presented(&headers));
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let (a, b) = (
            AccessToken::generate().unwrap(),
            AccessToken::generate().unwrap(),
        );
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
