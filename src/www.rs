//! `--www`: static files from a directory under `--www-prefix`, for pages
//! that talk to the API through the same origin. Paths go through the same
//! canonicalisation as API paths, so `..` cannot leave the directory.

use std::path::Path;

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::ProxyBody;
use crate::request::normalize;
use crate::status::{ProxyError, status_response};

/// Serves `path` (beginning with `/`, the prefix removed) from `dir`.
///
/// # Errors
///
/// [`ProxyError::BadPath`] for a path that could be read two ways.
pub async fn serve(
    dir: &Path,
    path: &str,
    method: &Method,
) -> Result<Response<ProxyBody>, ProxyError> {
    if method != Method::GET && method != Method::HEAD {
        return Ok(status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "static files are read-only; use GET",
        ));
    }
    let normal = if path == "/" {
        normalize("/")?
    } else {
        normalize(path.trim_end_matches('/'))?
    };
    let mut file = dir.join(normal.as_str().trim_start_matches('/'));
    if file.is_dir() {
        file.push("index.html");
    }
    let Ok(contents) = tokio::fs::read(&file).await else {
        return Ok(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no static file {path} under --www"),
        ));
    };
    let mut response = Response::new(if method == Method::HEAD {
        ProxyBody::empty()
    } else {
        ProxyBody::full(contents)
    });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    Ok(response)
}

fn content_type(file: &Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
