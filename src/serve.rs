//! Serving connections: HTTP/1.1 (with upgrades) and HTTP/2 on every
//! accepted socket, each connection in its own task, all watched so that a
//! shutdown stops accepting, lets requests finish within the grace period,
//! and then returns.

use std::future::Future;

use hyper::rt::Executor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ClientOrigin, Peer};
use crate::listen::{Accepted, Listener};
use crate::proxy::{ProxyService, Shared};
use tokio_rustls::TlsAcceptor;

/// How long to pause accepting after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How accepted TCP connections are set up.
pub struct Connections {
    /// TCP keep-alive, so that a quiet exec session an hour long still
    /// notices a vanished peer.
    pub keepalive: Option<Duration>,
    /// `--tls-cert-file`: a TLS handshake first (in the connection's task).
    pub tls: Option<TlsAcceptor>,
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closed connections get to finish their last writes (their
/// requests' audit events) after the grace period.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Every task serving clients (connections and their HTTP/2 streams),
/// tracked so that shutdown can close the ones the grace period did not
/// see end, and wait until they are gone.
#[derive(Clone)]
struct Tasks {
    tracker: TaskTracker,
    closing: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let closing = self.closing.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = future => {}
                () = closing.cancelled() => {}
            }
        });
    }
}

/// Accepts and serves connections until `shutdown` resolves, then drains
/// them for up to `grace`.
pub async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    connections: Connections,
) {
    let tasks = Tasks {
        tracker: TaskTracker::new(),
        closing: CancellationToken::new(),
    };
    let mut builder = auto::Builder::new(tasks.clone());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(Accepted::Tcp(stream, peer)) => {
                    if let Some(period) = connections.keepalive {
                        let probe = socket2::TcpKeepalive::new().with_time(period).with_interval(period);
                        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&probe) {
                            tracing::debug!(%error, "cannot set TCP keep-alive");
                        }
                    }
                    let tls = connections.tls.is_some();
                    let service = ProxyService::new(shared.clone(), tcp_origin(peer, tls));
                    match &connections.tls {
                        Some(acceptor) => spawn_tls_connection(&builder, &graceful, &tasks, acceptor.clone(), stream, service),
                        None => spawn_connection(&builder, &graceful, &tasks, stream, service),
                    }
                }
                Ok(Accepted::Unix(stream)) => {
                    let description = match stream.peer_cred() {
                        Ok(cred) => format!("unix socket, uid={}, pid={}", cred.uid(), cred.pid().map_or_else(|| "?".into(), |p| p.to_string())),
                        Err(_) => "unix socket".to_string(),
                    };
                    let peer = Peer { ip: None, description };
                    let origin = ClientOrigin { forwarded_for: None, proto: HeaderValue::from_static("http"), peer };
                    spawn_connection(&builder, &graceful, &tasks, stream, ProxyService::new(shared.clone(), origin));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    // /readyz fails first, then kubegate stops accepting (and removes a unix
    // socket file) and drains.
    shared.metrics.shutting_down();
    if let Some(audit) = &shared.audit {
        audit.shutting_down();
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, grace = ?grace, "waiting for open connections to finish");
    }
    // Requests and upgraded sessions share one grace period; what is still
    // open after it is closed.
    let drained = async {
        graceful.shutdown().await;
        shared.relays.drain().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace = ?grace, "connections still open after the shutdown grace period; closing them");
        shared.relays.close_all();
        tasks.closing.cancel();
        let closed = async {
            shared.relays.drain().await;
            tasks.tracker.close();
            tasks.tracker.wait().await;
        };
        if tokio::time::timeout(CLOSE_LIMIT, closed).await.is_err() {
            tracing::warn!("connections still closing; exiting without them");
        }
    }
    // Last: every event of every request is written before exit.
    if let Some(audit) = &shared.audit {
        audit.close().await;
    }
}

fn tcp_origin(peer: SocketAddr, tls: bool) -> ClientOrigin {
    let ip = peer.ip().to_string();
    ClientOrigin {
        forwarded_for: HeaderValue::try_from(ip.as_str()).ok(),
        proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        peer: Peer {
            ip: Some(ip),
            description: format!("tcp {peer}"),
        },
    }
}

/// Like [`spawn_connection`], after a TLS handshake done in the
/// connection's own task (a slow client never holds up the accept loop).
fn spawn_tls_connection(
    builder: &auto::Builder<Tasks>,
    graceful: &GracefulShutdown,
    tasks: &Tasks,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    service: ProxyService,
) {
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tasks.execute(async move {
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return tracing::debug!(%error, "client TLS handshake failed"),
            Err(_) => return tracing::debug!("client TLS handshake timed out"),
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%error, "client connection ended with an error");
        }
    });
}

fn spawn_connection<I>(
    builder: &auto::Builder<Tasks>,
    graceful: &GracefulShutdown,
    tasks: &Tasks,
    io: I,
    service: ProxyService,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let watched = graceful.watch(connection);
    tasks.execute(async move {
        if let Err(error) = watched.await {
            tracing::debug!(%error, "client connection ended with an error");
        }
    });
}
