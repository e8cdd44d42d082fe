//! Reaching the apiserver through a forward proxy, chosen as client-go
//! chooses: the kubeconfig's `proxy-url` for every request, or else
//! `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as Go's `http.ProxyFromEnvironment`
//! reads them (never for `localhost` or a loopback address).
//!
//! `http://` and `https://` proxies get `CONNECT`, sent with hyper's own
//! client so the proxy's refusal keeps its status line; `socks5://` and
//! `socks5h://` (names resolved by the proxy) get hyper-util's SOCKS5
//! handshake. Either way the TLS to the apiserver runs inside the tunnel.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::SocksV5;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::status::ProxyError;

/// A connection to the next hop: the apiserver itself or, through a proxy,
/// a tunnel to it; TLS when the proxy itself is reached over `https://`.
pub type HopIo = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The proxy variables of the environment, as the process found them
/// (uppercase before lowercase, as Go reads them).
#[derive(Debug, Default, Clone)]
pub struct ProxyEnvironment {
    /// `HTTPS_PROXY` / `https_proxy`.
    pub https: String,
    /// `HTTP_PROXY` / `http_proxy` (empty under CGI, as in Go).
    pub http: String,
    /// `NO_PROXY` / `no_proxy`.
    pub no: String,
}

/// Which proxy, if any, carries connections to the apiserver.
#[derive(Clone, Default)]
pub enum ProxyRule {
    /// Connect directly.
    #[default]
    Direct,
    /// The kubeconfig's `proxy-url`: every connection, loopback included.
    Fixed(Intercept),
    /// The environment's proxies, with `NO_PROXY` and loopback exempt.
    Environment(std::sync::Arc<Matcher>),
}

impl std::fmt::Debug for ProxyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The proxy URL may hold credentials: never print it whole.
        match self {
            ProxyRule::Direct => f.write_str("Direct"),
            ProxyRule::Fixed(proxy) => write!(f, "Fixed({})", shown(proxy)),
            ProxyRule::Environment(_) => f.write_str("Environment"),
        }
    }
}

impl ProxyRule {
    /// The kubeconfig's `proxy-url`.
    ///
    /// # Errors
    ///
    /// Words for a start-up error when the URL is not an `http`, `https`,
    /// `socks5` or `socks5h` URL with a host.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("http" | "https" | "socks5" | "socks5h")) {
            return Err(
                "proxy-url must be an http://, https://, socks5:// or socks5h:// URL".into(),
            );
        }
        Matcher::builder()
            .all(url)
            .build()
            .intercept(&Uri::from_static("https://kubernetes"))
            .map(ProxyRule::Fixed)
            .ok_or_else(|| "proxy-url has no host; write it as scheme://host:port".into())
    }

    /// The environment's proxies; [`ProxyRule::Direct`] when none is set.
    pub fn from_environment(environment: &ProxyEnvironment) -> Self {
        if environment.https.is_empty() && environment.http.is_empty() {
            return ProxyRule::Direct;
        }
        // Go reads `*.example.com` as `.example.com`: subdomains only.
        let no: Vec<&str> = environment
            .no
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .strip_prefix('*')
                    .filter(|e| !e.is_empty())
                    .unwrap_or(entry)
            })
            .collect();
        let matcher = Matcher::builder()
            .https(environment.https.as_str())
            .http(environment.http.as_str())
            .no(no.join(","))
            .build();
        ProxyRule::Environment(std::sync::Arc::new(matcher))
    }

    /// The proxy for a connection to `destination`, if any.
    pub fn proxy_for(&self, destination: &Uri) -> Option<Intercept> {
        match self {
            ProxyRule::Direct => None,
            ProxyRule::Fixed(proxy) => Some(proxy.clone()),
            ProxyRule::Environment(matcher) => {
                let host = destination.host()?;
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if loopback {
                    return None;
                }
                matcher.intercept(destination)
            }
        }
    }

    /// The proxy for `destination` as a log line may show it: where it
    /// was set, its scheme, host and port, never its credentials.
    pub fn describe(&self, destination: &Uri) -> Option<String> {
        let proxy = self.proxy_for(destination)?;
        Some(match self {
            ProxyRule::Environment(_) => format!("{} (from the environment)", shown(&proxy)),
            _ => format!("{} (the kubeconfig's proxy-url)", shown(&proxy)),
        })
    }
}

/// `scheme://host:port` of a proxy, without its credentials.
fn shown(proxy: &Intercept) -> String {
    let uri = proxy.uri();
    format!("{}://{}", uri.scheme_str().unwrap_or("http"), address(uri))
}

/// `host:port` of a proxy, for messages.
fn address(uri: &Uri) -> String {
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        Some("socks5" | "socks5h") => 1080,
        _ => 80,
    });
    format!("{}:{port}", uri.host().unwrap_or_default())
}

/// Opens the first hop of a connection to the apiserver: a TCP connection,
/// or a tunnel through the proxy the rule picks. A `Service<Uri>` for
/// hyper-rustls to run TLS over.
#[derive(Clone)]
pub struct HopConnector {
    tcp: HttpConnector,
    /// TLS to an `https://` proxy: the apiserver's trust and identity, as
    /// Go's transport uses its TLS settings for the proxy too.
    tls_to_proxy: HttpsConnector<HttpConnector>,
    rule: ProxyRule,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HopConnector {
    /// A connector that dials with `tcp`, through the proxies `rule` picks.
    pub fn new(tcp: HttpConnector, tls_to_proxy: &rustls::ClientConfig, rule: ProxyRule) -> Self {
        let tls_to_proxy = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_to_proxy.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp.clone());
        HopConnector {
            tcp,
            tls_to_proxy,
            rule,
        }
    }

    async fn open(mut self, destination: Uri) -> Result<HopIo, BoxError> {
        let Some(proxy) = self.rule.proxy_for(&destination) else {
            return Ok(MaybeHttpsStream::Http(self.tcp.call(destination).await?));
        };
        let at = address(proxy.uri());
        let unreachable = |error: BoxError| ProxyError::Proxy {
            proxy: at.clone(),
            reason: format!(
                "cannot connect to the proxy: {}",
                super::connect::error_chain(error.as_ref())
            ),
        };
        match proxy.uri().scheme_str() {
            Some("socks5" | "socks5h") => {
                let mut socks = SocksV5::new(proxy.uri().clone(), self.tcp)
                    .local_dns(proxy.uri().scheme_str() == Some("socks5"));
                if let Some((user, password)) = proxy.raw_auth() {
                    socks = socks.with_auth(user.to_string(), password.to_string());
                }
                let io = socks
                    .call(destination)
                    .await
                    .map_err(|e| ProxyError::Proxy {
                        proxy: at.clone(),
                        reason: format!("the SOCKS5 request failed: {e}"),
                    })?;
                Ok(MaybeHttpsStream::Http(io))
            }
            _ => {
                let hop = self
                    .tls_to_proxy
                    .call(proxy.uri().clone())
                    .await
                    .map_err(unreachable)?;
                Ok(tunnel(hop, &destination, proxy.basic_auth(), &at).await?)
            }
        }
    }
}

impl Service<Uri> for HopConnector {
    type Response = HopIo;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<HopIo, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        Box::pin(self.clone().open(destination))
    }
}

/// Asks the proxy on `hop` to `CONNECT` to `destination` and, on `2xx`,
/// hands back the same connection, now a tunnel.
async fn tunnel(
    hop: HopIo,
    destination: &Uri,
    credentials: Option<&HeaderValue>,
    at: &str,
) -> Result<HopIo, ProxyError> {
    let failed = |reason: String| ProxyError::Proxy {
        proxy: at.to_string(),
        reason,
    };
    let target = address(destination);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hop)
        .await
        .map_err(|e| failed(format!("CONNECT failed: {e}")))?;
    let connection = tokio::spawn(connection.with_upgrades());
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = target
        .parse()
        .map_err(|_| failed(format!("cannot CONNECT to {target:?}")))?;
    if let Ok(host) = HeaderValue::from_str(&target) {
        request.headers_mut().insert(header::HOST, host);
    }
    if let Some(credentials) = credentials {
        request
            .headers_mut()
            .insert(header::PROXY_AUTHORIZATION, credentials.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(format!("CONNECT failed: {e}")))?;
    if !response.status().is_success() {
        connection.abort();
        return Err(failed(format!("refused CONNECT: {}", response.status())));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| failed(format!("CONNECT failed: {e}")))?;
    let parts = upgraded
        .downcast::<HopIo>()
        .map_err(|_| failed("CONNECT returned an unexpected connection".into()))?;
    if !parts.read_buf.is_empty() {
        return Err(failed(
            "the proxy sent data before the TLS handshake began".into(),
        ));
    }
    Ok(parts.io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(https: &str, no: &str) -> ProxyRule {
        ProxyRule::from_environment(&ProxyEnvironment {
            https: https.into(),
            http: String::new(),
            no: no.into(),
        })
    }

    fn proxied(rule: &ProxyRule, server: &str) -> Option<String> {
        rule.proxy_for(&server.parse().unwrap())
            .map(|p| p.uri().to_string())
    }

    #[test]
    fn environment_is_read_as_go_reads_it() {
        let rule = environment(
            "http://proxy.corp:3128",
            "internal.corp, *.lab.corp, 10.0.0.0/8, 192.168.1.7",
        );
        let via = Some("http://proxy.corp:3128/".to_string());
        assert_eq!(proxied(&rule, "https://api.example.com:6443"), via);
        assert_eq!(proxied(&rule, "https://internal.corp:6443"), None);
        assert_eq!(proxied(&rule, "https://k8s.internal.corp:6443"), None);
        assert_eq!(proxied(&rule, "https://k8s.lab.corp"), None);
        assert_eq!(proxied(&rule, "https://10.2.3.4:6443"), None);
        assert_eq!(proxied(&rule, "https://192.168.1.7"), None);
        assert_eq!(proxied(&rule, "https://192.168.1.8"), via);
        // Loopback never goes through the environment's proxy.
        assert_eq!(proxied(&rule, "https://127.0.0.1:6443"), None);
        assert_eq!(proxied(&rule, "https://[::1]:6443"), None);
        assert_eq!(proxied(&rule, "https://localhost:6443"), None);
        // `http://` apiservers use HTTP_PROXY, which is unset here.
        assert_eq!(proxied(&rule, "http://api.example.com"), None);
        assert_eq!(
            proxied(&environment("http://p:1", "*"), "https://a.b"),
            None
        );
        assert!(matches!(environment("", ""), ProxyRule::Direct));
    }

    #[test]
    fn proxy_url_applies_to_every_server_and_hides_credentials() {
        let rule = ProxyRule::from_url("socks5h://alice:s3cret@socks.corp:1080").unwrap();
        assert_eq!(
            proxied(&rule, "https://127.0.0.1:6443").as_deref(),
            Some("socks5h://socks.corp:1080/")
        );
        let server = Uri::from_static("https://10.0.0.1");
        let described = format!("{rule:?} {}", rule.describe(&server).unwrap());
        assert!(!described.contains("s3cret"), "{described}");
        assert!(
            described.contains("socks5h://socks.corp:1080"),
            "{described}"
        );
        assert!(ProxyRule::from_url("ftp://x:1").is_err());
        assert!(ProxyRule::from_url("proxy.corp:3128").is_err());
    }
}
