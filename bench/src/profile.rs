//! `--flamegraph SVG`: where kubegate's CPU goes during one phase, sampled
//! by Debian's `perf` (the `cpu-clock` software event, which works in
//! virtual machines without hardware counters) and drawn by inferno.
//!
//! The binary needs symbols and frame pointers to be readable:
//! `CARGO_TARGET_DIR=target/profiling CARGO_PROFILE_RELEASE_STRIP=false
//! CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C
//! force-frame-pointers=yes" cargo build --release --no-default-features
//! --bin kubegate`, then `--kubegate target/profiling/release/kubegate`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use inferno::collapse::Collapse;

/// `perf record` attached to the proxy.
pub struct Recording {
    perf: tokio::process::Child,
    data: PathBuf,
    svg: PathBuf,
    title: String,
}

/// Starts sampling process `pid` (with call stacks) until [`Recording::finish`].
pub async fn start(pid: u32, svg: &Path, title: &str) -> Recording {
    let data = svg.with_extension("perf.data");
    let perf = tokio::process::Command::new("perf")
        .args(["record", "-F", "997", "-e", "cpu-clock", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("perf runs (apt-get install linux-perf)");
    // perf attaches within milliseconds; the phase runs for seconds.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Recording {
        perf,
        data,
        svg: svg.to_path_buf(),
        title: title.to_string(),
    }
}

impl Recording {
    /// Stops sampling and writes the flame graph.
    pub async fn finish(mut self) {
        if let Some(id) = self.perf.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &id.to_string()])
                .status();
        }
        let _ = self.perf.wait().await;
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
        let svg = std::fs::File::create(&self.svg).expect("the flame graph file");
        inferno::flamegraph::from_reader(&mut options, &folded[..], svg).expect("the flame graph");
        let _ = std::fs::remove_file(&self.data);
        eprintln!("flame graph: {}", self.svg.display());
    }
}
