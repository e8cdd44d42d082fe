//! `--flamegraph SVG`: where kubegate's CPU goes during one phase, sampled
//! by Debian's `perf` (the `cpu-clock` software event, which works in
//! virtual machines without hardware counters) and drawn by inferno.
//! `--strace FILE`: the system calls it makes during one phase, counted by
//! `strace -c -f` (which slows the process: count calls, not time).
//!
//! The binary needs symbols and frame pointers to be readable:
//! `CARGO_TARGET_DIR=target/profiling CARGO_PROFILE_RELEASE_STRIP=false
//! CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C
//! force-frame-pointers=yes" cargo build --release --no-default-features
//! --bin kubegate`, then `--kubegate target/profiling/release/kubegate`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use inferno::collapse::Collapse;

/// What is attached to the proxy during the phase.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `perf record`, drawn as a flame graph.
    Perf,
    /// `strace -c -f`, a table of system calls.
    Strace,
}

/// `perf record` or `strace` attached to the proxy.
pub struct Recording {
    tool: Tool,
    child: tokio::process::Child,
    data: PathBuf,
    out: PathBuf,
    title: String,
}

/// Starts recording process `pid` (every thread) until [`Recording::finish`].
pub async fn start(tool: Tool, pid: u32, out: &Path, title: &str) -> Recording {
    let (data, mut command) = match tool {
        Tool::Perf => {
            let data = out.with_extension("perf.data");
            let mut command = tokio::process::Command::new("perf");
            command
                .args(["record", "-F", "997", "-e", "cpu-clock", "-g", "-o"])
                .arg(&data);
            (data, command)
        }
        Tool::Strace => {
            let mut command = tokio::process::Command::new("strace");
            command.args(["-c", "-f", "-o"]).arg(out);
            (out.to_path_buf(), command)
        }
    };
    let child = command
        .arg("-p")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("perf runs (apt-get install linux-perf), or strace (apt-get install strace)");
    // Both attach within milliseconds; the phase runs for seconds.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Recording {
        tool,
        child,
        data,
        out: out.to_path_buf(),
        title: title.to_string(),
    }
}

impl Recording {
    /// Stops recording and writes the flame graph or the table.
    pub async fn finish(mut self) {
        if let Some(id) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &id.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
        if self.tool == Tool::Strace {
            eprintln!("system calls: {}", self.out.display());
            return;
        }
        let script = std::process::Command::new("perf")
            .arg("script")
            .arg("-i")
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .expect("perf script runs");
        let mut folded = Vec::new();
        inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
            .collapse(&script.stdout[..], &mut folded)
            .expect("perf's samples fold");
        let mut options = inferno::flamegraph::Options::default();
        options.title = self.title.clone();
        let svg = std::fs::File::create(&self.out).expect("the flame graph file");
        inferno::flamegraph::from_reader(&mut options, &folded[..], svg).expect("the flame graph");
        let _ = std::fs::remove_file(&self.data);
        eprintln!("flame graph: {}", self.out.display());
    }
}
