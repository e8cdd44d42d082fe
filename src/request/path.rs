//! Path canonicalisation: the one reading of a request path that the
//! filters and the request info read, and that is forwarded.
//!
//! The apiserver decodes a path once and acts on the decoded segments. A
//! filter that matches some other spelling can be bypassed (`/api/./v1`,
//! `//`, `%2F`), so a path that could be read two ways is refused here rather
//! than cleaned: the caller learns what to fix, and nothing is guessed.
//! See `docs/paths.md`.

use std::borrow::Cow;
use std::fmt;

/// Longest path, after decoding, that kubegate accepts.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// A request path in canonical form: decoded once, no `.`, `..` or empty
/// segments, no encoded separators. Raw strings stop at [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// The decoded path the filters see.
    decoded: Cow<'a, str>,
    /// Whether the raw path had escapes, so that forwarding re-encodes.
    had_escapes: bool,
    /// The raw path as received, forwarded as is when it had no escapes.
    raw: &'a str,
}

impl<'a> NormalPath<'a> {
    /// The decoded path: what filters match and what the apiserver acts on.
    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// The path to send upstream: the raw path when it needed no decoding,
    /// else the decoded path percent-encoded canonically. Either way the
    /// apiserver decodes it to exactly [`Self::as_str`].
    pub fn encoded(&self) -> Cow<'a, str> {
        if self.had_escapes {
            Cow::Owned(encode(&self.decoded))
        } else {
            Cow::Borrowed(self.raw)
        }
    }
}

/// Why a path was refused. Each message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_BYTES`].
    #[error("the request path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-escape; encode '%' as %25")]
    BadEscape,
    /// `%2F`, `%2E`, `%5C` or `%00`: a separator or dot hidden from filters.
    #[error(
        "the request path encodes '{0}' as a percent-escape, which could hide a path segment from kubegate's filters; send it unencoded"
    )]
    EncodedSeparator(char),
    /// A backslash or control character, which servers read differently.
    #[error("the request path contains a backslash or control character; remove it")]
    ForbiddenCharacter,
    /// The decoded path is not UTF-8.
    #[error("the request path does not decode to UTF-8")]
    InvalidUtf8,
    /// `.` or `..` as a segment.
    #[error(
        "the request path has a '.' or '..' segment, which the apiserver would resolve differently from kubegate's filters; send the resolved path"
    )]
    DotSegment,
    /// `watch` or `proxy` as the verb segment with no resource after it.
    #[error(
        "the request path has '{0}' with no resource after it, which the apiserver cannot read either; name the resource, e.g. /api/v1/{0}/pods"
    )]
    NoResource(&'static str),
    /// `//` or a trailing `/`.
    #[error(
        "the request path has an empty segment ('//' or a trailing '/'); send the path without it"
    )]
    EmptySegment,
}

/// Reads `raw` (the path of a request, without its query) into canonical form.
///
/// # Errors
///
/// Any [`PathError`]: the path is refused, never repaired.
pub fn normalize(raw: &str) -> Result<NormalPath<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.len() > MAX_PATH_BYTES * 3 {
        return Err(PathError::TooLong);
    }
    let had_escapes = raw.contains('%');
    let decoded = if had_escapes {
        Cow::Owned(decode(raw)?)
    } else {
        check_bytes(raw.as_bytes())?;
        Cow::Borrowed(raw)
    };
    if decoded.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    check_segments(&decoded)?;
    Ok(NormalPath {
        decoded,
        had_escapes,
        raw,
    })
}

fn check_bytes(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return Err(PathError::ForbiddenCharacter);
    }
    Ok(())
}

fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        let value = hex_value(hex[0])
            .zip(hex_value(hex[1]))
            .map(|(high, low)| high << 4 | low)
            .ok_or(PathError::BadEscape)?;
        match value {
            b'/' | b'.' | b'\\' | 0 => return Err(PathError::EncodedSeparator(value as char)),
            _ => out.push(value),
        }
        i += 3;
    }
    check_bytes(&out)?;
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

fn check_segments(path: &str) -> Result<(), PathError> {
    if path == "/" {
        return Ok(());
    }
    // Skip the leading '/': every segment after it must be a real name.
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Percent-encodes a decoded path: RFC 3986 `pchar` and `/` stay literal.
fn encode(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len() + 8);
    for &b in decoded.as_bytes() {
        let literal = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if literal {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for NormalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decoded)
    }
}

#[cfg(test)]
mod tests;
