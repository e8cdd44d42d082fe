//! HTTP/2 connections to the apiserver, shared by many requests and never
//! past the server's concurrent-stream limit.
//!
//! hyper-util's pool keeps one HTTP/2 connection per host, so with watches
//! holding streams open, request 101 against a 100-stream server would wait
//! forever. This pool counts open streams per connection and dials another
//! connection when every one is full. Picking a connection is lock-free; only
//! dialing takes a lock, so that a burst opens one connection, not fifty.
//!
//! A new connection carries only the request that dialed it until the
//! server's SETTINGS say how many streams it allows: assuming a number
//! would queue, inside hyper, every stream past a smaller real limit. A
//! burst waits for those SETTINGS (one round trip) rather than dialing a
//! connection per request, then fills the connection and dials the next.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::connect::{Connector, classify};
use crate::body::StreamGuard;
use crate::status::ProxyError;

/// Streams a new connection carries until the server's SETTINGS arrive:
/// the request that dialed it.
const BEFORE_SETTINGS: usize = 1;

/// How long requests wait for a new connection's SETTINGS before dialing
/// their own; a server that has sent none by then is taken to allow one
/// stream.
const SETTINGS_WAIT: Duration = Duration::from_secs(5);

/// A slot on a connection: the sender to use and the guard that frees it.
pub type Slot = (http2::SendRequest<UpstreamBody>, StreamGuard);

/// What the pool found when it dialed.
pub enum Checkout {
    /// A stream slot on an HTTP/2 connection.
    H2(Slot),
    /// The apiserver chose HTTP/1.1 in ALPN; send over HTTP/1.1 instead.
    Http1,
}

struct H2Connection {
    sender: http2::SendRequest<UpstreamBody>,
    in_flight: Arc<AtomicUsize>,
    /// What the task that drives the connection (only the connection
    /// object can read them) learns of the server's settings.
    settings: Arc<Settings>,
}

/// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, once known.
#[derive(Default)]
struct Settings {
    max_streams: AtomicUsize,
    /// The server's SETTINGS arrived (or will not: the wait is over).
    known: AtomicBool,
    arrived: tokio::sync::Notify,
}

impl Settings {
    /// Publishes what the connection knows now: until the first SETTINGS,
    /// h2 reports [`BEFORE_SETTINGS`]; after, the server's limit (or
    /// unlimited). A server that sets exactly that is known when `final_`
    /// (the wait is over, or the connection ended).
    fn publish(&self, max_streams: usize, final_: bool) {
        self.max_streams.store(max_streams, Ordering::Release);
        let learnt = max_streams != BEFORE_SETTINGS || final_;
        if learnt && !self.known.load(Ordering::Acquire) && !self.known.swap(true, Ordering::AcqRel)
        {
            self.arrived.notify_waiters();
        }
    }

    /// Waits until the server's SETTINGS are known, for at most
    /// [`SETTINGS_WAIT`].
    async fn known(&self) {
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if self.known.load(Ordering::Acquire) {
            return;
        }
        if tokio::time::timeout(SETTINGS_WAIT, arrived).await.is_err() {
            self.known.store(true, Ordering::Release);
        }
    }
}

/// The HTTP/2 connections to one apiserver.
pub struct H2Pool {
    connector: Connector,
    connections: ArcSwap<Vec<Arc<H2Connection>>>,
    dialing: tokio::sync::Mutex<()>,
    opened: AtomicUsize,
}

impl H2Pool {
    /// An empty pool that dials with `connector`.
    pub fn new(connector: Connector) -> Self {
        H2Pool {
            connector,
            connections: ArcSwap::from_pointee(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
            opened: AtomicUsize::new(0),
        }
    }

    /// How many connections this pool has opened in all.
    pub fn connections_opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// A stream slot on a connection with room, dialing one if need be.
    ///
    /// # Errors
    ///
    /// A [`ProxyError`] when a new connection cannot be made.
    pub async fn checkout(&self, uri: &Uri) -> Result<Checkout, ProxyError> {
        loop {
            if let Some(slot) = self.reserve() {
                return Ok(Checkout::H2(slot));
            }
            let dialing = self.dialing.lock().await;
            // Another request may have dialed while this one waited.
            if let Some(slot) = self.reserve() {
                return Ok(Checkout::H2(slot));
            }
            // A connection whose SETTINGS are on their way may have room
            // for this request and many more.
            match self.awaiting_settings() {
                Some(settings) => {
                    drop(dialing);
                    settings.known().await;
                }
                // Boxed: a dial's future (TCP, TLS, a proxy hop, the
                // HTTP/2 handshake) is many times a request's, and every
                // request in flight would carry its room.
                None => return Box::pin(self.dial(uri)).await,
            }
        }
    }

    fn awaiting_settings(&self) -> Option<Arc<Settings>> {
        self.connections
            .load()
            .iter()
            .find(|c| !c.sender.is_closed() && !c.settings.known.load(Ordering::Acquire))
            .map(|c| c.settings.clone())
    }

    /// Dials a connection and takes its first stream (the dialing lock is
    /// held).
    async fn dial(&self, uri: &Uri) -> Result<Checkout, ProxyError> {
        let io = self.connector.connect(uri).await?;
        if !io.connected().is_negotiated_h2() {
            return Ok(Checkout::Http1);
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_max_send_streams(BEFORE_SETTINGS)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            // A streamed body may come in large frames: each is one write
            // to the client instead of one per 16 KiB.
            .max_frame_size(1 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(15))
            .handshake(io)
            .await
            .map_err(|e| classify(uri, &e))?;
        let settings = Arc::new(Settings::default());
        settings.publish(BEFORE_SETTINGS, false);
        let published = settings.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // hyper reads frames in a task of its own, and this one wakes
            // only for requests: until the server's SETTINGS are known,
            // look every millisecond (a round trip or two).
            // (A server that sets exactly one stream is taken at its word
            // once the wait is over.)
            let mut look = tokio::time::interval(Duration::from_millis(1));
            let looking_until = tokio::time::Instant::now() + SETTINGS_WAIT;
            let ended = std::future::poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                let waited = tokio::time::Instant::now() >= looking_until;
                let max = connection.current_max_send_streams();
                published.publish(max, polled.is_ready() || waited);
                if !published.known.load(Ordering::Acquire) {
                    while look.poll_tick(cx).is_ready() {}
                }
                polled
            })
            .await;
            if let Err(error) = ended {
                tracing::debug!(%error, "apiserver HTTP/2 connection ended");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(H2Connection {
            sender,
            in_flight: Arc::new(AtomicUsize::new(1)),
            settings,
        });
        let slot = (
            fresh.sender.clone(),
            StreamGuard::new(fresh.in_flight.clone()),
        );
        let mut live: Vec<_> = self
            .connections
            .load()
            .iter()
            .filter(|c| !c.sender.is_closed())
            .cloned()
            .collect();
        live.push(fresh);
        self.connections.store(Arc::new(live));
        Ok(Checkout::H2(slot))
    }

    fn reserve(&self) -> Option<Slot> {
        for connection in self.connections.load().iter() {
            if connection.sender.is_closed() {
                continue;
            }
            let limit = connection
                .settings
                .max_streams
                .load(Ordering::Acquire)
                .max(1);
            if connection.in_flight.fetch_add(1, Ordering::AcqRel) < limit {
                return Some((
                    connection.sender.clone(),
                    StreamGuard::new(connection.in_flight.clone()),
                ));
            }
            connection.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }
}
