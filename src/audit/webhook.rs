//! The webhook backend: events posted in batches as an `audit.k8s.io/v1`
//! `EventList` to a collector (Falco's k8saudit plugin, a SIEM), configured
//! by a kubeconfig-format file as kube-apiserver's
//! `--audit-webhook-config-file` is. Batches are retried with backoff while
//! the collector is down or busy (at most [`ATTEMPTS`] times); a batch it
//! refuses (a 4xx other than 429, such as 413 for one huge event) is sent
//! again event by event, so one bad event never blocks the rest, and an
//! event refused alone is dropped. The buffer is bounded; what is dropped
//! is counted and logged (the log backend, when on, still gets every event).

use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Either, Full};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::error::StartupError;
use crate::lifecycle::Lifecycle;
use crate::telemetry::{AuditCounters, UpstreamCounters};
use crate::upstream::{Upstream, UpstreamSettings};

/// Where the webhook backend sends and how it batches and retries.
#[derive(Debug)]
pub struct Settings {
    /// The collector, from the kubeconfig-format file: reached like an
    /// apiserver (TLS, credentials); its URL's path is where batches go.
    pub collector: UpstreamSettings,
    /// Events per batch at most.
    pub batch_max_size: usize,
    /// How long a batch waits to fill.
    pub batch_max_wait: Duration,
    /// Events buffered at most.
    pub buffer: usize,
    /// First wait before a retry; doubles up to a minute.
    pub initial_backoff: Duration,
}

/// The running webhook backend.
pub struct WebhookBackend {
    sender: ArcSwapOption<mpsc::Sender<Vec<u8>>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Events the buffer had no room for.
    overflowed: Counter,
}

impl WebhookBackend {
    /// Connects the collector's credentials and starts the batching task.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] when the collector's credentials cannot be used.
    pub async fn start(
        mut settings: Settings,
        counters: &AuditCounters,
        lifecycle: &Lifecycle,
    ) -> Result<WebhookBackend, StartupError> {
        // The collector's URL path is where batches go, not a prefix.
        let path = match std::mem::take(&mut settings.collector.server_path) {
            path if path.is_empty() => "/".to_string(),
            path => path,
        };
        let collector = Collector {
            // Its connections are not the apiserver's: counted apart.
            upstream: Upstream::new(settings.collector, &UpstreamCounters::default(), lifecycle)
                .await?,
            path,
        };
        let (sender, receiver) = mpsc::channel(settings.buffer.max(1));
        let batching = Batching {
            max_size: settings.batch_max_size,
            max_wait: settings.batch_max_wait,
            initial_backoff: settings.initial_backoff,
        };
        let dropped = counters.webhook_dropped.clone();
        let task = tokio::spawn(deliver(collector, batching, receiver, dropped));
        Ok(WebhookBackend {
            sender: ArcSwapOption::from_pointee(sender),
            task: std::sync::Mutex::new(Some(task)),
            overflowed: counters.webhook_overflowed.clone(),
        })
    }

    /// Buffers an event (a JSON line); counts it if the buffer is full.
    pub fn send(&self, line: &[u8]) {
        let Some(sender) = self.sender.load_full() else {
            return;
        };
        if sender.try_send(line.to_vec()).is_err() {
            let lost = self.overflowed.inc() + 1;
            if lost.is_power_of_two() {
                tracing::error!(
                    lost,
                    "audit webhook buffer is full: events are not being sent to the collector"
                );
            }
        }
    }

    /// Sends what is buffered (retrying for a while) and stops.
    pub async fn close(&self) {
        self.sender.store(None);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            tracing::warn!("audit webhook: gave up delivering the last batches at shutdown");
        }
    }
}

/// The collector, connected.
struct Collector {
    upstream: Upstream,
    path: String,
}

struct Batching {
    max_size: usize,
    max_wait: Duration,
    initial_backoff: Duration,
}

/// Attempts per batch before it is dropped: with the backoff doubling up to
/// a minute, about ten minutes of a collector that is down.
const ATTEMPTS: u32 = 14;

async fn deliver(
    collector: Collector,
    settings: Batching,
    mut events: mpsc::Receiver<Vec<u8>>,
    dropped: Counter,
) {
    loop {
        let Some(first) = events.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(settings.max_wait);
        tokio::pin!(deadline);
        while batch.len() < settings.max_size {
            tokio::select! {
                next = events.recv() => match next {
                    Some(line) => batch.push(line),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let refused = match send(&collector, &settings, &batch).await {
            Err(Failure::Refused(_)) if batch.len() > 1 => {
                // One event may be what the collector refuses: alone, the
                // others go through.
                let mut refused = 0;
                for event in &batch {
                    if send(&collector, &settings, std::slice::from_ref(event))
                        .await
                        .is_err()
                    {
                        refused += 1;
                    }
                }
                refused
            }
            Err(_) => batch.len(),
            Ok(()) => 0,
        };
        if refused > 0 {
            dropped.inc_by(refused as u64);
            tracing::error!(
                events = refused,
                "audit webhook: events dropped after the collector refused them or stayed down"
            );
        }
    }
}

/// Why a batch did not reach the collector.
enum Failure {
    /// The collector said no to this batch (a 4xx other than 429): sending
    /// it again would get the same answer.
    Refused(http::StatusCode),
    /// Down, busy or broken: worth another try.
    Retry(String),
}

/// Posts `lines` until the collector takes them, refuses them, or
/// [`ATTEMPTS`] tries have failed.
async fn send(
    collector: &Collector,
    settings: &Batching,
    lines: &[Vec<u8>],
) -> Result<(), Failure> {
    let body = event_list(lines);
    let mut backoff = settings.initial_backoff;
    let mut attempt = 1;
    loop {
        let error = match post(collector, body.clone()).await {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(status)) => {
                tracing::warn!(%status, events = lines.len(), "audit webhook: the collector refused a batch");
                return Err(Failure::Refused(status));
            }
            Err(Failure::Retry(error)) if attempt >= ATTEMPTS => return Err(Failure::Retry(error)),
            Err(Failure::Retry(error)) => error,
        };
        tracing::warn!(%error, events = lines.len(), retry_in = ?backoff, "audit webhook: the collector did not take a batch");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
        attempt += 1;
    }
}

/// Joins JSON event lines into an `EventList`.
fn event_list(lines: &[Vec<u8>]) -> Bytes {
    let mut body =
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#.to_vec();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(line));
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

async fn post(collector: &Collector, body: Bytes) -> Result<(), Failure> {
    let path = collector.path.parse();
    let uri = collector
        .upstream
        .uri_for(path.map_err(|e| Failure::Retry(format!("bad webhook path: {e}")))?)
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Right(Either::Left(Full::new(body))))
        .map_err(|e| Failure::Retry(e.to_string()))?;
    collector.upstream.authorize(request.headers_mut());
    let response = collector
        .upstream
        .send(request)
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = response.status();
    // Read the answer to the end so the connection can be reused.
    let _ = response.into_body().collect().await;
    match status {
        _ if status.is_success() => Ok(()),
        http::StatusCode::TOO_MANY_REQUESTS => {
            Err(Failure::Retry(format!("the collector answered {status}")))
        }
        _ if status.is_client_error() => Err(Failure::Refused(status)),
        _ => Err(Failure::Retry(format!("the collector answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_an_event_list() {
        let body = event_list(&[b"{\"a\":1}\n".to_vec(), b"{\"b\":2}\n".to_vec()]);
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list["kind"], "EventList");
        assert_eq!(list["items"][1]["b"], 2);
    }
}
