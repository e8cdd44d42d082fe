//! kubegate: an authenticating reverse proxy for the Kubernetes API, a
//! drop-in for `kubectl proxy` that is safe to leave exec, attach and
//! port-forward on.
//!
//! # Layout
//!
//! Modules from the leaves up: each uses only modules listed before it, so
//! there are no cycles (`cargo test --test layout` checks it). The
//! library's public surface is what `main` and the tests use; everything
//! else is crate-private.
//!
//! 1. [`error`]: start-up errors, one line naming the file or flag.
//! 2. [`pattern`]: kubectl's comma-separated regex lists.
//! 3. [`telemetry`]: what kubegate counts, pushed where it happens, and
//!    the one registry.
//! 4. [`cli`]: the command line (kubectl proxy's flags first), a group
//!    per subsystem, every value parsed to its final type.
//! 5. [`body`]: the one response body type, and the tee audit uses.
//! 6. [`connection`]: client connections: one connection's requests in
//!    flight and its idle deadlines; the limit, and room made at it.
//! 7. [`lifecycle`]: the background tasks, stopped together.
//! 8. [`reload`]: files read again when they change.
//! 9. [`request`]: the one reading of a request: canonical path, verb,
//!    resource, namespace, name, as the apiserver reads them.
//! 10. [`filters`]: kubectl's host, path and method filters.
//! 11. [`policy`]: `--policy-file` and `--read-only`: rules in Kubernetes
//!     terms.
//! 12. [`status`]: every failure as a `metav1.Status` response.
//! 13. [`client`]: who is at the other end of a connection.
//! 14. [`cors`]: browser origins and CORS.
//! 15. [`access`]: the local access token.
//! 16. [`certs`]: certificate and key files, reloaded when they change.
//! 17. [`upstream`]: the apiservers: settings from a kubeconfig, TLS,
//!     credentials, forward proxies, pooled HTTP/2, one cluster or one per
//!     context.
//! 18. [`forward`]: header rewriting on the way to and from the apiserver.
//! 19. [`admin`]: `/healthz`, `/readyz` and `/metrics` on their own port.
//! 20. [`audit`]: `audit.k8s.io/v1` events, to a rotated log and a webhook.
//! 21. [`recording`]: exec and attach sessions written as asciicast
//!     files a player replays, linked from their audit events.
//! 22. [`handshake`]: the upgrade handshake both ways, shared by the
//!     relay and the port-forward multiplexer.
//! 23. [`upgrade`]: exec, attach, port-forward: the byte splice, and the
//!     client sessions both kinds of upgrade run as.
//! 24. [`portforward`]: WebSocket port-forward answered by kubegate and
//!     multiplexed onto one upstream SPDY session per pod.
//! 25. [`www`]: `--www` static files.
//! 26. [`listen`]: TCP and unix sockets.
//! 27. [`proxy`]: the request handler, in stages.
//! 28. [`serve`]: connections, TLS, graceful shutdown.
//! 29. [`shutdown`]: the signals.
//! 30. [`config`]: each flag group into its subsystem's settings, checked
//!     against the others, every problem reported at once.
//! 31. `fuzz` (tests only): every parser of client and file input, fed
//!     random and mutated input.
//!
//! The crate root ties them together ([`Proxy`]); the binary adds `main`
//! and, with the default `demo` feature, `kubegate demo` (src/demo.rs) on
//! the apiserver double, which is a crate of its own (`kubegate-double`).
//!
//! # Life of a request
//!
//! 1. [`listen`] accepts a TCP or unix connection; [`serve`] gives it to
//!    hyper (HTTP/1.1 with upgrades, or HTTP/2) and watches it for shutdown.
//! 2. [`proxy`] reads the request once ([`request`]): the path decoded
//!    once, any spelling that could be read two ways refused, and its verb,
//!    resource and namespace worked out as the apiserver will. With auditing
//!    on, [`audit`] opens the request's record (`RequestReceived`).
//! 3. Admission: a browser's `Origin` must be kubegate's own or match
//!    `--accept-origins` ([`cors`]); preflights are answered here. Then the
//!    route: `--www-prefix` to [`www`] (no token needed: a page must load
//!    before it can send one); with an access token configured, anything
//!    else must carry it ([`access`]); outside `--api-prefix` is 404.
//! 4. [`filters`] applies kubectl's host, path and method filters to that
//!    reading, then [`policy`] the Kubernetes-aware rules (`--policy-file`,
//!    `--read-only`).
//! 5. [`forward`] drops hop-by-hop headers and client credentials and sets
//!    `X-Forwarded-*`; [`upstream`] adds kubegate's credential and sends the
//!    request over a pooled connection, bodies streaming both ways.
//!    An upgrade (exec, attach, port-forward) instead goes to [`upgrade`]:
//!    a fresh HTTP/1.1 connection, the apiserver's `101` passed back, and
//!    the two byte streams spliced until either side ends; a WebSocket
//!    port-forward goes to [`portforward`], which answers it and carries
//!    its connections on the pod's shared session. A WebSocket over
//!    HTTP/2 (RFC 8441) is read as the HTTP/1.1 upgrade it stands for.
//! 6. Any failure becomes a [`status::ProxyError`] and then the status
//!    and `metav1.Status` body the apiserver would give.
//! 7. The finish: [`audit`] writes the rest of the request's events in
//!    stage order (`ResponseStarted` for long-running requests,
//!    `ResponseComplete` when the body ends), refusals included, and its
//!    audit ID goes upstream and back to the client as `Audit-Id`; metrics
//!    and the request line read the same request info.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod body;
pub(crate) mod certs;
pub mod cli;
pub(crate) mod client;
pub mod config;
pub(crate) mod connection;
pub(crate) mod cors;
pub mod error;
pub(crate) mod filters;
pub(crate) mod forward;
pub(crate) mod handshake;
pub(crate) mod lifecycle;
pub mod listen;
pub(crate) mod pattern;
pub(crate) mod policy;
pub(crate) mod portforward;
pub(crate) mod proxy;
pub(crate) mod recording;
pub(crate) mod reload;
pub(crate) mod request;
pub(crate) mod serve;
pub mod shutdown;
pub(crate) mod status;
pub(crate) mod telemetry;
pub(crate) mod upgrade;
pub(crate) mod upstream;
pub(crate) mod www;

#[cfg(test)]
mod fuzz;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use error::StartupError;
use listen::Listener;
use proxy::Shared;
use upstream::Upstream;

/// A configured proxy, ready to serve.
pub struct Proxy {
    shared: Arc<Shared>,
    /// `--tls-cert-file`: TLS for every accepted TCP connection.
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: connection::Settings,
    admin: Option<std::net::SocketAddr>,
    /// The background tasks: the admin server, the readiness probe, the
    /// reloaders and the credential refreshers.
    lifecycle: lifecycle::Lifecycle,
}

impl Proxy {
    /// Builds the proxy: connects credentials and TLS (running an exec
    /// plugin once, reading token files), without touching the network.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming what is misconfigured.
    pub async fn new(config: Config) -> Result<Proxy, StartupError> {
        if config.filters.disabled {
            tracing::warn!(
                "Request filter disabled (--disable-filter): any web page or local process that can reach kubegate can use your credentials"
            );
        }
        let telemetry = Arc::new(telemetry::Telemetry::default());
        let lifecycle = lifecycle::Lifecycle::default();
        let reload_interval = config.network.token_reload_interval;
        let tls = match &config.serve_tls {
            Some((cert, key)) => Some(serve_tls(cert, key, reload_interval, &lifecycle)?),
            None => None,
        };
        let fallback_user = config.clusters.upstreams[0]
            .1
            .client_identity
            .as_ref()
            .map(|identity| audit::identity::from_certificate(&identity.chain[0]))
            .unwrap_or_default();
        let mut list = Vec::with_capacity(config.clusters.upstreams.len());
        for (name, settings) in config.clusters.upstreams {
            let upstream = Upstream::new(settings, &telemetry.upstream, &lifecycle).await?;
            list.push(upstream::clusters::Cluster { name, upstream });
        }
        let clusters = match config.clusters.named {
            true => upstream::clusters::Clusters::named(list),
            false => upstream::clusters::Clusters::single(list.remove(0).upstream),
        };
        let upstream = clusters.primary();
        let audit = match config.audit {
            Some(settings) => Some(Arc::new(
                audit::Audit::start(
                    settings,
                    upstream,
                    fallback_user,
                    &telemetry.audit,
                    &lifecycle,
                )
                .await?,
            )),
            None => None,
        };
        if let Some(policy) = &config.policy {
            policy.watch(reload_interval, &lifecycle);
        }
        let recorder = match config.recording {
            Some(settings) => Some(recording::Recorder::start(
                settings,
                telemetry.clone(),
                &lifecycle,
            )?),
            None => None,
        };
        Ok(Proxy {
            tls,
            shared: Arc::new(Shared {
                routes: config.routes,
                filters: config.filters,
                policy: config.policy,
                origins: config.origins,
                access_token: config.access.token,
                clusters,
                forward_client_credentials: config.access.forward_client_credentials,
                relays: upgrade::Relays::new(telemetry.clone()),
                port_forward: config
                    .port_forward_idle
                    .map(|idle| portforward::Multiplexer::new(idle, telemetry.clone())),
                limit: connection::Limit::new(
                    config.connections.limit,
                    telemetry.connections.clone(),
                ),
                audit,
                recorder,
                metrics: telemetry,
                readiness: Arc::new(admin::Readiness::default()),
            }),
            connections: config.connections,
            admin: config.admin,
            lifecycle,
        })
    }

    /// How many upgraded connections (exec, attach, port-forward) are open.
    pub fn open_relays(&self) -> usize {
        self.shared.relays.open()
    }

    /// How many HTTP/2 connections the proxy has opened to the apiserver.
    pub fn upstream_connections_opened(&self) -> usize {
        self.shared
            .clusters
            .iter()
            .map(|c| c.upstream.h2_connections_opened())
            .sum()
    }

    /// Binds `--admin-address`, if set, and serves `/healthz`, `/readyz`
    /// and `/metrics` there; keeps readiness fresh by asking the apiserver
    /// for `/version` when no request has in a while.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] if the admin address cannot be bound.
    pub async fn start_admin(&self) -> Result<Option<std::net::SocketAddr>, StartupError> {
        let Some(address) = self.admin else {
            return Ok(None);
        };
        let listener = admin::bind(address)
            .await
            .map_err(|e| StartupError::Listen {
                address: address.to_string(),
                message: format!("{}; fix --admin-address", error::io_reason(&e)),
            })?;
        let bound = listener.local_addr().ok();
        let shared = self.shared.clone();
        let apiservers_up: admin::ApiserversUp = Box::new(move || {
            let answered = |c: &upstream::clusters::Cluster| {
                let up = c.upstream.answered_within(admin::READY_WITHIN);
                (c.name.clone(), up)
            };
            shared.clusters.iter().map(answered).collect()
        });
        let readiness = (self.shared.readiness.clone(), apiservers_up);
        let lifecycle = &self.lifecycle;
        let (tasks, stopping) = (lifecycle.tasks(), lifecycle.stopping());
        admin::serve(
            listener,
            self.shared.metrics.clone(),
            readiness,
            tasks,
            stopping,
        );
        lifecycle.spawn(keep_ready(self.shared.clone()));
        Ok(bound)
    }

    /// Serves `listener` until `shutdown` resolves, then drains connections
    /// for up to `--shutdown-grace`.
    pub async fn serve(&self, listener: Listener, shutdown: impl Future<Output = ()>) {
        let connections = serve::Connections {
            settings: self.connections,
            tls: self.tls.clone(),
        };
        serve::serve(listener, self.shared.clone(), shutdown, connections).await;
        // Connections are closed and the audit flushed: the background
        // tasks go last, so /readyz answers "shutting down" until the end.
        self.lifecycle.stop().await;
    }
}

/// What `kubegate policy check` found.
#[derive(Debug)]
pub struct PolicyCheck {
    /// What looks wrong in the file, one line each.
    pub warnings: Vec<String>,
    /// The decision and why, in one line.
    pub line: String,
    /// Whether the request is allowed.
    pub allowed: bool,
}

/// `kubegate recordings list DIR`: the recordings under `dir`, as a
/// table on stdout.
///
/// # Errors
///
/// When `dir` cannot be read.
pub fn list_recordings(dir: &std::path::Path) -> std::io::Result<()> {
    let found = recording::replay::list(dir)
        .map_err(|error| std::io::Error::other(format!("{}: {error}", dir.display())))?;
    recording::replay::print_list(&found, dir, &mut std::io::stdout().lock())
}

/// `kubegate recordings play FILE`: the recording's output on stdout, in
/// its own time.
///
/// # Errors
///
/// When the file cannot be read or is not asciicast v2.
pub fn play_recording(file: &std::path::Path, speed: f64, idle_limit: f64) -> std::io::Result<()> {
    let sane = speed > 0.0 && speed.is_finite() && idle_limit >= 0.0 && idle_limit.is_finite();
    if !sane {
        return Err(std::io::Error::other(
            "--speed must be above 0 and --idle-limit at least 0",
        ));
    }
    let idle_limit = std::time::Duration::try_from_secs_f64(idle_limit)
        .map_err(|_| std::io::Error::other("--idle-limit is too large"))?;
    recording::replay::play(file, speed, idle_limit, &mut std::io::stdout().lock())
}

/// `kubegate policy check`: what a policy file (and `--read-only`) decides
/// for one request, without a cluster.
///
/// # Errors
///
/// A [`StartupError`] when the file cannot be used.
pub fn check_policy(
    file: &std::path::Path,
    read_only: bool,
    method: &str,
    target: &str,
    upgrade: bool,
) -> Result<PolicyCheck, StartupError> {
    let Some(policy) = policy::Policy::load(Some(file), read_only)? else {
        return Ok(PolicyCheck {
            warnings: Vec::new(),
            line: String::new(),
            allowed: true,
        });
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let method = method.to_ascii_uppercase();
    let (line, allowed) = match request::RequestInfo::read(&method, path, query, upgrade) {
        Ok(request) => match policy.explain(&request) {
            Ok(line) => (line, true),
            Err(refusal) => (format!("refused: 403 {refusal}"), false),
        },
        Err(error) => (format!("refused: 400 {error}"), false),
    };
    Ok(PolicyCheck {
        warnings: policy.warnings(),
        line,
        allowed,
    })
}

/// The TLS acceptor for `--tls-cert-file`: HTTP/2 and HTTP/1.1 by ALPN,
/// the certificate re-read when its files change.
fn serve_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    interval: std::time::Duration,
    lifecycle: &lifecycle::Lifecycle,
) -> Result<tokio_rustls::TlsAcceptor, StartupError> {
    let provider = upstream::tls::provider();
    let pair = certs::FilePair::watch(cert, key, interval, &provider, lifecycle)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Credential(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(pair);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Asks each apiserver for `/version` whenever nothing else has reached it
/// for a while, so that `/readyz` of an idle sidecar stays truthful.
async fn keep_ready(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tick.tick().await;
        for cluster in shared.clusters.iter() {
            // One slow apiserver does not hold up the others' checks.
            let shared = shared.clone();
            let name = cluster.name.clone();
            tokio::spawn(async move {
                if let Some(cluster) = shared.clusters.iter().find(|c| c.name == name) {
                    ask_version(&cluster.upstream).await;
                }
            });
        }
    }
}

/// `GET /version` on `upstream` unless it answered in the last 15 s.
async fn ask_version(upstream: &Upstream) {
    use http_body_util::{BodyExt, Either, Full};
    if upstream.answered_within(std::time::Duration::from_secs(15)) {
        return;
    }
    let Ok(uri) = upstream.uri_for(http::uri::PathAndQuery::from_static("/version")) else {
        return;
    };
    let body = Either::Right(Either::Left(Full::new(bytes::Bytes::new())));
    let Ok(mut request) = http::Request::get(uri).body(body) else {
        return;
    };
    upstream.authorize(request.headers_mut());
    // `send` records the answer; the body is read so the stream closes.
    if let Ok(response) = upstream.send(request).await {
        let _ = response.into_body().collect().await;
    }
}
