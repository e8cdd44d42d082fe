//! Test fixtures: an apiserver double with a fresh PKI, kubegate in process
//! in front of it, and a small HTTP client. Everything listens on 127.0.0.1
//! on ephemeral ports and stops when dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kubegate::cli::Args;
use kubegate::config::{Config, Env};
use kubegate::error::StartupError;
use kubegate::listen::Listener;
use kubegate_double::{ApiServer, KubeconfigUser, Options, Pki, User, write_kubeconfig};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A safety net for anything a test awaits; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it hangs.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

/// How kubegate authenticates to the double.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    /// A client certificate for `alice` in group `devs`.
    Certificate,
    /// The bearer token `token-1` (user `token-user`).
    Token,
    /// A token file holding `token-1`.
    TokenFile,
}

/// An apiserver double with its PKI, a kubeconfig for it, and a temp dir.
pub struct Double {
    pub server: ApiServer,
    pub pki: Pki,
    pub dir: TempDir,
    pub kubeconfig: PathBuf,
}

impl Double {
    /// Port-forward upgrades the double was asked for: each one accepted
    /// a kubelet dial in a real cluster.
    pub fn port_forward_sessions(&self) -> usize {
        self.server
            .state()
            .stats
            .port_forward_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A double with default options; kubegate uses a client certificate.
    pub async fn start() -> Double {
        Double::with(Options::default(), Identity::Certificate).await
    }

    /// A double with `options`; kubegate authenticates as `identity`.
    pub async fn with(mut options: Options, identity: Identity) -> Double {
        for (token, user) in [("token-1", "token-user"), ("token-2", "rotated-user")] {
            options.tokens.entry(token.into()).or_insert(User {
                name: user.into(),
                groups: vec!["system:authenticated".into()],
            });
        }
        let pki = Pki::new("test-ca");
        let dir = tempfile::tempdir().expect("temp dir");
        let server = ApiServer::start(&pki, options)
            .await
            .expect("double starts");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let (cert, key) = pki
            .client("alice", &["devs"])
            .write(dir.path(), "alice")
            .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "token-1\n").unwrap();
        let user = match identity {
            Identity::Certificate => KubeconfigUser::Certificate {
                cert: &cert,
                key: &key,
            },
            Identity::Token => KubeconfigUser::Token("token-1"),
            Identity::TokenFile => KubeconfigUser::TokenFile(&token_file),
        };
        write_kubeconfig(&kubeconfig, &server.url(), &ca, user).unwrap();
        Double {
            server,
            pki,
            dir,
            kubeconfig,
        }
    }

    /// A path inside the double's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The double's pod store.
    pub fn store(&self) -> &kubegate_double::store::Store {
        &self.server.state().store
    }

    /// A copy of this double's kubeconfig with the cluster's `server`
    /// replaced (when given) and `fields` (`key: value` lines) added.
    pub fn kubeconfig_edited(&self, name: &str, server: Option<&str>, fields: &[&str]) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let edited: Vec<String> = text
            .lines()
            .flat_map(|line| match line.trim_start().strip_prefix("server: ") {
                Some(own) => std::iter::once(format!("    server: {}", server.unwrap_or(own)))
                    .chain(fields.iter().map(|field| format!("    {field}")))
                    .collect(),
                None => vec![line.to_string()],
            })
            .collect();
        let path = self.path(name);
        std::fs::write(&path, edited.join("\n") + "\n").unwrap();
        path
    }

    /// Writes another kubeconfig for this double with different settings.
    pub fn kubeconfig_with(
        &self,
        name: &str,
        server: &str,
        ca: &Path,
        user: KubeconfigUser<'_>,
    ) -> PathBuf {
        let path = self.path(name);
        write_kubeconfig(&path, server, ca, user).unwrap();
        path
    }
}

/// kubegate running in this process, stopped when dropped.
pub struct Kubegate {
    pub address: SocketAddr,
    /// `--admin-address`, when asked for.
    pub admin: Option<SocketAddr>,
    pub listener_text: String,
    proxy: std::sync::Arc<kubegate::Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Kubegate {
    /// kubegate in front of `double` with extra command-line `flags`.
    pub async fn start(double: &Double, flags: &[&str]) -> Kubegate {
        Kubegate::try_start(&double.kubeconfig, flags)
            .await
            .expect("kubegate starts")
    }

    /// kubegate serving HTTPS (HTTP/2 and HTTP/1.1) with a certificate
    /// from the double's CA, its admin port open, and extra `flags`.
    pub async fn start_tls(double: &Double, flags: &[&str]) -> Kubegate {
        let (cert, key) = double
            .pki
            .server()
            .write(double.dir.path(), "serving")
            .unwrap();
        let mut all = vec![
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-private-key-file",
            key.to_str().unwrap(),
            "--admin-address=127.0.0.1:0",
        ];
        all.extend_from_slice(flags);
        Kubegate::start(double, &all).await
    }

    /// A metric's value as `/metrics` on the admin port shows it, or ``
    /// when it is not there.
    pub async fn metric(&self, name: &str) -> String {
        let admin = self
            .admin
            .expect("kubegate was started with --admin-address");
        let answer = get(&format!("http://{admin}/metrics")).await;
        let text = String::from_utf8(answer.body.to_vec()).unwrap();
        text.lines()
            .find_map(|line| Some(line.strip_prefix(name)?.strip_prefix(' ')?.to_string()))
            .unwrap_or_default()
    }

    /// kubegate with `kubeconfig` and `flags`, or its start-up error.
    pub async fn try_start(kubeconfig: &Path, flags: &[&str]) -> Result<Kubegate, StartupError> {
        let mut argv = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        argv.extend_from_slice(flags);
        Kubegate::try_start_with(&argv).await
    }

    /// kubegate with exactly `flags` (no kubeconfig unless they name one,
    /// and an empty environment), or its start-up error.
    pub async fn try_start_with(flags: &[&str]) -> Result<Kubegate, StartupError> {
        Kubegate::try_start_in(&Env::default(), flags).await
    }

    /// kubegate with exactly `flags` in the environment `env`, or its
    /// start-up error.
    pub async fn try_start_in(env: &Env, flags: &[&str]) -> Result<Kubegate, StartupError> {
        let mut argv = vec!["kubegate", "--port", "0"];
        argv.extend_from_slice(flags);
        let args = Args::try_parse_from(&argv).expect("flags parse");
        let config = Config::load(&args, env).await?;
        let listen = config.listen.clone();
        let proxy = std::sync::Arc::new(kubegate::Proxy::new(config).await?);
        let listener = Listener::bind(&listen).await?;
        let admin = proxy.start_admin().await?;
        let listener_text = listener.to_string();
        let address = match &listener {
            Listener::Tcp(tcp) => tcp.local_addr().unwrap(),
            Listener::Unix(..) => "127.0.0.1:0".parse().unwrap(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = proxy.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Kubegate {
            address,
            admin,
            listener_text,
            proxy,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Upgraded connections kubegate is relaying now.
    pub fn open_relays(&self) -> usize {
        self.proxy.open_relays()
    }

    /// HTTP/2 connections kubegate opened to the apiserver.
    pub fn upstream_connections(&self) -> usize {
        self.proxy.upstream_connections_opened()
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("kubegate shutdown", task).await.unwrap();
        }
    }
}

impl Drop for Kubegate {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A plain HTTP/1.1 client, as curl or a script would be.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and returns the response with its body unread.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Incoming> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    within("request", client().request(request))
        .await
        .expect("request sent")
}

/// A whole response: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `message` of a `metav1.Status` body, checking its shape.
    pub fn status_message(&self) -> String {
        let status = self.json();
        assert_eq!(status["kind"], "Status", "{status}");
        assert_eq!(status["apiVersion"], "v1");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["code"], self.status.as_u16());
        status["message"].as_str().unwrap().to_string()
    }
}

/// Sends a request and reads the whole response.
pub async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let response = send(method, url, headers, body).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Answer {
    call(Method::GET, url, &[], Bytes::new()).await
}

/// Reads the next newline-terminated line of a streaming body.
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn new(response: Response<Incoming>) -> Self {
        Lines {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }

    /// The next line, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let frame = within("next line", self.body.frame()).await?.ok()?;
            if let Some(data) = frame.data_ref() {
                self.buffer.extend_from_slice(data);
            }
        }
    }
}

/// A watch of the default namespace's pods from now on, through kubegate.
pub async fn watch_pods(double: &Double, kubegate: &Kubegate) -> Lines {
    let rv = double.store().resource_version();
    let url = format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}");
    let watch = send(Method::GET, &kubegate.url(&url), &[], Bytes::new()).await;
    assert_eq!(watch.status(), 200);
    Lines::new(watch)
}

/// A pod manifest with one container.
pub fn pod(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    })
}

/// Options for a double with a given stream limit.
pub fn streams(limit: u32) -> Options {
    Options {
        max_concurrent_streams: limit,
        ..Options::default()
    }
}

/// Waits until `condition` holds, checking every few milliseconds; fails
/// the test after [`PATIENCE`]. For counters that settle after a close.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    within(what, async {
        while !condition() {
            tick.tick().await;
        }
    })
    .await;
}

/// A TCP echo server on 127.0.0.1, for port-forward; stops when dropped.
pub struct EchoServer {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        EchoServer { port, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A static web site on 127.0.0.1 (another origin than kubegate's), serving
/// the files of `dir`; stops when dropped.
pub struct Site {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    pub async fn serve(dir: &Path) -> Site {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = dir.to_path_buf();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let dir = dir.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let file = dir.join(request.uri().path().trim_start_matches('/'));
                    async move {
                        let (status, body) = match std::fs::read(&file) {
                            Ok(body) => (StatusCode::OK, body),
                            Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
                        };
                        let kind = match file.extension().and_then(|e| e.to_str()) {
                            Some("js" | "mjs") => "text/javascript",
                            Some("css") => "text/css",
                            _ => "text/html",
                        };
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)));
                        Ok::<_, std::convert::Infallible>(response.unwrap())
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Site { port, task }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Downloads `url` to the end, counting the bytes, never holding them.
pub async fn download_length(url: &str) -> u64 {
    let mut body = send(Method::GET, url, &[], Bytes::new()).await.into_body();
    let mut received = 0u64;
    while let Some(frame) = within("download", body.frame()).await {
        received += frame
            .expect("the body streams")
            .data_ref()
            .map_or(0, |d| d.len() as u64);
    }
    received
}

/// Uploads `mib` mebibytes to `url` in 1 MiB frames (never all in memory)
/// and returns the JSON answer (the double's `/echo` counts them).
pub async fn upload_mib(url: &str, mib: usize) -> Value {
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let frames = futures_util::stream::iter(
        (0..mib).map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let request = Request::post(url)
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = within("upload", client.request(request))
        .await
        .expect("upload sent");
    let body = within("answer", response.into_body().collect())
        .await
        .expect("answer")
        .to_bytes();
    serde_json::from_slice(&body).expect("a JSON answer")
}

/// A forward proxy from Debian's packages, on a free loopback port, with
/// its own log; killed when dropped.
pub struct ForwardProxy {
    pub port: u16,
    dir: TempDir,
    log: &'static str,
    _child: tokio::process::Child,
}

/// The forward proxies the tests run.
#[derive(Clone, Copy, Debug)]
pub enum ProxyKind {
    /// tinyproxy: HTTP `CONNECT`; with basic auth when `credentials`.
    Tinyproxy {
        credentials: Option<(&'static str, &'static str)>,
    },
    /// squid, resolving `apiserver.kubegate.test` to 127.0.0.1 from its
    /// own hosts file (the environment's proxy is never used for loopback).
    Squid,
    /// Dante's SOCKS5 server.
    Dante,
}

/// The name squid resolves to the loopback double.
pub const PROXIED_NAME: &str = "apiserver.kubegate.test";

impl ForwardProxy {
    pub async fn start(kind: ProxyKind) -> ForwardProxy {
        let dir = tempfile::tempdir().unwrap();
        // The servers drop root privileges; let them write their logs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let d = dir.path().display();
        let (program, install, config, args, log): (_, _, String, Vec<String>, _) = match kind {
            ProxyKind::Tinyproxy { credentials } => (
                "tinyproxy",
                "apt-get install tinyproxy",
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 200\nAllow 127.0.0.1\nLogFile \"{d}/proxy.log\"\nLogLevel Connect\n{}",
                    credentials
                        .map(|(user, password)| format!("BasicAuth {user} {password}\n"))
                        .unwrap_or_default()
                ),
                vec!["-d".into(), "-c".into(), format!("{d}/proxy.conf")],
                "proxy.log",
            ),
            ProxyKind::Squid => {
                std::fs::write(
                    dir.path().join("hosts"),
                    format!("127.0.0.1 {PROXIED_NAME}\n"),
                )
                .unwrap();
                (
                    "squid",
                    "apt-get install squid",
                    format!(
                        "http_port 127.0.0.1:{port}\nhosts_file {d}/hosts\nhttp_access allow all\ncache deny all\naccess_log stdio:{d}/access.log\ncache_log {d}/cache.log\npid_filename {d}/squid.pid\ncoredump_dir {d}\nshutdown_lifetime 0 seconds\n"
                    ),
                    vec!["-N".into(), "-f".into(), format!("{d}/proxy.conf")],
                    "access.log",
                )
            }
            ProxyKind::Dante => (
                "danted",
                "apt-get install dante-server",
                format!(
                    "logoutput: {d}/proxy.log\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\nsocksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect }}\nsocks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect }}\n"
                ),
                vec![
                    "-f".into(),
                    format!("{d}/proxy.conf"),
                    "-p".into(),
                    format!("{d}/proxy.pid"),
                ],
                "proxy.log",
            ),
        };
        ForwardProxy::spawn(dir, port, program, install, &config, &args, log).await
    }

    /// stunnel in front of the HTTP proxy on `to`: an `https://` proxy,
    /// with `certificate` (from the double's PKI, so its CA verifies it).
    pub async fn tls_front(to: u16, certificate: &kubegate_double::Issued) -> ForwardProxy {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate.write(dir.path(), "front").unwrap();
        let port = free_port();
        let config = format!(
            "foreground = yes\npid =\noutput = {}/stunnel.log\n[proxy]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to}\ncert = {}\nkey = {}\n",
            dir.path().display(),
            cert.display(),
            key.display()
        );
        let args = [dir.path().join("proxy.conf").display().to_string()];
        let install = "apt-get install stunnel4";
        ForwardProxy::spawn(
            dir,
            port,
            "stunnel4",
            install,
            &config,
            &args,
            "stunnel.log",
        )
        .await
    }

    async fn spawn(
        dir: TempDir,
        port: u16,
        program: &str,
        install: &str,
        config: &str,
        args: &[String],
        log: &'static str,
    ) -> ForwardProxy {
        std::fs::write(dir.path().join("proxy.conf"), config).unwrap();
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} does not run ({e}); {install} (scripts/test does)")
            });
        // Ready when its port answers.
        eventually(program, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        ForwardProxy {
            port,
            dir,
            log,
            _child: child,
        }
    }

    /// What the proxy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
    }
}

/// A port nothing listens on now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How deploy/Dockerfile and scripts/test build the binary that ships.
pub const PRODUCTION_BUILD: &str = "scripts/build-production";

/// The binary that ships, built by [`PRODUCTION_BUILD`].
pub fn production_binary() -> std::path::PathBuf {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/kubegate");
    assert!(
        binary.exists(),
        "{} is missing; run {PRODUCTION_BUILD} (scripts/test does)",
        binary.display()
    );
    binary
}

/// A command, failing the test with `install` if the program is missing:
/// a missing client is a failure that says how to install it, never a
/// skip.
pub fn program(name: &str, install: &str) -> tokio::process::Command {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed; {install} (scripts/test installs it)"
    );
    let mut command = tokio::process::Command::new(name);
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}
