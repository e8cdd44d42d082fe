//! Serving connections: HTTP/1.1 (with upgrades) and HTTP/2 on every
//! accepted socket, each connection in its own task. At most
//! `--max-connections` are open at once (more wait in the listen backlog),
//! each is closed when idle past its deadline ([`crate::connection`]), and
//! a shutdown stops accepting, lets requests finish within the grace
//! period, and then closes what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::rt::Executor;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ClientOrigin, Peer};
use crate::connection::limit::PRESSED_FIRST_REQUEST;
use crate::connection::{Activity, Deadlines, Registered, Settings};
use crate::listen::{Accepted, Listener};
use crate::proxy::{ProxyService, Shared};

/// An accepted client: its activity, its place among the connections
/// that may be shed for room, and its `--max-connections` slot, all held
/// until it closes.
struct Client {
    activity: Arc<Activity>,
    registered: Registered,
    /// Accepted while connections were being shed.
    pressed: bool,
    _slot: OwnedSemaphorePermit,
}

/// How long a connection with nothing in flight may take to close after it
/// is asked to.
const CLOSE_IDLE: Duration = Duration::from_secs(1);

/// How long to pause accepting after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How accepted connections are set up and bounded.
pub struct Connections {
    /// Deadlines, TCP keep-alive (so that a quiet exec session an hour long
    /// still notices a vanished peer) and the shutdown grace.
    pub settings: Settings,
    /// `--tls-cert-file`: a TLS handshake first (in the connection's task).
    pub tls: Option<TlsAcceptor>,
}

/// How long closed connections get to finish their last writes (their
/// requests' audit events) after the grace period.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Every task serving clients (connections and their HTTP/2 streams),
/// tracked so that shutdown can ask them to finish, close the ones the
/// grace period did not see end, and wait until they are gone.
#[derive(Clone)]
struct Tasks {
    tracker: TaskTracker,
    /// Shutdown has begun: connections finish what is in flight and close.
    draining: CancellationToken,
    /// The grace period is over: what is left is dropped.
    closing: CancellationToken,
}

impl<F> Executor<F> for Tasks
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

/// What every connection task is given, shared (a connection costs one
/// reference count, not a copy of hyper's builder).
struct Serving {
    builder: auto::Builder<Tasks>,
    tasks: Tasks,
    deadlines: Deadlines,
}

/// Accepts and serves connections until `shutdown` resolves, then drains
/// them for up to `--shutdown-grace`.
pub async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    connections: Connections,
) {
    let grace = connections.settings.grace;
    let tasks = Tasks {
        tracker: TaskTracker::new(),
        draining: CancellationToken::new(),
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
        // WebSockets over HTTP/2 (RFC 8441): many exec and port-forward
        // sessions on one connection.
        .enable_connect_protocol()
        .keep_alive_interval(Duration::from_secs(30));
    let serving = Arc::new(Serving {
        builder,
        tasks: tasks.clone(),
        deadlines: connections.settings.deadlines,
    });
    let limit = &shared.limit;
    tokio::pin!(shutdown);
    loop {
        let accepted = async {
            // Room is made for a client that has come, never ahead of
            // one: the newest connection is the last to be shed. The one
            // socket held meanwhile comes out of the descriptor reserve.
            let accepted = listener.accept().await;
            let slot = limit.take().await;
            limit.relieve();
            let activity = Arc::new(Activity::default());
            let registered = limit.register(activity.clone(), &tasks.draining);
            let client = Client {
                activity,
                registered,
                pressed: limit.is_pressed(),
                _slot: slot,
            };
            Some((accepted, client))
        };
        tokio::select! {
            accepted = accepted => match accepted {
                Some((Ok(Accepted::Tcp(stream, peer)), client)) => {
                    if let Some(period) = connections.settings.keepalive {
                        let probe = socket2::TcpKeepalive::new().with_time(period).with_interval(period);
                        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&probe) {
                            tracing::debug!(%error, "cannot set TCP keep-alive");
                        }
                    }
                    let tls = connections.tls.is_some();
                    let origin = tcp_origin(peer, tls);
                    match &connections.tls {
                        Some(acceptor) => serving.spawn_tls(acceptor.clone(), stream, shared.clone(), origin, client),
                        None => serving.spawn(stream, shared.clone(), origin, client),
                    }
                }
                Some((Ok(Accepted::Unix(stream)), client)) => {
                    let description = match stream.peer_cred() {
                        Ok(cred) => format!("unix socket, uid={}, pid={}", cred.uid(), cred.pid().map_or_else(|| "?".into(), |p| p.to_string())),
                        Err(_) => "unix socket".to_string(),
                    };
                    let peer = Peer { ip: None, description };
                    let origin = ClientOrigin { forwarded_for: None, proto: HeaderValue::from_static("http"), peer };
                    serving.spawn(stream, shared.clone(), origin, client);
                }
                Some((Err(error), _)) => {
                    tracing::warn!(%error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    // /readyz fails first, then kubegate stops accepting (and removes a unix
    // socket file) and drains.
    shared.readiness.shutting_down();
    if let Some(audit) = &shared.audit {
        audit.shutting_down();
    }
    drop(listener);
    let open = limit.taken();
    if open > 0 {
        tracing::info!(open, grace = ?grace, "waiting for open connections to finish");
    }
    tasks.draining.cancel();
    tasks.tracker.close();
    // Requests and upgraded sessions share one grace period; what is still
    // open after it is closed.
    let drained = async {
        tasks.tracker.wait().await;
        shared.relays.drain().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace = ?grace, "connections still open after the shutdown grace period; closing them");
        shared.relays.close_all();
        if let Some(multiplexer) = &shared.port_forward {
            multiplexer.close_all();
        }
        tasks.closing.cancel();
        let closed = async {
            shared.relays.drain().await;
            tasks.tracker.wait().await;
        };
        if tokio::time::timeout(CLOSE_LIMIT, closed).await.is_err() {
            tracing::warn!("connections still closing; exiting without them");
        }
    }
    if let Some(multiplexer) = &shared.port_forward {
        multiplexer.close_all();
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

impl Serving {
    /// Like [`Serving::spawn`], after a TLS handshake done in the
    /// connection's own task (a slow client never holds up the accept
    /// loop), within the first-request deadline.
    fn spawn_tls(
        self: &Arc<Self>,
        acceptor: TlsAcceptor,
        stream: tokio::net::TcpStream,
        shared: Arc<Shared>,
        origin: ClientOrigin,
        client: Client,
    ) {
        let serving = self.clone();
        self.tasks.execute(async move {
            let deadline = serving.deadlines(&client).first_request;
            let handshake = tokio::time::timeout(deadline, acceptor.accept(stream));
            let tls = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return tracing::debug!(%error, "client TLS handshake failed"),
                    Err(_) => return tracing::debug!("client TLS handshake timed out"),
                },
                () = client.registered.closing().cancelled() => {
                    return tracing::debug!("closing a client mid-handshake");
                }
            };
            serving.serve(tls, shared, origin, client).await;
        });
    }

    /// The connection's deadlines: a shorter first one while connections
    /// are being shed for room.
    fn deadlines(&self, client: &Client) -> Deadlines {
        let mut deadlines = self.deadlines;
        if client.pressed {
            deadlines.first_request = deadlines.first_request.min(PRESSED_FIRST_REQUEST);
        }
        deadlines
    }

    /// Serves one connection in its own task.
    fn spawn<I>(self: &Arc<Self>, io: I, shared: Arc<Shared>, origin: ClientOrigin, client: Client)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let serving = self.clone();
        self.tasks
            .execute(async move { serving.serve(io, shared, origin, client).await });
    }

    /// Serves one connection until it ends, is idle past its deadline, or
    /// shutdown asks it to finish; then it finishes what is in flight
    /// (HTTP/2: `GOAWAY`) and closes. Its slot is free once it has.
    async fn serve<I>(&self, io: I, shared: Arc<Shared>, origin: ClientOrigin, client: Client)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadlines = self.deadlines(&client);
        let activity = client.activity.clone();
        let service = ProxyService::new(shared, origin, activity.clone());
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => Some(ended),
            () = activity.idle_for(deadlines) => {
                tracing::debug!("closing an idle client connection");
                None
            }
            () = client.registered.closing().cancelled() => {
                if !self.tasks.draining.is_cancelled() {
                    tracing::debug!("closing a client connection with nothing in flight to make room");
                }
                None
            }
        };
        let ended = match ended {
            Some(ended) => ended,
            // Nothing was asked (a silent socket, half a request head):
            // there is nothing to finish, so it is dropped at once.
            None if activity.never_asked() => Ok(()),
            None => {
                connection.as_mut().graceful_shutdown();
                // With nothing in flight, a half-sent request head or an
                // HTTP/2 peer that never acknowledges the GOAWAY does not
                // keep its slot: it is dropped after a moment.
                match activity.is_idle() {
                    true => tokio::time::timeout(CLOSE_IDLE, connection)
                        .await
                        .unwrap_or(Ok(())),
                    false => connection.await,
                }
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "client connection ended with an error");
        }
        drop(client);
    }
}
