//! The apiserver double's server: TLS that asks for a client certificate and
//! verifies it against the CA (an unknown or expired one gets 401, as the
//! apiserver's x509 authenticator gives), bearer tokens, HTTP/1.1 and HTTP/2
//! by ALPN with a configurable stream limit. Requests go to [`super::api`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::api::{self, status};
use super::pki::Pki;
use super::store::Store;

/// An authenticated identity, as the apiserver's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (certificate CN, or the token's user).
    pub name: String,
    /// The groups (certificate O fields).
    pub groups: Vec<String>,
}

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (kube-apiserver's default is 1000).
    pub max_concurrent_streams: u32,
    /// Offer only HTTP/1.1 in ALPN.
    pub http1_only: bool,
    /// Bearer tokens the double accepts, and whom they stand for.
    pub tokens: HashMap<String, User>,
    /// Benchmark mode: exec and attach echo stdin as stdout and
    /// port-forward echoes, in process, so the double is never the
    /// bottleneck.
    pub fast_streams: bool,
    /// A slow link: how long after the TLS handshake the double starts
    /// speaking HTTP (so its HTTP/2 SETTINGS arrive that much later).
    pub settings_delay: Duration,
    /// An apiserver before 1.31 (or with `PortForwardWebsockets` off): the
    /// `SPDY/3.1+portforward.k8s.io` WebSocket tunnel is refused.
    pub refuse_spdy_tunnel: bool,
    /// A gateway in front of the apiserver that passes WebSockets but not
    /// SPDY: port-forward is served over the client's own WebSocket only,
    /// both SPDY forms (the tunnel and a raw `SPDY/3.1` upgrade) refused.
    pub refuse_spdy: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_concurrent_streams: 1000,
            http1_only: false,
            tokens: HashMap::new(),
            fast_streams: false,
            settings_delay: Duration::ZERO,
            refuse_spdy_tunnel: false,
            refuse_spdy: false,
        }
    }
}

/// Counters that tests assert on.
#[derive(Debug, Default)]
pub struct Stats {
    /// TLS connections accepted.
    pub connections: AtomicUsize,
    /// Of those, the ones that resumed an earlier TLS session (and so
    /// presented no certificate: they keep the session's identity).
    pub resumed: AtomicUsize,
    /// Requests served.
    pub requests: AtomicUsize,
    /// Watches now streaming.
    pub open_watches: Arc<AtomicUsize>,
    /// exec, attach and port-forward sessions now open.
    pub open_streams: Arc<AtomicUsize>,
    /// port-forward upgrade requests (WebSocket, tunneled or raw SPDY):
    /// each one accepted is a kubelet dial in a real cluster.
    pub port_forward_sessions: AtomicUsize,
    /// The last terminal size a client sent on the resize channel.
    pub terminal: Arc<TerminalSize>,
    /// Audit events `/audit-collector` took.
    pub audit_events: AtomicUsize,
    /// `/audit-collector` answers 503 while set.
    pub collector_down: AtomicBool,
}

/// A terminal's size as a client last set it.
#[derive(Debug, Default)]
pub struct TerminalSize(std::sync::Mutex<Option<(u16, u16)>>);

impl TerminalSize {
    /// Records a resize to `width` × `height`.
    pub fn set(&self, width: u16, height: u16) {
        if let Ok(mut size) = self.0.lock() {
            *size = Some((width, height));
        }
    }

    /// The last size, as (width, height).
    pub fn get(&self) -> Option<(u16, u16)> {
        self.0.lock().ok().and_then(|size| *size)
    }
}

/// What every connection of the double shares.
pub struct State {
    /// Pods, events and logs.
    pub store: Store,
    /// Counters.
    pub stats: Stats,
    /// Where the double listens.
    pub address: SocketAddr,
    /// [`Options::fast_streams`].
    pub fast_streams: bool,
    /// [`Options::refuse_spdy_tunnel`].
    pub refuse_spdy_tunnel: bool,
    /// [`Options::refuse_spdy`].
    pub refuse_spdy: bool,
    /// Cancelled (and replaced) to cut every open exec, attach and
    /// port-forward session, as an apiserver restart would.
    streams_cut: std::sync::Mutex<tokio_util::sync::CancellationToken>,
    /// Cancelled when the double stops: ends upgraded sessions too, which
    /// no longer belong to a connection task.
    pub stopping: tokio_util::sync::CancellationToken,
    tokens: std::sync::RwLock<HashMap<String, User>>,
}

impl State {
    /// Cuts every open exec, attach and port-forward connection, as an
    /// apiserver restart would; later ones are served as usual.
    pub fn cut_streams(&self) {
        if let Ok(mut cut) = self.streams_cut.lock() {
            std::mem::take(&mut *cut).cancel();
        }
    }

    /// Cancelled by the next [`State::cut_streams`].
    pub fn streams_cut(&self) -> tokio_util::sync::CancellationToken {
        self.streams_cut
            .lock()
            .map(|cut| cut.clone())
            .unwrap_or_default()
    }

    /// Stops accepting a bearer token, as when a service-account token is
    /// rotated and the old one expires.
    pub fn revoke_token(&self, token: &str) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.remove(token);
        }
    }
}

/// A running apiserver double; stopped when dropped.
pub struct ApiServer {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.state.stopping.cancel();
    }
}

impl ApiServer {
    /// Starts the double on an ephemeral loopback port with a server
    /// certificate from `pki`, trusting client certificates `pki` issued.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub async fn start(pki: &Pki, options: Options) -> io::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, pki, options)
    }

    /// Starts the double on `listener`.
    ///
    /// # Errors
    ///
    /// When the generated TLS material is unusable (it never is).
    pub fn start_on(listener: TcpListener, pki: &Pki, options: Options) -> io::Result<ApiServer> {
        let tls = server_tls(pki, &options).map_err(io::Error::other)?;
        let state = Arc::new(State {
            store: Store::default(),
            stats: Stats::default(),
            address: listener.local_addr()?,
            stopping: tokio_util::sync::CancellationToken::new(),
            fast_streams: options.fast_streams,
            refuse_spdy_tunnel: options.refuse_spdy_tunnel || options.refuse_spdy,
            refuse_spdy: options.refuse_spdy,
            streams_cut: std::sync::Mutex::default(),
            tokens: std::sync::RwLock::new(options.tokens.clone()),
        });
        let task = tokio::spawn(accept_loop(listener, tls, state.clone(), options));
        Ok(ApiServer { state, task })
    }

    /// Also serves plain HTTP on `listener`, every request as `user` (a
    /// no-TLS, no-proxy baseline for the benchmark).
    pub fn serve_plain(&self, listener: TcpListener, user: User) {
        let state = self.state.clone();
        tokio::spawn(async move {
            let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (state, builder, user) = (state.clone(), builder.clone(), user.clone());
                let stopping = state.stopping.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (state, user) = (state.clone(), user.clone());
                        async move { Ok::<_, Infallible>(api::handle(state, user, request).await) }
                    });
                    tokio::select! {
                        _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service) => {}
                        () = stopping.cancelled() => {}
                    }
                });
            }
        });
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.state.address)
    }

    /// The double's address.
    pub fn address(&self) -> SocketAddr {
        self.state.address
    }

    /// The shared state: the store and the counters.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops accepting and drops every connection, as a crashed apiserver.
    pub async fn stop(self) {
        self.task.abort();
        self.state.stopping.cancel();
        let _ = (&mut { self }.task).await;
    }
}

struct Verifiers {
    /// Asks for a certificate but lets the handshake through, so that a bad
    /// certificate gets an HTTP 401 as from the apiserver, not a TLS alert.
    lenient: Arc<LenientClientVerifier>,
}

fn server_tls(
    pki: &Pki,
    options: &Options,
) -> Result<(TlsAcceptor, Verifiers), Box<dyn std::error::Error + Send + Sync>> {
    let server = pki.server();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(server.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(ca?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let lenient = Arc::new(LenientClientVerifier { strict });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(lenient.clone())
        .with_single_cert(chain, key)?;
    config.alpn_protocols = if options.http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok((TlsAcceptor::from(Arc::new(config)), Verifiers { lenient }))
}

async fn accept_loop(
    listener: TcpListener,
    (acceptor, verifiers): (TlsAcceptor, Verifiers),
    state: Arc<State>,
    options: Options,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams);
    let builder = Arc::new(builder);
    let verifiers = Arc::new(verifiers);
    let settings_delay = options.settings_delay;
    // Owning the connections here means aborting this task drops them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (acceptor, state, builder, verifiers) = (acceptor.clone(), state.clone(), builder.clone(), verifiers.clone());
                connections.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else {
                        return;
                    };
                    state.stats.connections.fetch_add(1, Ordering::Relaxed);
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        state.stats.resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    let certificate = certificate_identity(&verifiers, tls.get_ref().1.peer_certificates());
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        let certificate = certificate.clone();
                        async move {
                            state.stats.requests.fetch_add(1, Ordering::Relaxed);
                            let response = match authenticate(&state, &certificate, &request) {
                                Ok(user) => api::handle(state, user, request).await,
                                Err(message) => status(StatusCode::UNAUTHORIZED, "Unauthorized", &message),
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    tokio::time::sleep(settings_delay).await;
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What the client certificate says, checked once per connection.
#[derive(Clone)]
enum CertificateIdentity {
    None,
    Valid(User),
    Invalid(String),
}

fn certificate_identity(
    verifiers: &Verifiers,
    chain: Option<&[CertificateDer<'static>]>,
) -> CertificateIdentity {
    let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
        return CertificateIdentity::None;
    };
    if let Err(error) =
        verifiers
            .lenient
            .strict
            .verify_client_cert(leaf, intermediates, UnixTime::now())
    {
        return CertificateIdentity::Invalid(format!("x509: {error}"));
    }
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
                attr.and_then(|a| a.as_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            CertificateIdentity::Valid(User {
                name: text(subject.iter_common_name().next()),
                groups: subject.iter_organization().map(|o| text(Some(o))).collect(),
            })
        }
        Err(error) => CertificateIdentity::Invalid(format!("x509: {error}")),
    }
}

/// The apiserver's union authenticator: a valid certificate, else a known
/// bearer token, else 401.
fn authenticate(
    state: &State,
    certificate: &CertificateIdentity,
    request: &Request<Incoming>,
) -> Result<User, String> {
    if let CertificateIdentity::Valid(user) = certificate {
        return Ok(user.clone());
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let known = token.and_then(|t| state.tokens.read().ok()?.get(t).cloned());
    if let Some(user) = known {
        return Ok(user);
    }
    Err(match (certificate, token) {
        (CertificateIdentity::Invalid(reason), _) => format!("Unauthorized: {reason}"),
        (_, Some(_)) => "Unauthorized: invalid bearer token".into(),
        _ => "Unauthorized".into(),
    })
}

#[derive(Debug)]
struct LenientClientVerifier {
    strict: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for LenientClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.strict.supported_verify_schemes()
    }
}
