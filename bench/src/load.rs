//! The load driver: each phase is bounded in time or count, counts its
//! errors, and reports its figures. HTTP over keep-alive connections with
//! hyper; exec and port-forward over WebSocket channel frames.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What a phase measured: named figures and an error count.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Figures by name.
    pub values: BTreeMap<String, f64>,
    /// Failed requests, sessions or connections.
    pub errors: u64,
}

impl Figures {
    /// A phase that could not start: one error.
    fn failed() -> Figures {
        Figures {
            errors: 1,
            ..Figures::default()
        }
    }

    fn set(&mut self, name: &str, value: f64) {
        self.values.insert(name.to_string(), value);
    }
}

/// How to reach the proxy under test.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub address: String,
    /// Headers every request carries.
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// A fresh HTTP/1.1 connection.
    pub async fn connect(&self) -> Option<http1::SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect(&self.address).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        Some(sender)
    }

    /// A fresh HTTP/2 connection (prior knowledge, no TLS).
    pub async fn connect_http2(&self) -> Option<http2::SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect(&self.address).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(sender)
    }

    /// A GET of `path` (or a whole URL) with the endpoint's headers.
    pub fn request(&self, path: &str) -> http::Request<Empty<Bytes>> {
        let mut request = http::Request::get(path).header("host", "localhost");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request.body(Empty::new()).unwrap_or_default()
    }

    async fn websocket(
        &self,
        path: &str,
        protocol: &str,
    ) -> Option<tokio_tungstenite::WebSocketStream<TcpStream>> {
        let mut request = format!("ws://{}{path}", self.address)
            .into_client_request()
            .ok()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().ok()?);
        request
            .headers_mut()
            .insert("host", "localhost".parse().ok()?);
        for (name, value) in &self.headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                value.parse().ok()?,
            );
        }
        let tcp = TcpStream::connect(&self.address).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (socket, _) = tokio_tungstenite::client_async(request, tcp).await.ok()?;
        Some(socket)
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64
}

/// The ~2 KB pod list, over keep-alive connections at `concurrency`.
pub async fn small_gets(endpoint: &Endpoint, concurrency: usize, duration: Duration) -> Figures {
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|_| {
        let (endpoint, errors) = (endpoint.clone(), errors.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let Some(mut sender) = endpoint.connect().await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return latencies;
            };
            while Instant::now() < deadline {
                let began = Instant::now();
                let ok = match sender
                    .send_request(endpoint.request("/api/v1/namespaces/default/pods"))
                    .await
                {
                    Ok(response) => {
                        response.status() == 200 && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    match endpoint.connect().await {
                        Some(fresh) => sender = fresh,
                        None => return latencies,
                    }
                    continue;
                }
                latencies.push(began.elapsed().as_micros() as u64);
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures_util::future::join_all(workers).await {
        all.extend(worker.unwrap_or_default());
    }
    all.sort_unstable();
    let mut figures = Figures {
        errors: errors.load(Ordering::Relaxed),
        ..Figures::default()
    };
    figures.set("requests", all.len() as f64);
    figures.set("req/s", all.len() as f64 / duration.as_secs_f64());
    figures.set("p50 ms", percentile(&all, 0.50) / 1000.0);
    figures.set("p99 ms", percentile(&all, 0.99) / 1000.0);
    figures
}

/// One large streamed GET.
pub async fn stream(endpoint: &Endpoint, bytes: u64) -> Figures {
    let mut figures = Figures::default();
    let began = Instant::now();
    let mut received = 0u64;
    if let Some(mut sender) = endpoint.connect().await
        && let Ok(response) = sender
            .send_request(endpoint.request(&format!("/bytes?size={bytes}")))
            .await
    {
        let mut body = response.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            received += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
    }
    if received != bytes {
        figures.errors += 1;
    }
    figures.set("bytes", received as f64);
    figures.set(
        "MiB/s",
        received as f64 / (1 << 20) as f64 / began.elapsed().as_secs_f64(),
    );
    figures
}

const EXEC: &str = "/api/v1/namespaces/default/pods/bench/exec?command=cat&stdin=true&stdout=true";

/// Exec echo: `total` bytes in `message`-sized stdin frames, all echoed.
pub async fn exec_throughput(endpoint: &Endpoint, total: u64, message: usize) -> Figures {
    let Some(socket) = endpoint.websocket(EXEC, "v5.channel.k8s.io").await else {
        return Figures::failed();
    };
    // Stdin out on 0, stdout back on 1; then v5's close of stdin.
    let farewell = Message::binary(vec![255u8, 0]);
    echo_throughput(socket, (0, 1), total, message, Some(farewell)).await
}

/// `total` bytes sent in `message`-sized frames on the first channel of
/// `channels`, while their echo is read back from the second.
async fn echo_throughput(
    socket: tokio_tungstenite::WebSocketStream<TcpStream>,
    (out, back): (u8, u8),
    total: u64,
    message: usize,
    farewell: Option<Message>,
) -> Figures {
    let mut figures = Figures::default();
    let (mut sink, mut incoming) = socket.split();
    // Text, as a terminal shows: what a recording of it holds is its size.
    let line = b"kubegate bench: 0123456789 abcdefghijklmnopqrstuvwxyz\r\n";
    let mut frame: Vec<u8> = line.iter().copied().cycle().take(message + 1).collect();
    frame[0] = out;
    let frame = Bytes::from(frame);
    let began = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < total {
            if sink.send(Message::Binary(frame.clone())).await.is_err() {
                break;
            }
            sent += (frame.len() - 1) as u64;
        }
        sink
    });
    let mut received = 0u64;
    while received < total {
        match tokio::time::timeout(Duration::from_secs(30), incoming.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) if data.first() == Some(&back) => {
                received += (data.len() - 1) as u64
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let elapsed = began.elapsed();
    if let Ok(mut sink) = writer.await {
        if let Some(farewell) = farewell {
            let _ = sink.send(farewell).await;
        }
        let _ = sink.close().await;
    }
    if received < total {
        figures.errors += 1;
    }
    figures.set(
        "MiB/s",
        received as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
    );
    figures.set("bytes", received as f64);
    figures
}

/// Exec round trips of one byte each.
pub async fn exec_round_trips(endpoint: &Endpoint, count: usize) -> Figures {
    let mut figures = Figures::default();
    let Some(mut socket) = endpoint.websocket(EXEC, "v5.channel.k8s.io").await else {
        figures.errors += 1;
        return figures;
    };
    // The empty "ready" frame first.
    let _ = socket.next().await;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let began = Instant::now();
        if socket.send(Message::binary(vec![0u8, b'x'])).await.is_err() {
            figures.errors += 1;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) if data.len() == 2 => {
                latencies.push(began.elapsed().as_micros() as u64)
            }
            _ => {
                figures.errors += 1;
                break;
            }
        }
    }
    let _ = socket.close(None).await;
    latencies.sort_unstable();
    figures.set("p50 µs", percentile(&latencies, 0.50));
    figures.set("p99 µs", percentile(&latencies, 0.99));
    figures
}

/// A WebSocket a setup phase opens, uses for one echo and closes.
pub struct Setup {
    path: &'static str,
    protocol: &'static str,
    /// Frames the server sends before the echo.
    preamble: usize,
    message: &'static [u8],
}

/// A port-forward connection: the port on both channels, then the echo.
/// Every WebSocket port-forward client opens one of these per connection.
pub const PORT_FORWARD_SETUP: Setup = Setup {
    path: PORT_FORWARD,
    protocol: "v4.channel.k8s.io",
    preamble: 2,
    message: &[0, 1, 2, 3],
};

/// An exec session: the ready frame, then one byte echoed on stdout.
pub const EXEC_SETUP: Setup = Setup {
    path: EXEC,
    protocol: "v5.channel.k8s.io",
    preamble: 1,
    message: &[0, b'x'],
};

/// WebSockets opened, used for one echo, and closed, by `concurrency`
/// clients for `duration`.
pub async fn setups(
    endpoint: &Endpoint,
    setup: &'static Setup,
    concurrency: usize,
    duration: Duration,
) -> Figures {
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|_| {
        let (endpoint, errors) = (endpoint.clone(), errors.clone());
        tokio::spawn(async move {
            let mut first_echo = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                let ok = async {
                    let mut socket = endpoint.websocket(setup.path, setup.protocol).await?;
                    for _ in 0..setup.preamble {
                        socket.next().await?.ok()?;
                    }
                    socket.send(Message::binary(setup.message)).await.ok()?;
                    let echo = socket.next().await?.ok()?;
                    let echoed = began.elapsed();
                    let _ = socket.close(None).await;
                    (echo.into_data().len() == setup.message.len()).then_some(echoed)
                };
                match tokio::time::timeout(Duration::from_secs(10), ok).await {
                    Ok(Some(echoed)) => first_echo.push(echoed.as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            first_echo
        })
    });
    let mut first_echo: Vec<u64> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flat_map(Result::unwrap_or_default)
        .collect();
    first_echo.sort_unstable();
    let mut figures = Figures {
        errors: errors.load(Ordering::Relaxed),
        ..Figures::default()
    };
    let sessions = first_echo.len() as f64;
    figures.set("sessions", sessions);
    figures.set("conn/s", sessions / duration.as_secs_f64());
    figures.set("first echo p50 µs", percentile(&first_echo, 0.50));
    figures.set("first echo p99 µs", percentile(&first_echo, 0.99));
    figures
}

const PORT_FORWARD: &str = "/api/v1/namespaces/default/pods/bench/portforward?ports=80";

/// Bulk port-forward: `total` bytes in 64 KiB data frames, all echoed.
pub async fn port_forward_throughput(endpoint: &Endpoint, total: u64) -> Figures {
    let Some(mut socket) = endpoint.websocket(PORT_FORWARD, "v4.channel.k8s.io").await else {
        return Figures::failed();
    };
    // The port on both channels first.
    for _ in 0..2 {
        let _ = socket.next().await;
    }
    echo_throughput(socket, (0, 0), total, 64 * 1024, None).await
}

/// How a phase's watches reach the proxy.
#[derive(Clone, Copy)]
pub enum Transport {
    /// A connection each, as HTTP/1.1 clients (kubectl, client-go over
    /// plain HTTP) watch.
    Http1,
    /// All on one HTTP/2 connection (prior knowledge, as a browser's or
    /// client-go's HTTP/2 over TLS would share one).
    Http2,
}

const WATCH: &str = "/api/v1/namespaces/default/pods?watch=1&resourceVersion=0";

/// Opens `count` watches of the pods in `default` and holds them while
/// `during` runs (which may change pods, so that events flow, and
/// measures); every event is read. Returns `during`'s value, the events
/// each watch received (the fewest), and the errors.
pub async fn watches<T>(
    endpoint: &Endpoint,
    over: Transport,
    count: usize,
    during: impl Future<Output = T>,
) -> (T, u64, u64) {
    let shared = match over {
        Transport::Http1 => None,
        Transport::Http2 => endpoint.connect_http2().await,
    };
    let opened = futures_util::future::join_all((0..count).map(|_| {
        let (endpoint, shared) = (endpoint.clone(), shared.clone());
        async move {
            let (response, sender) = match (over, shared) {
                (Transport::Http1, _) => {
                    let mut sender = endpoint.connect().await?;
                    let response = sender.send_request(endpoint.request(WATCH)).await.ok()?;
                    (response, Some(sender))
                }
                (Transport::Http2, Some(mut shared)) => {
                    let url = format!("http://{}{WATCH}", endpoint.address);
                    let response = shared.send_request(endpoint.request(&url)).await.ok()?;
                    (response, None)
                }
                (Transport::Http2, None) => return None,
            };
            if response.status() != 200 {
                return None;
            }
            // Each watch counts the events it reads, as a client would.
            let events = Arc::new(AtomicU64::new(0));
            let counted = events.clone();
            let reader = tokio::spawn(async move {
                let _sender = sender;
                let mut body = response.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        let lines = data.iter().filter(|&&b| b == b'\n').count();
                        counted.fetch_add(lines as u64, Ordering::Relaxed);
                    }
                }
            });
            Some((events, reader))
        }
    }))
    .await;
    let errors = opened.iter().filter(|watch| watch.is_none()).count() as u64;
    let held: Vec<_> = opened.into_iter().flatten().collect();
    // Let the proxy settle with every stream open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<u64> = held
        .iter()
        .map(|(e, _)| e.load(Ordering::Relaxed))
        .collect();
    let value = during.await;
    let fewest = held
        .iter()
        .zip(before)
        .map(|((events, _), before)| events.load(Ordering::Relaxed) - before)
        .min()
        .unwrap_or(0);
    for (_, reader) in held {
        reader.abort();
    }
    (value, fewest, errors)
}
