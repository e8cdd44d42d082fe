//! The apiserver as kubegate sees it: one [`Upstream`] that sends a request
//! over a pooled connection (HTTP/2 when the server offers it, else pooled
//! HTTP/1.1), with kubegate's own credentials.
//!
//! - [`clusters`]: one apiserver at `/`, or one per context (`--contexts`).
//! - [`tls`]: the rustls client configuration.
//! - [`connect`]: opening a connection, and what a failure means.
//! - [`pool`]: HTTP/2 connections that respect the stream limit.
//! - [`forward_proxy`]: the tunnel through a forward proxy, when one is set.
//! - [`credentials`]: the token, kept fresh.
//! - [`settings`]: the apiserver and identity, from a kubeconfig or a
//!   service account.

pub mod clusters;
pub mod connect;
pub mod credentials;
pub mod forward_proxy;
pub mod pool;
pub mod settings;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::{Capture, ProxyBody};
use crate::error::StartupError;
use crate::lifecycle::Lifecycle;
use crate::status::ProxyError;
use crate::telemetry::UpstreamCounters;
use connect::{Connector, classify};
use credentials::Credentials;
use pool::{Checkout, H2Pool};
pub use settings::UpstreamSettings;

/// A request body on its way to the apiserver: the client's, streamed; one
/// kubegate wrote; or the client's, streamed while audit keeps a copy.
pub type UpstreamBody = Either<Incoming, Either<Full<Bytes>, Capture<Incoming>>>;

/// The apiserver: where it is, how to reach it, who kubegate is there.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// `--append-server-path`: prepended to every path; empty when off.
    server_path: String,
    /// HTTP/2 connections; `None` for a plain-HTTP apiserver.
    h2: Option<H2Pool>,
    /// Set once the apiserver has chosen HTTP/1.1 over HTTP/2.
    http1_only: AtomicBool,
    http1: Client<Connector, UpstreamBody>,
    /// Opens HTTP/1.1-only connections for upgrades.
    upgrade_connector: Connector,
    /// When the apiserver last answered anything: seconds since `started`
    /// plus one (0: never). For `/readyz`.
    last_answer: AtomicU64,
    started: std::time::Instant,
    credentials: Credentials,
    impersonate: Vec<(HeaderName, HeaderValue)>,
}

impl Upstream {
    /// Connects the pieces: TLS, credentials (run once now), pools.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] when the credential or TLS material is unusable.
    pub async fn new(
        settings: UpstreamSettings,
        counters: &UpstreamCounters,
        lifecycle: &Lifecycle,
    ) -> Result<Self, StartupError> {
        let (credentials, exec_identity) = Credentials::start(
            &settings.credential,
            &settings.server,
            settings.network.token_reload_interval,
            counters,
            lifecycle,
        )
        .await?;
        let identity = exec_identity.as_ref().or(settings.client_identity.as_ref());
        let tls = tls::ClientTls::new(&settings, identity, lifecycle)?;
        let server_name = match &settings.tls_server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                StartupError::Credential(format!(
                    "tls-server-name {name:?} ({}) is not a valid DNS name or IP address",
                    settings.origin
                ))
            })?),
            None => None,
        };
        let connector = |offer_h2| {
            Connector::new(
                &tls,
                &settings.proxy,
                offer_h2,
                server_name.clone(),
                settings.network.keepalive,
                settings.network.connect_timeout,
                counters.clone(),
            )
        };
        let scheme = settings.server.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let h2 = (scheme == Scheme::HTTPS).then(|| H2Pool::new(connector(true)));
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(64)
            .build(connector(false));
        if let Some(proxy) = settings.proxy.describe(&settings.server) {
            tracing::info!(server = %settings.server, "reaching the apiserver through {proxy}");
        }
        if settings.insecure_skip_tls_verify {
            tracing::warn!(
                "insecure-skip-tls-verify is set ({}): kubegate will not check the apiserver's certificate, so anyone on the network path can read and change the traffic, credentials included",
                settings.origin
            );
        }
        Ok(Upstream {
            authority: settings.server.authority().cloned().ok_or_else(|| {
                StartupError::Credential(format!("{}: the server has no host", settings.origin))
            })?,
            scheme,
            server_path: settings.server_path,
            h2,
            http1_only: AtomicBool::new(false),
            http1,
            upgrade_connector: connector(false),
            last_answer: AtomicU64::new(0),
            started: std::time::Instant::now(),
            credentials,
            impersonate: settings.impersonate,
        })
    }

    /// The apiserver's `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The absolute URI for `path_and_query` on the apiserver, with the
    /// server path (when appended) in front.
    ///
    /// # Errors
    ///
    /// [`ProxyError::Upstream`] if the result is not a valid URI (it is
    /// built from a checked path, so this does not happen in practice).
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Result<Uri, ProxyError> {
        let path_and_query = if self.server_path.is_empty() {
            path_and_query
        } else {
            let joined = format!("{}{}", self.server_path, path_and_query);
            PathAndQuery::try_from(joined).map_err(|e| self.error(e.to_string()))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| self.error(e.to_string()))
    }

    fn error(&self, reason: String) -> ProxyError {
        ProxyError::Upstream {
            server: self.authority.to_string(),
            reason,
        }
    }

    /// Adds kubegate's identity: the credential and any impersonation from
    /// the kubeconfig (unless the client's own impersonation is forwarded).
    pub fn authorize(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.credentials.header() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        if !headers.contains_key("impersonate-user") {
            for (name, value) in &self.impersonate {
                headers.append(name.clone(), value.clone());
            }
        }
    }

    /// Sends a request with an absolute URI to the apiserver and returns its
    /// response with the body still streaming.
    ///
    /// # Errors
    ///
    /// A [`ProxyError`] when no connection can be made or it breaks before
    /// the response head arrives.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let sent = request.headers().get(http::header::AUTHORIZATION).cloned();
        let response = match self.checkout_h2(request.uri()).await? {
            Some((mut sender, guard)) => {
                *request.version_mut() = Version::HTTP_2;
                let uri = request.uri().clone();
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| classify(&uri, &e))?;
                response.map(|body| ProxyBody::Upstream(body, Some(guard)))
            }
            None => {
                *request.version_mut() = Version::HTTP_11;
                let uri = request.uri().clone();
                let response = self
                    .http1
                    .request(request)
                    .await
                    .map_err(|e| classify(&uri, &e))?;
                response.map(|body| ProxyBody::Upstream(body, None))
            }
        };
        self.answered();
        if response.status() == StatusCode::UNAUTHORIZED {
            // Boxed: a refresh (an exec plugin run) is rare and its future
            // large, and every request in flight would carry its room.
            Box::pin(self.credentials.rejected(sent.as_ref())).await;
        }
        Ok(response)
    }

    async fn checkout_h2(&self, uri: &Uri) -> Result<Option<pool::Slot>, ProxyError> {
        let Some(h2) = &self.h2 else { return Ok(None) };
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match h2.checkout(uri).await? {
            Checkout::H2(slot) => Ok(Some(slot)),
            Checkout::Http1 => {
                tracing::info!(server = %self.authority, "the apiserver does not offer HTTP/2; using HTTP/1.1");
                self.http1_only.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Records that the apiserver answered (any status counts: it is up).
    pub fn answered(&self) {
        let now = self.started.elapsed().as_secs() + 1;
        self.last_answer.store(now, Ordering::Relaxed);
    }

    /// Whether the apiserver answered anything within `window`.
    pub fn answered_within(&self, window: std::time::Duration) -> bool {
        let last = self.last_answer.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_secs() + 1;
        last != 0 && now.saturating_sub(last) <= window.as_secs()
    }

    /// How many HTTP/2 connections have been opened to the apiserver.
    pub fn h2_connections_opened(&self) -> usize {
        self.h2.as_ref().map_or(0, H2Pool::connections_opened)
    }

    /// The connector for upgrade requests (HTTP/1.1 only).
    pub fn upgrade_connector(&self) -> &Connector {
        &self.upgrade_connector
    }
}
