//! `--serve-recordings`: the recordings directory, read-only, for the
//! browser console's player: `/kubegate/recordings` lists the recordings
//! (JSON), `/kubegate/recordings/DAY/ID.cast` is one. Only names of that
//! shape are served, so no path leaves the directory.

use std::path::Path;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use super::replay;
use crate::body::ProxyBody;
use crate::status::status_response;

/// Where the recordings are served.
pub const PREFIX: &str = "/kubegate/recordings";

/// The answer to `GET PREFIX{path}`.
pub async fn answer(dir: &Path, path: &str, method: &Method) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "recordings are read-only; use GET",
        );
    }
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        let dir = dir.to_path_buf();
        let listed =
            tokio::task::spawn_blocking(move || replay::list(&dir).map(|l| (dir, l))).await;
        return match listed {
            Ok(Ok((dir, recordings))) => {
                let items: Vec<_> = recordings
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.path.strip_prefix(&dir).unwrap_or(&r.path).to_string_lossy(),
                            "timestamp": r.timestamp,
                            "user": r.user,
                            "pod": r.target,
                            "command": r.command,
                            "status": r.status,
                            "bytes": r.bytes,
                        })
                    })
                    .collect();
                typed(
                    json!({ "items": items }).to_string().into_bytes(),
                    "application/json",
                    method,
                )
            }
            _ => status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "cannot read the recordings directory; check --record-sessions-dir",
            ),
        };
    }
    if !is_recording_name(path) {
        return not_found(path);
    }
    match tokio::fs::read(dir.join(path)).await {
        Ok(bytes) => typed(bytes, "application/x-asciicast", method),
        Err(_) => not_found(path),
    }
}

/// `YYYY-MM-DD/ID.cast`, the ID hexadecimal digits and dashes.
fn is_recording_name(path: &str) -> bool {
    let Some((day, file)) = path.split_once('/') else {
        return false;
    };
    let Some(id) = file.strip_suffix(".cast") else {
        return false;
    };
    day.len() == 10
        && day.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn typed(body: Vec<u8>, kind: &'static str, method: &Method) -> Response<ProxyBody> {
    let mut response = Response::new(if method == Method::HEAD {
        ProxyBody::empty()
    } else {
        ProxyBody::full(body)
    });
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

fn not_found(path: &str) -> Response<ProxyBody> {
    status_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no recording {path} (names are YYYY-MM-DD/AUDIT-ID.cast, from {PREFIX})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recording_names_are_served() {
        assert!(is_recording_name(
            "2026-12-07/0f9c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.cast"
        ));
        for bad in [
            "../etc/passwd",
            "2026-12-07/../../x.cast",
            "2026-12-07/abc.cast.part",
            "2026-12-07/.cast",
            "x/abc.cast",
            "2026-12-07/sub/abc.cast",
            "2026-12-07/abc.txt",
        ] {
            assert!(!is_recording_name(bad), "{bad}");
        }
    }
}
