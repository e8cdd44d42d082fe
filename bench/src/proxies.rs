//! The things measured: no proxy (straight to the upstream's plain port),
//! `kubectl proxy`, the floor proxy (src/bin/floor-proxy.rs), and kubegate
//! (release build) with and without its features. Each runs as its own process, started fresh for every round,
//! and is read from `/proc` for CPU and memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which proxy, and how it is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Straight to the upstream's plain-HTTP port: the ceiling.
    NoProxy,
    /// `kubectl proxy --reject-paths='^-$'`.
    Kubectl,
    /// The least proxy this stack can build (src/bin/floor-proxy.rs),
    /// with its arguments: the upstream's URL, CA, certificate and key.
    Floor(Vec<String>),
    /// kubegate with extra flags.
    Kubegate {
        /// The label in the table.
        label: &'static str,
        /// Another build than the one measured (`--kubegate`).
        binary: Option<std::path::PathBuf>,
        /// Flags beyond the kubeconfig and port.
        flags: Vec<String>,
    },
}

impl Kind {
    /// The column name.
    pub fn name(&self) -> &str {
        match self {
            Kind::NoProxy => "no proxy",
            Kind::Kubectl => "kubectl proxy",
            Kind::Floor(_) => "floor proxy",
            Kind::Kubegate { label, .. } => label,
        }
    }
}

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Headers every request must carry (the access token).
    pub headers: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proxy {
    /// Starts `kind` in front of the upstream.
    ///
    /// # Errors
    ///
    /// When the process does not start or print its address.
    pub async fn start(
        kind: &Kind,
        kubeconfig: &Path,
        kubegate: &Path,
        plain: &str,
        scratch: &Path,
    ) -> Result<Proxy, String> {
        let mut command = match kind {
            Kind::NoProxy => {
                return Ok(Proxy {
                    base: format!("http://{plain}"),
                    headers: Vec::new(),
                    child: None,
                });
            }
            Kind::Kubectl => {
                let mut command = Command::new("kubectl");
                command
                    .arg("proxy")
                    .arg("--port=0")
                    .arg("--reject-paths=^-$")
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .env("HOME", scratch);
                command
            }
            Kind::Floor(args) => {
                let mut command = Command::new(floor_binary());
                // It prints nothing there but why it stopped.
                command.args(args).stderr(Stdio::inherit());
                command
            }
            Kind::Kubegate { flags, binary, .. } => {
                let mut command = Command::new(binary.as_deref().unwrap_or(kubegate));
                command
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg("--port=0")
                    .args(flags);
                command
            }
        };
        if !matches!(kind, Kind::Floor(_)) {
            command.stderr(Stdio::null());
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", kind.name()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut headers = Vec::new();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(token) = line.strip_prefix("Access token: ") {
                    headers.push(("authorization".to_string(), format!("Bearer {token}")));
                }
                if let Some(address) = line.strip_prefix("Starting to serve on ") {
                    return Some(address.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("{} did not print its address", kind.name()))?;
        // Keep reading stdout so the proxy never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Proxy {
            base: format!("http://{address}"),
            headers,
            child: Some(child),
        })
    }

    /// The process id, if the proxy is a process of its own.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops the proxy as an orchestrator does (SIGTERM) and waits for it
    /// to exit.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &pid.to_string()])
                .status()
                .await;
        }
        if let Some(child) = &mut self.child {
            let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        }
    }

    /// Stops the proxy.
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill().await;
        }
    }
}

/// A process's CPU time so far, read two ways: the kernel's nanosecond
/// run time of each live thread (`/proc/PID/task/*/schedstat`), and user +
/// system time of the whole process in clock ticks (`/proc/PID/stat`,
/// 10 ms each, but counting threads that have exited).
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    threads_ns: u64,
    ticks: f64,
}

impl Cpu {
    /// Now, for `pid` (zero for no process).
    pub fn of(pid: Option<u32>) -> Cpu {
        let Some(pid) = pid else {
            return Cpu::default();
        };
        let threads_ns = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Cpu {
            threads_ns,
            ticks: cpu_ticks(pid),
        }
    }

    /// Seconds used since `before`: the nanosecond figure, unless threads
    /// that ran in between have exited (the tick count then exceeds it by
    /// more than a tick's rounding), when only the ticks hold their time.
    pub fn seconds_since(&self, before: &Cpu) -> f64 {
        let fine = self.threads_ns.saturating_sub(before.threads_ns) as f64 / 1e9;
        let coarse = (self.ticks - before.ticks) / clock_ticks();
        if coarse > fine + 2.0 / clock_ticks() {
            coarse
        } else {
            fine
        }
    }
}

/// User + system clock ticks a process has used.
fn cpu_ticks(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces: utime is the
    // 14th field overall, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ticks(11) + ticks(12)
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident memory of a process now, in MiB.
pub fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A process's resident memory now, split into anonymous memory (heap,
/// stacks, relocated data) and file-backed pages (the binary's own text
/// and read-only data), in MiB, from `/proc/PID/smaps_rollup`.
pub fn rss_parts_mib(pid: Option<u32>) -> (f64, f64) {
    let Some(pid) = pid else { return (0.0, 0.0) };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let (rss, anonymous) = (field("Rss:"), field("Anonymous:"));
    (anonymous, rss - anonymous)
}

/// Samples a process's RSS while a phase runs, keeping the peak.
pub struct PeakRss {
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling every 20 ms.
    pub fn start(pid: Option<u32>) -> PeakRss {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                peak.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
            }
        });
        PeakRss { peak_kib, task }
    }

    /// Stops sampling; the peak in MiB.
    pub fn stop(self) -> f64 {
        self.task.abort();
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Where the release build of kubegate is.
pub fn kubegate_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/x86_64-unknown-linux-gnu/release/kubegate")
    })
}

/// The floor proxy, built beside this binary (`cargo build --release -p
/// kubegate-bench --bins`).
fn floor_binary() -> PathBuf {
    let floor = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("floor-proxy")))
        .unwrap_or_default();
    assert!(
        floor.exists(),
        "{} is missing: build it with `cargo build --release -p kubegate-bench --bins`",
        floor.display()
    );
    floor
}
