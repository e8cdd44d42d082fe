//! Where a forwarded port leads. A port the pod declares
//! (`spec.containers[].ports[].containerPort`) is served in process, as the
//! pod's own program would serve it: a small HTTP page naming the pod, so
//! `kubectl port-forward pod/nginx 8080:80` and `curl localhost:8080` work
//! out of the box. Any other port goes to the same port on 127.0.0.1, where
//! tests start the servers they forward to.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection to a forwarded port.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// The ports of one pod.
#[derive(Debug, Clone, Default)]
pub struct PodPorts {
    /// `namespace/name`, for the page.
    pod: String,
    /// The ports the pod declares, served in process.
    served: Vec<u16>,
}

impl PodPorts {
    /// The ports `pod` (namespace `namespace`) declares.
    pub fn of(namespace: &str, pod: &Value) -> Self {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let served = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        PodPorts {
            pod: format!("{namespace}/{name}"),
            served,
        }
    }

    /// Opens `port`: in process if the pod declares it, else TCP to
    /// 127.0.0.1.
    ///
    /// # Errors
    ///
    /// The connect error, for the error channel.
    pub async fn dial(&self, port: u16) -> io::Result<Box<dyn Connection>> {
        if !self.served.contains(&port) {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            return Ok(Box::new(tcp));
        }
        let (client, server) = tokio::io::duplex(64 * 1024);
        let pod = self.pod.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let page = page(&pod, port);
                async move { Ok::<_, Infallible>(page) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        Ok(Box::new(client))
    }
}

/// The page a demo pod serves on its declared ports.
fn page(pod: &str, port: u16) -> Response<Full<Bytes>> {
    let body = format!(
        "<!doctype html>\n<title>{pod}</title>\n<h1>Hello from pod {pod}</h1>\n<p>Port {port}: served by the kubegate demo's apiserver double, reached through port-forward and kubegate.</p>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
