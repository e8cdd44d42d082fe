//! Operations, on a port of their own (`--admin-address`), since everything
//! on the proxy port belongs to the apiserver: `/healthz` (kubegate is up),
//! `/readyz` (the apiserver answered recently, and kubegate is not shutting
//! down) and `/metrics` (what [`crate::telemetry`] holds, in the OpenMetrics
//! text format).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::telemetry::Telemetry;

/// How recently the apiserver must have answered for `/readyz` to pass.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// Whether each served context's apiserver answered recently (empty name:
/// the one cluster), asked when `/readyz` is.
pub type ApiserversUp = Box<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

/// Whether kubegate is shutting down, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
}

impl Readiness {
    /// `/readyz` fails from now on.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// `/readyz`: ready when not shutting down and every apiserver answered
    /// recently; `verbose` lists each check, as the apiserver's does.
    fn ready(&self, apiservers: Vec<(String, bool)>, verbose: bool) -> (bool, String) {
        let mut checks = vec![(
            "shutdown".to_string(),
            !self.shutting_down.load(Ordering::Acquire),
            "shutting down".to_string(),
        )];
        if apiservers.is_empty() {
            checks.push(("apiserver".into(), false, "not checked yet".into()));
        }
        for (name, up) in apiservers {
            let check = match name.as_str() {
                "" => "apiserver".to_string(),
                name => format!("context:{name}"),
            };
            checks.push((
                check,
                up,
                "the apiserver has not answered in the last minute".into(),
            ));
        }
        let ready = checks.iter().all(|(_, ok, _)| *ok);
        let mut text = String::new();
        for (check, ok, why) in &checks {
            match ok {
                true if verbose => text.push_str(&format!("[+]{check} ok\n")),
                false => text.push_str(&format!("[-]{check} failed: {why}\n")),
                true => {}
            }
        }
        text.push_str(match ready {
            true => "ok\n",
            false => "not ready\n",
        });
        (ready, text)
    }
}

/// What the admin port answers from.
struct Admin {
    telemetry: Arc<Telemetry>,
    readiness: Arc<Readiness>,
    apiservers_up: ApiserversUp,
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener`, in tasks of
/// `tasks`, until `stop` is cancelled.
pub fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    (readiness, apiservers_up): (Arc<Readiness>, ApiserversUp),
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    let admin = Arc::new(Admin {
        telemetry,
        readiness,
        apiservers_up,
    });
    let connections = tasks.clone();
    tasks.spawn(async move {
        let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
            TokioExecutor::new(),
        ));
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin port: accept failed; pausing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let (admin, builder, stop) = (admin.clone(), builder.clone(), stop.clone());
            connections.spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let admin = admin.clone();
                    let path = request.uri().path().to_string();
                    let verbose = is_verbose(request.uri().query());
                    async move { Ok::<_, Infallible>(admin.answer(&path, verbose)) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
}

impl Admin {
    fn answer(&self, path: &str, verbose: bool) -> Response<ProxyBody> {
        let (code, content_type, body) = match path {
            "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" => match self.readiness.ready((self.apiservers_up)(), verbose) {
                (true, text) => (StatusCode::OK, "text/plain", text),
                (false, text) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", text),
            },
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.telemetry.encode(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: the admin port serves /healthz, /readyz and /metrics\n".to_string(),
            ),
        };
        let mut response = Response::new(ProxyBody::full(body));
        *response.status_mut() = code;
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    }
}

/// Whether a query asks for `verbose` (`?verbose`, `?verbose=true`).
fn is_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "verbose" || pair.starts_with("verbose="))
    })
}

/// Binds the admin address.
///
/// # Errors
///
/// The bind error, for a start-up message.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_apiserver_and_no_shutdown() {
        let readiness = Readiness::default();
        let one = || vec![(String::new(), true)];
        assert!(!readiness.ready(Vec::new(), false).0);
        assert_eq!(readiness.ready(one(), false), (true, "ok\n".to_string()));
        let two = vec![("a".into(), true), ("b".into(), false)];
        let (ready, text) = readiness.ready(two, true);
        assert!(!ready);
        assert!(
            text.contains("[+]context:a ok\n[-]context:b failed"),
            "{text}"
        );
        readiness.shutting_down();
        assert!(!readiness.ready(one(), false).0);
    }
}
