//! Opening a connection to the apiserver: DNS, TCP (no-delay, keep-alive),
//! TLS with the right server name, all within `--connect-timeout`; and the
//! translation of a failure into words a user can act on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tower_service::Service;

use super::forward_proxy::{HopConnector, HopIo, ProxyRule};
use super::tls::ClientTls;
use crate::status::ProxyError;
use crate::telemetry::UpstreamCounters;

/// A stream to the apiserver, plain or TLS, direct or through a proxy.
pub type UpstreamIo = MaybeHttpsStream<HopIo>;

/// Opens connections to the apiserver; a `Service<Uri>` as hyper-util's
/// pool wants, and cheap to clone.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
    dial: Arc<Dial>,
    /// The connector for the current TLS configuration, shared by every
    /// clone, made again when the client certificate changes.
    inner: Arc<ArcSwap<Inner>>,
    timeout: Duration,
    /// Connections opened (each a TLS handshake to a TLS apiserver),
    /// shared by every clone, for `/metrics`.
    opened: UpstreamCounters,
}

/// How connections are dialled, whatever the TLS configuration.
struct Dial {
    tcp: HttpConnector,
    proxy: ProxyRule,
    offer_h2: bool,
    server_name: Option<ServerName<'static>>,
}

impl Dial {
    fn with(&self, tls: Arc<ClientConfig>) -> Inner {
        // The apiserver's TLS settings go to an `https://` proxy too.
        let http = HopConnector::new(self.tcp.clone(), &tls, self.proxy.clone());
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        let https = match self.offer_h2 {
            true => builder.enable_all_versions().wrap_connector(http),
            false => builder.enable_http1().wrap_connector(http),
        };
        Inner { tls, https }
    }
}

/// A connector for one TLS configuration.
struct Inner {
    tls: Arc<ClientConfig>,
    https: HttpsConnector<HopConnector>,
}

impl Connector {
    /// A connector using `tls`, offering HTTP/2 in ALPN when `offer_h2`,
    /// through the proxy `proxy` picks, counting the connections it opens
    /// in `opened`.
    pub fn new(
        tls: &Arc<ClientTls>,
        proxy: &ProxyRule,
        offer_h2: bool,
        server_name: Option<ServerName<'static>>,
        keepalive: Option<Duration>,
        timeout: Duration,
        opened: UpstreamCounters,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_keepalive(keepalive);
        tcp.set_connect_timeout(Some(timeout));
        let dial = Arc::new(Dial {
            tcp,
            proxy: proxy.clone(),
            offer_h2,
            server_name,
        });
        let inner = Arc::new(ArcSwap::from_pointee(dial.with(tls.current())));
        Connector {
            tls: tls.clone(),
            dial,
            inner,
            timeout,
            opened,
        }
    }

    /// The connector for the current TLS configuration.
    fn current(&self) -> HttpsConnector<HopConnector> {
        let tls = self.tls.current();
        let inner = self.inner.load();
        if Arc::ptr_eq(&inner.tls, &tls) {
            return inner.https.clone();
        }
        let fresh = self.dial.with(tls);
        let https = fresh.https.clone();
        self.inner.store(Arc::new(fresh));
        https
    }

    /// Opens one connection to `uri`'s host.
    ///
    /// # Errors
    ///
    /// A [`ProxyError`] that says whether the apiserver could not be reached,
    /// was too slow, or failed TLS.
    pub async fn connect(&self, uri: &Uri) -> Result<UpstreamIo, ProxyError> {
        let mut inner = self.current();
        match tokio::time::timeout(self.timeout, inner.call(uri.clone())).await {
            Ok(Ok(io)) => {
                self.opened.connection_opened();
                Ok(io)
            }
            // Nothing was sent yet: whatever failed, the server was not reached.
            Ok(Err(error)) => Err(match classify(uri, error.as_ref()) {
                ProxyError::Upstream { server, reason } => ProxyError::Connect { server, reason },
                other => other,
            }),
            Err(_) => Err(ProxyError::ConnectTimeout {
                server: authority(uri),
                seconds: self.timeout.as_secs(),
            }),
        }
    }
}

impl Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await })
    }
}

fn authority(uri: &Uri) -> String {
    uri.authority().map(|a| a.to_string()).unwrap_or_default()
}

/// Turns a failed connection or request into a [`ProxyError`], looking
/// through the error chain for the I/O or TLS cause.
pub fn classify(uri: &Uri, error: &(dyn std::error::Error + 'static)) -> ProxyError {
    let server = authority(uri);
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut io_kind = None;
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_error(server, tls);
        }
        if let Some(classified) = e.downcast_ref::<ProxyError>() {
            return match classified {
                ProxyError::Proxy { proxy, reason } => ProxyError::Proxy {
                    proxy: proxy.clone(),
                    reason: reason.clone(),
                },
                ProxyError::Connect { reason, .. } => ProxyError::Connect {
                    server,
                    reason: reason.clone(),
                },
                other => ProxyError::Upstream {
                    server,
                    reason: other.to_string(),
                },
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            // io::Error::source skips the wrapped error itself; look inside.
            if let Some(inner) = io.get_ref() {
                current = Some(inner);
                continue;
            }
        }
        current = e.source();
    }
    use std::io::ErrorKind as K;
    let reason = match io_kind {
        Some(K::ConnectionRefused) => "connection refused",
        Some(K::TimedOut) => "connection timed out",
        Some(K::ConnectionReset) => "connection reset",
        Some(K::UnexpectedEof) => "the connection was closed during the handshake",
        _ => {
            return if is_connect_error(error) {
                ProxyError::Connect {
                    server,
                    reason: error_chain(error),
                }
            } else {
                ProxyError::Upstream {
                    server,
                    reason: error_chain(error),
                }
            };
        }
    };
    ProxyError::Connect {
        server,
        reason: reason.to_string(),
    }
}

fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect())
}

fn tls_error(server: String, error: &rustls::Error) -> ProxyError {
    use rustls::{CertificateError as C, Error as E};
    let hint = match error {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the apiserver's certificate is not signed by the kubeconfig's certificate-authority; check certificate-authority(-data)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the certificate does not name this server; set tls-server-name in the kubeconfig to a name it holds"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the apiserver's certificate has expired; renew it"
        }
        E::AlertReceived(_) => {
            "the apiserver refused the TLS handshake; check the client certificate and key in the kubeconfig"
        }
        _ => "check the kubeconfig's TLS settings",
    };
    ProxyError::Tls {
        server,
        source: error.clone(),
        hint,
    }
}

/// One line: the error and its causes, joined.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
