//! The floor proxy: the least a proxy built on kubegate's stack can do, as
//! a measuring instrument for the benchmark (never shipped). It serves
//! plain HTTP/1.1 and h2c on 127.0.0.1 and forwards every request to the
//! upstream over rustls with a client certificate, as kubegate does:
//! requests over one pooled connection (HTTP/2 when the upstream offers
//! it), upgrades (exec, attach, port-forward) over an HTTP/1.1 connection
//! of their own, bytes copied both ways. No filters, no audit, no policy,
//! no metrics: kubegate's distance to it is the cost of what kubegate adds.
//!
//!     floor-proxy https://127.0.0.1:PORT CA.crt CLIENT.crt CLIENT.key

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

type Body = BoxBody<Bytes, hyper::Error>;

/// Upstream HTTP/2 connections requests are spread over: hyper-util's
/// pool keeps one per host, and the upstream takes 100 streams on each
/// (as kube-apiserver does), too few for the benchmark's 1,000 watches.
const CONNECTIONS: usize = 16;

struct Upstream {
    authority: http::uri::Authority,
    /// One client (so one connection) each, taken in turn.
    pooled: Vec<Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>>,
    next: AtomicUsize,
    /// For upgrades: ALPN http/1.1 only.
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

fn tls_config(ca: &str, cert: &str, key: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots.add(der.expect("a CA certificate")).expect("the CA");
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("the certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("the certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("the key file");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("the client certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, ca, cert, key] = args.as_slice() else {
        panic!("usage: floor-proxy https://HOST:PORT CA CERT KEY");
    };
    let url: Uri = url.parse().expect("the upstream URL");
    let authority = url.authority().expect("a host and port").clone();
    let pooled = (0..CONNECTIONS)
        .map(|_| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                // ALPN h2 and http/1.1, set by the builder.
                .with_tls_config(tls_config(ca, cert, key, &[]))
                .https_only()
                .enable_all_versions()
                .build();
            Client::builder(TokioExecutor::new()).build(connector)
        })
        .collect();
    let upgrades = tls_config(ca, cert, key, &[b"http/1.1"]);
    let upstream = Arc::new(Upstream {
        name: ServerName::try_from(authority.host().to_string()).expect("a server name"),
        authority,
        pooled,
        next: AtomicUsize::new(0),
        tls: tokio_rustls::TlsConnector::from(Arc::new(upgrades)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    println!(
        "Starting to serve on {}",
        listener.local_addr().expect("the address")
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let upstream = upstream.clone();
                async move { upstream.forward(request).await }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // As kubegate: 1,000 watches on one client connection.
            builder.http2().max_concurrent_streams(1000);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Upstream {
    async fn forward(&self, mut request: Request<Incoming>) -> Result<Response<Body>, String> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if request.headers().contains_key(header::UPGRADE) {
            let from_client = hyper::upgrade::on(&mut request);
            *request.uri_mut() = path.parse().map_err(|e| format!("{e}"))?;
            return self.upgrade(request, from_client).await;
        }
        *request.uri_mut() = Uri::builder()
            .scheme("https")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| e.to_string())?;
        *request.version_mut() = http::Version::HTTP_11;
        request.headers_mut().remove(header::HOST);
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS;
        let response = self.pooled[turn]
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.map(BodyExt::boxed))
    }

    async fn upgrade(
        &self,
        request: Request<Incoming>,
        from_client: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<Body>, String> {
        let tcp = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection.with_upgrades());
        let (parts, _) = request.into_parts();
        let mut response = sender
            .send_request(Request::from_parts(parts, Empty::<Bytes>::new()))
            .await
            .map_err(|e| e.to_string())?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let from_upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (from_client.await, from_upstream.await) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(upstream),
                )
                .await;
            });
        }
        Ok(response.map(BodyExt::boxed))
    }
}
