//! `kubegate-bench`: the same load through no proxy, `kubectl proxy`, the
//! floor proxy and kubegate, to one fast upstream (the apiserver double in fast mode, with
//! mutual TLS and HTTP/2), in rotated order over several rounds. Prints a
//! table of medians and writes `BENCHMARKS.md` and `bench/results.json`.
//!
//! ```sh
//! scripts/build-production
//! cargo build --release -p kubegate-bench --bins   # with the floor proxy
//! cargo run --release -p kubegate-bench
//! ```

mod floor;
mod load;
mod profile;
mod proxies;
mod soak;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use kubegate_double::{ApiServer, KubeconfigUser, Options, Pki, User, write_kubeconfig};
use load::{Endpoint, Figures, Transport};
use proxies::{Cpu, Kind, PeakRss, Proxy, rss_mib};
use serde_json::json;

#[derive(Parser)]
#[command(about = "kubegate side by side with kubectl proxy and no proxy")]
struct Args {
    /// Rounds; each runs every proxy once, in rotated order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A short run that checks the harness works (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// The kubegate binary (default: the production build's,
    /// target/x86_64-unknown-linux-gnu/release/kubegate).
    #[arg(long)]
    kubegate: Option<PathBuf>,
    /// Where BENCHMARKS.md and results.json go (default: the repository).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instead of the comparison: kubegate alone under mixed load for this
    /// many minutes; its section of BENCHMARKS.md is replaced.
    #[arg(long, value_name = "MINUTES")]
    soak_minutes: Option<u64>,
    /// Instead of the comparison: kubegate alone, one round, with `perf`
    /// sampling it during small GETs at c=64, drawn as a flame graph here
    /// (give a `--kubegate` built with symbols: see bench/src/profile.rs).
    #[arg(long, value_name = "SVG")]
    flamegraph: Option<PathBuf>,
    /// Measure only these columns (comma-separated names, e.g.
    /// "kubegate,kubegate + audit"): a quick comparison, not a report.
    #[arg(long, value_name = "COLUMNS")]
    only: Option<String>,
    /// Instead of the comparison: as --flamegraph, with `strace -c -f`
    /// counting the system calls of the same column and phase, written
    /// to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "flamegraph")]
    strace: Option<PathBuf>,
    /// Which column `--flamegraph` samples (e.g. "kubegate + audit").
    #[arg(long, value_name = "COLUMN", default_value = "kubegate")]
    flamegraph_of: String,
    /// Which phase `--flamegraph` samples (e.g. "stream").
    #[arg(long, value_name = "PHASE", default_value = "small GET c=64")]
    flamegraph_phase: String,
}

/// Phase sizes: the full run, or the smoke test's.
struct Sizes {
    get: Duration,
    stream: u64,
    exec: u64,
    round_trips: usize,
    port_forward: Duration,
    watches: usize,
    /// How long events flow to the watches.
    flowing: Duration,
}

type Results = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// A 20-rule policy whose only match for the benchmark's requests is the
/// last rule: the cost of walking every rule.
fn twenty_rules() -> String {
    let mut text = String::from("rules:\n");
    for n in 0..19 {
        text.push_str(&format!(
            "  - action: Deny\n    verbs: [get, list, watch]\n    namespaces: [team-{n}]\n    resources: [{{group: \"\", resources: [\"pods\", \"pods/log\", \"configmaps\"]}}]\n"
        ));
    }
    text.push_str("  - action: Allow\n");
    text
}

/// The build that ships (deploy/Dockerfile), which is the one measured.
const PRODUCTION_BUILD: &str = "scripts/build-production";

/// The same binary linked dynamically, for the static build's cost.
const DYNAMIC_BUILD: &str = "cargo build --release --locked --no-default-features --bin kubegate";

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sizes = if args.smoke {
        Sizes {
            get: Duration::from_millis(500),
            stream: 8 << 20,
            exec: 8 << 20,
            round_trips: 100,
            port_forward: Duration::from_millis(500),
            watches: 50,
            flowing: Duration::from_secs(2),
        }
    } else {
        Sizes {
            get: Duration::from_secs(5),
            stream: 100 << 20,
            exec: 256 << 20,
            round_trips: 2000,
            port_forward: Duration::from_secs(5),
            watches: 1000,
            flowing: Duration::from_secs(5),
        }
    };
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let kubegate = proxies::kubegate_binary(args.kubegate.clone());
    assert!(
        kubegate.exists(),
        "{} is missing: run `{PRODUCTION_BUILD}` first",
        kubegate.display()
    );
    let version = std::process::Command::new(&kubegate)
        .arg("--version")
        .output()
        .expect("kubegate --version runs");
    assert!(
        !String::from_utf8_lossy(&version.stdout).contains("demo"),
        "{} is the demo build, which carries the apiserver double; measure the production build: `{PRODUCTION_BUILD}`",
        kubegate.display()
    );

    // The upstream: the double in fast mode, TLS with client certificates
    // (h2 and http/1.1), plus a plain port for the no-proxy ceiling.
    let scratch = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new("bench-ca");
    let options = Options {
        fast_streams: true,
        ..Options::default()
    };
    let upstream = ApiServer::start(&pki, options)
        .await
        .expect("upstream starts");
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("plain port");
    let plain_address = plain.local_addr().expect("address").to_string();
    upstream.serve_plain(
        plain,
        User {
            name: "bench".into(),
            groups: vec![],
        },
    );
    seed(&upstream);
    let ca = scratch.path().join("ca.crt");
    std::fs::write(&ca, pki.ca_pem()).expect("ca");
    let (cert, key) = pki
        .client("bench", &["system:masters"])
        .write(scratch.path(), "bench")
        .expect("client cert");
    let kubeconfig = scratch.path().join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &upstream.url(),
        &ca,
        KubeconfigUser::Certificate {
            cert: &cert,
            key: &key,
        },
    )
    .expect("kubeconfig");

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    std::fs::create_dir_all(&out).expect("output directory");
    let benchmarks = out.join("BENCHMARKS.md");
    let previous = std::fs::read_to_string(&benchmarks).unwrap_or_default();
    if let Some(minutes) = args.soak_minutes {
        let webhook = scratch.path().join("webhook.kubeconfig");
        let collector = format!("{}/audit-collector", upstream.url());
        let user = KubeconfigUser::Certificate {
            cert: &cert,
            key: &key,
        };
        write_kubeconfig(&webhook, &collector, &ca, user).expect("webhook config");
        let duration = Duration::from_secs(minutes.max(1) * 60);
        let section = soak::run(
            &kubegate,
            &kubeconfig,
            &webhook,
            &upstream,
            scratch.path(),
            duration,
        )
        .await;
        println!("{section}");
        let before = previous
            .find("## Soak")
            .map_or(previous.as_str(), |at| &previous[..at]);
        std::fs::write(&benchmarks, format!("{}\n\n{section}", before.trim_end()))
            .expect("BENCHMARKS.md");
        return;
    }

    let kubectl = std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let kubectl_version = kubectl.as_ref().map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    if kubectl_version.is_none() {
        eprintln!(
            "kubectl is not on PATH: the kubectl proxy column is left out (install kubectl to compare)"
        );
    }
    let audit_log = scratch.path().join("audit.log");
    let mut kinds = vec![Kind::NoProxy];
    if kubectl_version.is_some() {
        kinds.push(Kind::Kubectl);
    }
    kinds.push(Kind::Floor(
        [
            upstream.url(),
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ]
        .to_vec(),
    ));
    kinds.push(Kind::Kubegate {
        label: "kubegate",
        binary: None,
        flags: vec![],
    });
    kinds.push(Kind::Kubegate {
        label: "kubegate + audit",
        binary: None,
        flags: vec![format!("--audit-log-path={}", audit_log.display())],
    });
    let policy_file = scratch.path().join("policy.yaml");
    std::fs::write(&policy_file, twenty_rules()).expect("policy file");
    kinds.push(Kind::Kubegate {
        label: "kubegate + policy",
        binary: None,
        flags: vec![format!("--policy-file={}", policy_file.display())],
    });
    kinds.push(Kind::Kubegate {
        label: "kubegate, port-forward relayed",
        binary: None,
        flags: vec!["--port-forward-multiplex=false".into()],
    });
    kinds.push(Kind::Kubegate {
        label: "kubegate + token",
        binary: None,
        flags: vec!["--generate-access-token".into()],
    });
    // Every exec session recorded whole: no cap, quota or floor in the
    // way, and a recording that falls behind is counted, not cut.
    let recordings = scratch.path().join("recordings");
    kinds.push(Kind::Kubegate {
        label: RECORDED,
        binary: None,
        flags: vec![
            format!("--record-sessions-dir={}", recordings.display()),
            "--record-non-interactive".into(),
            "--record-maxsize=1000000".into(),
            "--record-quota=0".into(),
            "--record-min-free=0".into(),
            "--record-failure=continue".into(),
        ],
    });
    if !args.smoke {
        // What the static build costs or saves: the same code, linked
        // against glibc dynamically.
        let dynamic = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/kubegate");
        assert!(
            dynamic.exists(),
            "{} is missing: run `{DYNAMIC_BUILD}` first (the dynamic column)",
            dynamic.display()
        );
        kinds.push(Kind::Kubegate {
            label: "kubegate (dynamic glibc)",
            binary: Some(dynamic),
            flags: vec![],
        });
    }

    if let Some(only) = &args.only {
        // Names hold commas ("kubegate, port-forward relayed"): a column is
        // named when its whole name stands between commas in the list.
        let commas = |text: &str| text.split(',').map(str::trim).collect::<Vec<_>>().join(",");
        let only = format!(",{},", commas(only));
        kinds.retain(|kind| only.contains(&format!(",{},", commas(kind.name()))));
        assert!(!kinds.is_empty(), "--only names no column");
    }
    let profile = match (&args.flamegraph, &args.strace) {
        (Some(svg), _) => Some((profile::Tool::Perf, svg.as_path())),
        (None, Some(file)) => Some((profile::Tool::Strace, file.as_path())),
        (None, None) => None,
    };
    if profile.is_some() {
        kinds.retain(|kind| kind.name() == args.flamegraph_of);
        assert!(!kinds.is_empty(), "--flamegraph-of names no column");
    }
    let rounds = if profile.is_some() { 1 } else { rounds };
    let mut results: Results = BTreeMap::new();
    for round in 0..rounds {
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        for kind in order {
            eprintln!("round {}/{rounds}: {}", round + 1, kind.name());
            let proxy = match Proxy::start(
                &kind,
                &kubeconfig,
                &kubegate,
                &plain_address,
                scratch.path(),
            )
            .await
            {
                Ok(proxy) => proxy,
                Err(error) => panic!("cannot start {}: {error}", kind.name()),
            };
            let profile = profile.map(|(tool, out)| (tool, out, args.flamegraph_phase.as_str()));
            let speaks_h2c = matches!(kind, Kind::Kubegate { .. } | Kind::Floor(_));
            // A recorder writes on after its session: its column's CPU is
            // read once the proxy has gone quiet.
            let settle = kind.name() == RECORDED;
            let figures = run_phases(&proxy, &sizes, speaks_h2c, settle, &upstream, profile).await;
            let entry = results.entry(kind.name().to_string()).or_default();
            for (name, value) in figures {
                entry.entry(name).or_default().push(value);
            }
            proxy.stop().await;
            let _ = std::fs::remove_file(&audit_log);
            if kind.name() == RECORDED {
                // Whether the recordings kept up: one that fell behind
                // stops, and would make the column look cheap.
                let (whole, stopped) = recordings_kept(&recordings);
                let entry = results.entry(RECORDED.to_string()).or_default();
                let figure = "exec sessions recorded: stopped early";
                entry.entry(figure.into()).or_default().push(stopped as f64);
                eprintln!("  recordings: {whole} whole, {stopped} stopped early");
                let _ = std::fs::remove_dir_all(&recordings);
            }
        }
    }
    if profile.is_some() {
        // A profile, not a measurement: BENCHMARKS.md stays as it is.
        return;
    }
    let report = report(
        &results,
        &kinds,
        kubectl_version.as_deref(),
        rounds,
        args.smoke,
        floor::aes_gcm_seconds_per_gib(),
    );
    println!("{report}");
    // The soak's section, from its own run, is kept.
    let report = match soak::section_of(&previous) {
        Some(section) if !args.smoke => format!("{}\n\n{section}", report.trim_end()),
        _ => report,
    };
    std::fs::write(&benchmarks, &report).expect("BENCHMARKS.md");
    let json = json!({ "date": jiff::Timestamp::now().to_string(), "machine": machine(), "rounds": rounds, "results": medians(&results), "runs": results });
    let json_path = if out.join("bench").is_dir() {
        out.join("bench/results.json")
    } else {
        out.join("results.json")
    };
    std::fs::write(
        json_path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .expect("results.json");
    let errors = total_errors(&medians(&results));
    if errors > 0.0 {
        eprintln!("some phases had errors; see the table");
        std::process::exit(1);
    }
}

/// The recordings under `dir`: how many are whole, how many stopped
/// early (a `recording stopped` marker).
fn recordings_kept(dir: &Path) -> (usize, usize) {
    let files = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|day| {
            std::fs::read_dir(day.path())
                .into_iter()
                .flatten()
                .flatten()
        });
    let (mut whole, mut stopped) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        if text.contains("kubegate: recording stopped") {
            stopped += 1;
        } else {
            whole += 1;
        }
    }
    (whole, stopped)
}

/// Pods for a ~2 KB list and the pod that exec and port-forward use.
fn seed(upstream: &ApiServer) {
    let store = &upstream.state().store;
    for name in ["bench", "web-1", "web-2", "web-3", "db-0"] {
        let pod = json!({
            "metadata": { "name": name, "labels": { "app": "bench", "tier": name } },
            "spec": { "containers": [{ "name": "main", "image": "registry.example/bench:1.0", "ports": [{ "containerPort": 80 }] }] },
        });
        let _ = store.create("default", pod);
    }
}

/// Every phase against one proxy: figures named "phase: metric".
async fn run_phases(
    proxy: &Proxy,
    sizes: &Sizes,
    speaks_h2c: bool,
    settle: bool,
    upstream: &ApiServer,
    profile: Option<(profile::Tool, &Path, &str)>,
) -> BTreeMap<String, f64> {
    let endpoint = Endpoint {
        address: proxy.base.trim_start_matches("http://").to_string(),
        headers: proxy.headers.clone(),
    };
    let pid = proxy.pid();
    let probe = Probe {
        pid,
        settle,
        profile,
    };
    let mut out = BTreeMap::new();
    // Warm up (connections to the upstream, TLS sessions), then idle RSS.
    load::small_gets(&endpoint, 4, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = rss_mib(pid);
    out.insert("RSS idle: MiB".into(), idle);
    let (anonymous, file) = proxies::rss_parts_mib(pid);
    out.insert("RSS idle: anonymous MiB".into(), anonymous);
    out.insert("RSS idle: file-backed MiB".into(), file);

    // A watch's cost is what RSS grows by when it opens, from idle: so
    // these come before the load phases, whose freed memory the allocator
    // keeps and would hand to the watches. The HTTP/2 watches go first:
    // fewer bytes, so what they leave behind cannot hide the others'.
    // kubectl proxy serves no HTTP/2 without TLS, so only kubegate and the
    // floor are measured with watches sharing one HTTP/2 connection.
    let count = sizes.watches;
    let mut transports = vec![("idle", Transport::Http1)];
    if speaks_h2c {
        transports.insert(0, ("idle, one HTTP/2 connection", Transport::Http2));
    }
    for (how, transport) in transports {
        let rss = async { rss_mib(pid) };
        let (rss, _, errors) = load::watches(&endpoint, transport, count, rss).await;
        let phase = format!("{count} watches {how}");
        out.insert(format!("{phase}: RSS MiB"), rss);
        out.insert(
            format!("{phase}: RSS KiB/watch"),
            (rss - idle) * 1024.0 / count as f64,
        );
        out.insert(format!("{phase}: errors"), errors as f64);
    }

    for concurrency in [1usize, 16, 64] {
        let phase = format!("small GET c={concurrency}");
        let work = load::small_gets(&endpoint, concurrency, sizes.get);
        let measured = probe.measure(&phase, work).await;
        measured.record_per(&mut out, "requests", "CPU µs/request", 1e6);
    }
    let work = load::stream(&endpoint, sizes.stream);
    let measured = probe.measure("stream", work).await;
    measured.record_per(&mut out, "bytes", "CPU s/GiB", GIB);
    let work = load::exec_throughput(&endpoint, sizes.exec, 64 * 1024);
    let measured = probe.measure("exec echo", work).await;
    measured.record_per(&mut out, "bytes", "CPU s/GiB", GIB);
    let work = load::exec_round_trips(&endpoint, sizes.round_trips);
    probe.measure("exec 1-byte", work).await.record(&mut out);
    let work = load::setups(&endpoint, &load::EXEC_SETUP, 8, sizes.port_forward);
    let measured = probe.measure("exec open+echo+close c=8", work).await;
    measured.record_per(&mut out, "sessions", "CPU ms/conn", 1e3);
    let handshakes = &upstream.state().stats.connections;
    for concurrency in [8usize, 64] {
        let phase = format!("port-forward c={concurrency}");
        let handshakes_before = handshakes.load(Ordering::Relaxed);
        let setup = &load::PORT_FORWARD_SETUP;
        let work = load::setups(&endpoint, setup, concurrency, sizes.port_forward);
        let measured = probe.measure(&phase, work).await;
        let opened = handshakes.load(Ordering::Relaxed) - handshakes_before;
        let sessions = measured.count("sessions");
        measured.record_per(&mut out, "sessions", "CPU ms/conn", 1e3);
        out.insert(
            format!("{phase}: upstream TLS handshakes per 1,000"),
            opened as f64 * 1000.0 / sessions,
        );
    }
    let work = load::port_forward_throughput(&endpoint, sizes.exec);
    let measured = probe.measure("port-forward bulk", work).await;
    measured.record_per(&mut out, "bytes", "CPU s/GiB", GIB);

    // Every watch receives an event a second: one pod changes each second.
    let phase = format!("{count} watches, an event a second each");
    let seconds = sizes.flowing.as_secs().max(1);
    let changes = probe.measure(&phase, async {
        for second in 0..seconds {
            let patch = json!({ "metadata": { "labels": { "second": second.to_string() } } });
            let _ = upstream.state().store.patch("default", "web-1", &patch);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Figures {
            values: BTreeMap::from([("events".to_string(), (count as u64 * seconds) as f64)]),
            errors: 0,
        }
    });
    let (mut measured, fewest, errors) =
        load::watches(&endpoint, Transport::Http1, count, changes).await;
    // A watch that missed an event is an error.
    measured.figures.errors = errors + u64::from(fewest + 1 < seconds);
    measured.record_per(&mut out, "events", "CPU µs/event", 1e6);
    out.insert(format!("{phase}: RSS MiB"), rss_mib(pid));
    out
}

const GIB: f64 = (1u64 << 30) as f64;

/// Measures phases of one proxy, and profiles the one `--flamegraph-phase`
/// names.
struct Probe<'a> {
    pid: Option<u32>,
    /// Read the CPU once the proxy is quiet, not when the load ends.
    settle: bool,
    /// Where the flame graph goes, and of which phase.
    profile: Option<(profile::Tool, &'a Path, &'a str)>,
}

/// What a phase measured of the proxy, and of the bench process (the load
/// driver and the upstream).
struct Measured {
    phase: String,
    figures: Figures,
    /// The proxy's CPU seconds.
    cpu: f64,
    /// The proxy's peak RSS.
    peak: f64,
    /// The bench process's CPU as a share of the machine, in percent.
    driver_share: f64,
}

impl Probe<'_> {
    /// Runs a phase, measuring the proxy's CPU seconds and peak RSS, and
    /// the share of the machine the bench process used.
    async fn measure(&self, phase: &str, work: impl Future<Output = Figures>) -> Measured {
        let recording = match (self.profile, self.pid) {
            (Some((tool, out, wanted)), Some(pid)) if wanted == phase => {
                Some(profile::start(tool, pid, out, &format!("kubegate, {phase}")).await)
            }
            _ => None,
        };
        let own = Some(std::process::id());
        let (cpu_before, own_before) = (Cpu::of(self.pid), Cpu::of(own));
        let began = std::time::Instant::now();
        let peak = PeakRss::start(self.pid);
        let figures = work.await;
        let wall = began.elapsed().as_secs_f64().max(1e-3);
        eprintln!("  {phase}: {wall:.1} s");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let own_after = Cpu::of(own);
        let cpu_after = if self.settle {
            quiet(self.pid).await
        } else {
            Cpu::of(self.pid)
        };
        let measured = Measured {
            phase: phase.to_string(),
            figures,
            cpu: cpu_after.seconds_since(&cpu_before),
            peak: peak.stop(),
            driver_share: own_after.seconds_since(&own_before) * 100.0 / (wall * cores),
        };
        if let Some(recording) = recording {
            recording.finish().await;
        }
        measured
    }
}

/// The proxy's CPU once it has used under a millisecond in 50 ms (at
/// most 5 s on).
async fn quiet(pid: Option<u32>) -> Cpu {
    let mut last = Cpu::of(pid);
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = Cpu::of(pid);
        if now.seconds_since(&last) < 1e-3 {
            return now;
        }
        last = now;
    }
    last
}

impl Measured {
    /// A count the phase reported (at least 1, to divide by).
    fn count(&self, name: &str) -> f64 {
        self.figures
            .values
            .get(name)
            .copied()
            .unwrap_or(0.0)
            .max(1.0)
    }

    fn record(&self, out: &mut BTreeMap<String, f64>) {
        let phase = &self.phase;
        for (name, value) in &self.figures.values {
            if !["requests", "bytes", "sessions", "events"].contains(&name.as_str()) {
                out.insert(format!("{phase}: {name}"), *value);
            }
        }
        out.insert(format!("{phase}: errors"), self.figures.errors as f64);
        out.insert(format!("{phase}: CPU s"), self.cpu);
        out.insert(format!("{phase}: peak RSS MiB"), self.peak);
        out.insert(
            format!("{phase}: driver+upstream % of machine"),
            self.driver_share,
        );
    }

    /// Records the phase and its CPU per unit of `count`: `per` is what
    /// one unit is in the count's terms (1e6 for µs per request, a GiB's
    /// bytes for seconds per GiB).
    fn record_per(&self, out: &mut BTreeMap<String, f64>, count: &str, figure: &str, per: f64) {
        self.record(out);
        out.insert(
            format!("{}: {figure}", self.phase),
            self.cpu * per / self.count(count),
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn medians(results: &Results) -> BTreeMap<String, BTreeMap<String, f64>> {
    results
        .iter()
        .map(|(kind, figures)| {
            (
                kind.clone(),
                figures
                    .iter()
                    .map(|(name, runs)| (name.clone(), median(runs)))
                    .collect(),
            )
        })
        .collect()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({ "cpu": cpu, "cores": cores, "memory": memory, "kernel": kernel })
}

/// A target for kubegate's figure as a ratio to another column's.
struct Relative {
    /// The column measured ("kubegate" but for what a feature costs).
    ours: &'static str,
    /// The figure, or its ending (figures named after a phase's size,
    /// "1000 watches idle", match by their ending).
    figure: &'static str,
    /// The column it is compared with.
    against: &'static str,
    /// Whether a higher figure is better (throughput).
    higher: bool,
    needed: f64,
}

const fn relative(
    figure: &'static str,
    against: &'static str,
    higher: bool,
    needed: f64,
) -> Relative {
    Relative {
        ours: "kubegate",
        figure,
        against,
        higher,
        needed,
    }
}

/// What a feature's column may cost against plain kubegate.
const fn feature_cost(ours: &'static str, figure: &'static str, needed: f64) -> Relative {
    Relative {
        ours,
        figure,
        against: "kubegate",
        higher: false,
        needed,
    }
}

const KUBECTL: &str = "kubectl proxy";
const FLOOR: &str = "floor proxy";
const RELAYED: &str = "kubegate, port-forward relayed";
const RECORDED: &str = "kubegate, exec recorded";

const RELATIVE_TARGETS: &[Relative] = &[
    relative("small GET c=64: CPU µs/request", KUBECTL, false, 0.15),
    relative("small GET c=1: CPU µs/request", KUBECTL, false, 0.2),
    relative("small GET c=64: p99 ms", KUBECTL, false, 0.25),
    relative("stream: CPU s/GiB", KUBECTL, false, 0.3),
    relative("exec echo: CPU s/GiB", KUBECTL, false, 0.35),
    relative("exec open+echo+close c=8: CPU ms/conn", KUBECTL, false, 0.2),
    relative("port-forward c=8: conn/s", KUBECTL, true, 5.0),
    relative("port-forward c=8: CPU ms/conn", KUBECTL, false, 0.1),
    relative("port-forward c=64: conn/s", KUBECTL, true, 5.0),
    relative("port-forward c=64: CPU ms/conn", KUBECTL, false, 0.1),
    relative(
        "watches, an event a second each: CPU µs/event",
        KUBECTL,
        false,
        0.5,
    ),
    relative("exec 1-byte: p50 µs", KUBECTL, false, 1.0),
    relative("exec 1-byte: p99 µs", KUBECTL, false, 1.0),
    relative("port-forward bulk: MiB/s", KUBECTL, true, 1.0),
    relative("port-forward bulk: CPU s/GiB", KUBECTL, false, 1.0),
    relative("port-forward bulk: MiB/s", RELAYED, true, 1.0),
    relative("port-forward bulk: CPU s/GiB", RELAYED, false, 1.0),
    relative("small GET c=1: CPU µs/request", FLOOR, false, 1.3),
    relative("small GET c=16: CPU µs/request", FLOOR, false, 1.3),
    relative("small GET c=64: CPU µs/request", FLOOR, false, 1.3),
    relative("stream: CPU s/GiB", FLOOR, false, 1.2),
    relative("watches idle: RSS KiB/watch", FLOOR, false, 1.5),
    feature_cost(RECORDED, "exec echo: CPU s/GiB", 1.2),
];

/// A target in kubegate's own terms, not against kubectl proxy.
struct OwnTarget {
    what: &'static str,
    /// The figure, or its ending (figures named after a phase's size,
    /// "1000 watches idle", match by their ending).
    figure: &'static str,
    /// The column whose figure is compared.
    column: &'static str,
    /// A column whose figure is subtracted first.
    minus: Option<&'static str>,
    most: f64,
    unit: &'static str,
}

const OWN_TARGETS: &[OwnTarget] = &[
    OwnTarget {
        what: "`Metadata` audit to a file: extra CPU per request (small GET c=64)",
        figure: "small GET c=64: CPU µs/request",
        column: "kubegate + audit",
        minus: Some("kubegate"),
        most: 3.0,
        unit: "µs",
    },
    OwnTarget {
        what: "idle watches: RSS per watch (a connection each)",
        figure: "watches idle: RSS KiB/watch",
        column: "kubegate",
        minus: None,
        most: 8.0,
        unit: "KiB",
    },
    OwnTarget {
        what: "idle watches: RSS per watch (one HTTP/2 connection)",
        figure: "watches idle, one HTTP/2 connection: RSS KiB/watch",
        column: "kubegate",
        minus: None,
        most: 8.0,
        unit: "KiB",
    },
    OwnTarget {
        what: "idle RSS",
        figure: "RSS idle: MiB",
        column: "kubegate",
        minus: None,
        most: 6.0,
        unit: "MiB",
    },
];

fn report(
    results: &Results,
    kinds: &[Kind],
    kubectl: Option<&str>,
    rounds: usize,
    smoke: bool,
    floor: f64,
) -> String {
    let medians = medians(results);
    let names: Vec<&str> = kinds.iter().map(Kind::name).collect();
    let machine = machine();
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    if smoke {
        out.push_str(
            "**Smoke run** (short phases, one round): checks the harness, not the figures.\n\n",
        );
    }
    out.push_str(&format!(
        "kubegate side by side with `kubectl proxy`, the floor proxy and no proxy, one fast upstream (the apiserver double in fast mode: mutual TLS, HTTP/2, exec and port-forward echo in process), {rounds} round(s) in rotated order, medians.\n\n- date: {}\n- machine: {} × {}, {} memory, Linux {}\n- kubectl: {}\n- reproduce: `{PRODUCTION_BUILD} && {DYNAMIC_BUILD} && cargo build --release -p kubegate-bench --bins && cargo run --release -p kubegate-bench` (about half an hour; `--rounds N`)\n- `kubegate` is the production build, statically linked; `kubegate (dynamic glibc)` is the same code linked dynamically, for what the static build costs or saves\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        machine["cores"], machine["cpu"].as_str().unwrap_or_default(), machine["memory"].as_str().unwrap_or_default(), machine["kernel"].as_str().unwrap_or_default(),
        kubectl.unwrap_or("not installed: no kubectl proxy column"),
    ));
    out.push_str("Where kubegate's CPU goes under small GETs at c=64: [bench/flamegraph-small-get.svg](bench/flamegraph-small-get.svg) (`perf` sampling, drawn by inferno; `--flamegraph`, see bench/src/profile.rs).\n\n");
    out.push_str(&format!(
        "| figure | {} | kubegate / kubectl proxy |\n|---|{}---|\n",
        names.join(" | "),
        "---|".repeat(names.len())
    ));
    let figures: Vec<&String> = medians
        .values()
        .next()
        .map(|f| f.keys().collect())
        .unwrap_or_default();
    for figure in figures {
        let cells: Vec<String> = names
            .iter()
            .map(|name| {
                results
                    .get(*name)
                    .and_then(|f| f.get(figure))
                    .map_or("–".into(), |runs| with_spread(runs))
            })
            .collect();
        let ratio = ratio(&medians, figure).map_or("–".into(), |r| format!("{r:.2}×"));
        out.push_str(&format!("| {figure} | {} | {ratio} |\n", cells.join(" | ")));
    }
    out.push_str("\n## Targets\n\n| target | needed | measured | |\n|---|---|---|---|\n");
    for target in RELATIVE_TARGETS {
        let Relative {
            ours,
            figure,
            against,
            higher,
            needed,
        } = target;
        let measured = ratio_to(&medians, ours, figure, against);
        let met = measured.map(|r| if *higher { r >= *needed } else { r <= *needed });
        let sign = if *higher { "≥" } else { "≤" };
        let mut shown = measured.map_or("–".into(), |r| format!("{r:.2}×"));
        if *figure == "stream: CPU s/GiB" && *against == KUBECTL {
            shown.push_str(&format!(
                " (floor on this machine, one AES-128-GCM decryption and two copies, no kernel: {floor:.2} s/GiB, {:.2}× kubectl proxy)",
                value_of(&medians, KUBECTL, figure).map_or(0.0, |theirs| floor / theirs)
            ));
        }
        out.push_str(&format!(
            "| {}{figure} vs {against} | {sign} {needed:.2}× | {shown} | {} |\n",
            if *ours == "kubegate" {
                String::new()
            } else {
                format!("{ours}: ")
            },
            met.map_or("not measured", |m| if m { "met" } else { "missed" })
        ));
    }
    let behind = rows_behind_kubectl(&medians);
    out.push_str(&format!(
        "| rows behind kubectl proxy (cost > 1.0×, throughput < 1.0×) | 0 | {} | {} |\n",
        if behind.is_empty() {
            "none".to_string()
        } else {
            behind.join("; ")
        },
        if behind.is_empty() { "met" } else { "missed" }
    ));
    for target in OWN_TARGETS {
        let value = |column: &str| {
            medians.get(column).and_then(|f| {
                f.iter()
                    .find(|(name, _)| name.ends_with(target.figure))
                    .map(|(_, v)| *v)
            })
        };
        let measured = match target.minus {
            Some(base) => value(target.column).zip(value(base)).map(|(a, b)| a - b),
            None => value(target.column),
        };
        let (most, unit) = (target.most, target.unit);
        out.push_str(&format!(
            "| {} | ≤ {most} {unit} | {} | {} |\n",
            target.what,
            measured.map_or("–".into(), |v| format!("{v:.1} {unit}")),
            measured.map_or("not measured", |v| if v <= most { "met" } else { "missed" })
        ));
    }
    let errors = total_errors(&medians);
    out.push_str(&format!(
        "| errors, every phase | 0 | {errors} | {} |\n",
        if errors == 0.0 { "met" } else { "missed" }
    ));
    out.push_str("\nEach cell is the median over the rounds and, after ±, half the range of the rounds as a share of the median: what one round to the next can move by. CPU is the proxy's run time in nanoseconds, summed over its threads (`/proc/PID/task/*/schedstat`); when a thread exited during a phase, the process's user + system ticks (`/proc/PID/stat`, 10 ms each, which keep exited threads' time) are used instead. RSS is `VmRSS` from `/proc/PID/status` (peak sampled every 20 ms). The floor proxy (bench/src/bin/floor-proxy.rs) is the least proxy kubegate's stack can build: hyper, hyper-util and rustls, the same upstream TLS and HTTP/2, no filters, audit, policy or metrics; kubegate's distance to it is the cost of what kubegate adds. On 2 cores the load driver and the upstream share the machine with the proxy, so throughput alone mostly measures who got the CPU: compare CPU per unit of work. `driver+upstream % of machine` is the bench process's CPU (the load driver and the upstream run in it) over the phase's wall time and every core: near 100% the proxy is no longer the bottleneck, the machine is.\n");
    out
}

/// Errors summed over every phase and proxy.
fn total_errors(medians: &BTreeMap<String, BTreeMap<String, f64>>) -> f64 {
    medians
        .values()
        .flat_map(|figures| {
            figures
                .iter()
                .filter(|(name, _)| name.ends_with("errors"))
                .map(|(_, v)| *v)
        })
        .sum()
}

type Medians = BTreeMap<String, BTreeMap<String, f64>>;

/// A column's median for a figure, or for the figure ending so.
fn value_of(medians: &Medians, column: &str, figure: &str) -> Option<f64> {
    let figures = medians.get(column)?;
    figures.get(figure).copied().or_else(|| {
        figures
            .iter()
            .find(|(name, _)| name.ends_with(figure))
            .map(|(_, v)| *v)
    })
}

/// kubegate's figure over another column's.
fn ratio_to(medians: &Medians, ours: &str, figure: &str, against: &str) -> Option<f64> {
    let ours = value_of(medians, ours, figure)?;
    let theirs = value_of(medians, against, figure)?;
    (theirs != 0.0).then(|| ours / theirs)
}

fn ratio(medians: &Medians, figure: &str) -> Option<f64> {
    ratio_to(medians, "kubegate", figure, KUBECTL)
}

/// The rows where kubegate is behind kubectl proxy, with the ratio: a
/// cost (CPU, memory, latency) above 1.0×, a throughput (per second)
/// below. Error counts, the driver's share and handshake counts are not
/// costs of the proxy's own.
fn rows_behind_kubectl(medians: &Medians) -> Vec<String> {
    let Some(figures) = medians.get("kubegate") else {
        return Vec::new();
    };
    figures
        .keys()
        .filter(|name| {
            !["errors", "% of machine", "per 1,000"]
                .iter()
                .any(|n| name.ends_with(n))
        })
        .filter_map(|name| {
            let r = ratio(medians, name)?;
            let throughput = name.ends_with("/s");
            let behind = if throughput { r < 1.0 } else { r > 1.0 };
            behind.then(|| format!("{name} {r:.2}×"))
        })
        .collect()
}

/// The median of the rounds, and when there were several, half their
/// range as a share of it: "97.3 ±4%".
fn with_spread(runs: &[f64]) -> String {
    let middle = median(runs);
    let (low, high) = runs
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    if runs.len() < 2 || middle == 0.0 {
        return format_value(middle);
    }
    let spread = (high - low) / 2.0 / middle.abs() * 100.0;
    format!("{} ±{spread:.0}%", format_value(middle))
}

fn format_value(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
