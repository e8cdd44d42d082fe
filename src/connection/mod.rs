//! One client connection's life: the requests it has in flight, and the
//! deadlines that close it when it has none (one for the first request,
//! one for keep-alive idleness), so that a socket that sends nothing, half
//! an HTTP/2 preface or nothing more after a response cannot be held open
//! forever. A request in flight (a watch, `logs -f`, a proxied stream) is
//! never cut: a connection is idle only while every response it was sent
//! has ended. An HTTP/1.1 upgrade (exec, attach, port-forward) leaves
//! hyper, and this accounting, when it switches protocols; an HTTP/2 one
//! stays, held busy by its session ([`Busy`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

pub mod limit;

pub use limit::{Limit, Registered};

/// Client connections, as the command line sets them.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--max-connections`, resolved: most client connections and relayed
    /// sessions open at once.
    pub limit: usize,
    /// When an idle connection is closed.
    pub deadlines: Deadlines,
    /// `--keepalive`: the TCP keep-alive period of client sockets, `None`
    /// for off.
    pub keepalive: Option<Duration>,
    /// `--shutdown-grace`: how long in-flight requests may run after a
    /// signal.
    pub grace: Duration,
}

/// How long a client connection may be idle.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `--first-request-timeout`: from accept (TLS handshake and HTTP/2
    /// preface included) to the first request.
    pub first_request: Duration,
    /// `--client-idle-timeout`: with no request in flight, after one.
    pub idle: Duration,
}

/// Requests started and ended on one connection: two counters, so the
/// request path takes no lock.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    ended: AtomicU64,
}

impl Activity {
    /// Counts a request until the returned guard (kept with its response
    /// body) is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether no request is in flight: none sent yet, or every response
    /// ended.
    pub fn is_idle(&self) -> bool {
        // Ended first: a request starting between the loads then counts.
        let ended = self.ended.load(Ordering::Acquire);
        ended == self.started.load(Ordering::Acquire)
    }

    /// Requests started and ended so far: it changes whenever the
    /// connection does something.
    pub fn requests_seen(&self) -> u64 {
        self.started.load(Ordering::Acquire) + self.ended.load(Ordering::Acquire)
    }

    /// Whether the connection has not sent a whole request yet.
    pub fn never_asked(&self) -> bool {
        self.started.load(Ordering::Acquire) == 0
    }

    /// Resolves once the connection has had no request in flight for its
    /// deadline. Checked every half deadline (a timer, not a lock per
    /// request): a connection seen idle, with no request started between,
    /// at three checks in a row has been idle a whole deadline, so it is
    /// closed between one and one and a half deadlines after its last
    /// response ended (exactly one after accept, with no request).
    pub async fn idle_for(&self, deadlines: Deadlines) {
        // The requests started as of the last check, if it found the
        // connection idle; accept counts as such a check.
        let mut idle_at_last_check = Some(0);
        let mut quiet_checks = 0;
        while quiet_checks < 2 {
            let period = match self.started.load(Ordering::Acquire) {
                0 => deadlines.first_request,
                _ => deadlines.idle,
            };
            tokio::time::sleep(period / 2).await;
            // Ended first: a request starting between the loads then
            // counts as in flight.
            let ended = self.ended.load(Ordering::Acquire);
            let started = self.started.load(Ordering::Acquire);
            let idle = ended == started;
            quiet_checks = match idle && idle_at_last_check == Some(started) {
                true => quiet_checks + 1,
                false => 0,
            };
            idle_at_last_check = idle.then_some(started);
        }
    }
}

/// One request in flight on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
    }
}

/// Keeps a connection busy while an upgraded session it carries lives: an
/// HTTP/2 WebSocket (RFC 8441) stays on its connection after the `200`
/// has ended, and must not leave it looking idle. (An HTTP/1.1 upgrade
/// leaves hyper, and its connection's accounting, as it switches.)
#[derive(Debug, Clone)]
pub struct Busy {
    _in_flight: Arc<InFlight>,
}

impl Busy {
    /// One more request in flight on the connection of `activity`, for as
    /// long as any clone of this lives.
    pub fn of(activity: &Arc<Activity>) -> Self {
        Busy {
            _in_flight: Arc::new(activity.begin()),
        }
    }
}

/// A response body that keeps its request counted in flight until it ends
/// or is dropped.
#[derive(Debug)]
pub struct Served {
    body: ProxyBody,
    in_flight: Option<InFlight>,
}

impl Served {
    /// `body`, counted by `in_flight`.
    pub fn new(body: ProxyBody, in_flight: InFlight) -> Self {
        Served {
            body,
            in_flight: Some(in_flight),
        }
    }
}

impl Body for Served {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Ended: idle from now, not from when hyper drops the body.
            self.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_closes_at_the_first_deadline() {
        let activity = Activity::default();
        let began = tokio::time::Instant::now();
        activity.idle_for(DEADLINES).await;
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_and_idleness_counts_from_its_end() {
        let activity = Arc::new(Activity::default());
        let in_flight = activity.begin();
        let watcher = activity.clone();
        let idle = tokio::spawn(async move {
            watcher.idle_for(DEADLINES).await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!idle.is_finished(), "a long watch is not idle");
        drop(in_flight);
        let ended = tokio::time::Instant::now();
        let closed = idle.await.unwrap();
        let after = closed - ended;
        assert!(
            after >= Duration::from_secs(60) && after <= Duration::from_secs(90),
            "{after:?}"
        );
    }
}
