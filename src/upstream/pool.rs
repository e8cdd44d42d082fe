//! HTTP/2 connections to the apiserver, shared by many requests and never
//! past the server's concurrent-stream limit.
//!
//! hyper-util's pool keeps one HTTP/2 connection per host, so with watches
//! holding streams open, request 101 against a 100-stream server would wait
//! forever. This pool counts open streams per connection and dials another
//! connection when every one is full. Picking a connection is lock-free; only
//! dialing takes a lock, so that a burst opens one connection, not fifty.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Streams assumed allowed until the server's SETTINGS say otherwise.
const INITIAL_MAX_STREAMS: usize = 100;

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
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, published by the task
    /// that drives the connection (only the connection object can read it).
    max_streams: Arc<AtomicUsize>,
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
        if let Some(slot) = self.reserve() {
            return Ok(Checkout::H2(slot));
        }
        let _dialing = self.dialing.lock().await;
        // Another request may have dialed while this one waited.
        if let Some(slot) = self.reserve() {
            return Ok(Checkout::H2(slot));
        }
        let io = self.connector.connect(uri).await?;
        if !io.connected().is_negotiated_h2() {
            return Ok(Checkout::Http1);
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(15))
            .handshake(io)
            .await
            .map_err(|e| classify(uri, &e))?;
        let max_streams = Arc::new(AtomicUsize::new(INITIAL_MAX_STREAMS));
        let published = max_streams.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = std::future::poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                published.store(connection.current_max_send_streams(), Ordering::Release);
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
            max_streams,
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
            let limit = connection.max_streams.load(Ordering::Acquire).max(1);
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
