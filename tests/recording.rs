//! Session recordings end to end: kubectl exec and attach on a real
//! pseudo-terminal (tmux) through kubegate to the double, over WebSocket
//! and SPDY; the files replayed by asciinema 2.x and kubegate itself; the
//! audit event's link, hash and exit code; the limits in both failure
//! modes. A missing tool fails the test with the command that installs it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use http::Method;
use serde_json::Value;
use support::*;
use tokio::process::Command;

/// The kubectl command line for kubegate, as a shell would run it.
fn kubectl_line(double: &Double, kubegate: &Kubegate, websockets: bool, args: &str) -> String {
    let home = double.dir.path().display();
    format!(
        "env HOME={home} KUBECONFIG={home}/no-kubeconfig KUBECTL_REMOTE_COMMAND_WEBSOCKETS={websockets} kubectl --server={} {args}",
        kubegate.url("")
    )
}

/// kubectl with its output captured.
fn kubectl(double: &Double, kubegate: &Kubegate, websockets: bool, args: &[&str]) -> Command {
    let mut command = program(
        "kubectl",
        "install kubectl from the Kubernetes apt repository or a cloud SDK",
    );
    let home = double.dir.path();
    command
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets.to_string())
        .arg(format!("--server={}", kubegate.url("")))
        .args(args);
    command
}

/// A tmux server of the test's own, killed when dropped: a real terminal
/// for kubectl, typed into and resized as a person would.
struct Tmux {
    socket: String,
    config: PathBuf,
}

impl Tmux {
    /// Runs `line` in a 100×30 window with no status bar; when it ends it
    /// signals the channel `ended` (the server stays, to be asked).
    async fn run(dir: &Path, name: &str, line: &str) -> Tmux {
        let config = dir.join(format!("{name}.tmux.conf"));
        let settings = "set -g status off\nset -g remain-on-exit off\nset -g exit-empty off\n";
        std::fs::write(&config, settings).unwrap();
        let line = format!("{line}; tmux wait-for -S ended");
        let tmux = Tmux {
            socket: format!("kubegate-test-{}-{name}", std::process::id()),
            config,
        };
        let started = tmux
            .command(&["new-session", "-d", "-x", "100", "-y", "30", &line])
            .status()
            .await
            .unwrap();
        assert!(started.success(), "tmux new-session");
        tmux
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = program("tmux", "apt install tmux");
        command
            .env_remove("TMUX")
            .args(["-L", &self.socket, "-f"])
            .arg(&self.config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    }

    /// What the window shows now.
    fn screen(&self) -> String {
        let mut capture = std::process::Command::new("tmux");
        capture.args(["-L", &self.socket, "capture-pane", "-p"]);
        let shown = capture.env_remove("TMUX").output().unwrap();
        String::from_utf8_lossy(&shown.stdout).into_owned()
    }

    /// Waits until the window shows `text` (tmux signals no screen change,
    /// so the screen is looked at until it does).
    async fn wait_for(&self, text: &str) {
        eventually(&format!("{text:?} on the terminal"), || {
            self.screen().contains(text)
        })
        .await;
    }

    async fn type_line(&self, text: &str) {
        let typed = self
            .command(&["send-keys", "-l", text])
            .status()
            .await
            .unwrap();
        assert!(typed.success());
        let entered = self
            .command(&["send-keys", "Enter"])
            .status()
            .await
            .unwrap();
        assert!(entered.success());
    }

    async fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        let resized = self
            .command(&["resize-window", "-x", &w, "-y", &h])
            .status()
            .await
            .unwrap();
        assert!(resized.success());
    }

    /// Waits for the window's program to end: its `ended` signal (tmux
    /// keeps a signal sent before anyone waits).
    async fn wait_closed(&self) {
        let ended = within("the terminal's program to end", async {
            self.command(&["wait-for", "ended"]).status().await.unwrap()
        })
        .await;
        assert!(ended.success(), "tmux wait-for");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

/// A double with a pod `box`, and kubegate recording into `recordings`
/// and auditing into `audit.log`.
async fn recording(flags: &[&str]) -> (Double, Kubegate, PathBuf, PathBuf) {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let dir = double.path("recordings");
    let log = double.path("audit.log");
    let mut all = vec![
        "--record-sessions-dir",
        dir.to_str().unwrap(),
        "--audit-log-path",
        log.to_str().unwrap(),
        "--admin-address=127.0.0.1:0",
    ];
    all.extend_from_slice(flags);
    let kubegate = Kubegate::start(&double, &all).await;
    (double, kubegate, dir, log)
}

/// The exec and attach sessions' `ResponseComplete` events so far.
fn session_ends(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            event["stage"] == "ResponseComplete"
                && matches!(
                    event["objectRef"]["subresource"].as_str(),
                    Some("exec" | "attach")
                )
        })
        .collect()
}

/// The annotations of the `n`-th (from 0) exec or attach session's
/// `ResponseComplete`, once written (after the session, which the client
/// need not wait for).
async fn session_end(log: &Path, n: usize) -> Value {
    eventually("the session's ResponseComplete", || {
        session_ends(log).len() > n
    })
    .await;
    session_ends(log)[n]["annotations"].clone()
}

/// A recording: its header and its events.
struct Cast {
    header: Value,
    events: Vec<(f64, String, String)>,
}

impl Cast {
    fn read(path: &Path) -> Cast {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let header = serde_json::from_str(lines.next().unwrap()).unwrap();
        let events = lines
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        Cast { header, events }
    }

    fn of(&self, code: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|(_, c, _)| c == code)
            .map(|(_, _, text)| text.as_str())
            .collect()
    }

    fn output(&self) -> String {
        self.of("o").concat()
    }
}

/// Checks the audit annotations against the file they name, and returns
/// the file.
fn linked_file(dir: &Path, annotations: &Value) -> PathBuf {
    let name = annotations["kubegate.io/recording"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording: {annotations}"));
    let path = dir.join(name);
    let bytes = std::fs::read(&path).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(annotations["kubegate.io/recording-sha256"], hex.as_str());
    assert_eq!(
        annotations["kubegate.io/recording-bytes"],
        bytes.len().to_string().as_str()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{name}");
    let day = path.parent().unwrap();
    assert_eq!(
        std::fs::metadata(day).unwrap().permissions().mode() & 0o777,
        0o700
    );
    path
}

/// `asciinema cat` (asciinema 2.x, PyPI): the output it replays.
async fn asciinema_cat(path: &Path) -> String {
    let mut cat = program("asciinema", "pip install 'asciinema<3'");
    let output = within("asciinema cat", cat.arg("cat").arg(path).output())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "asciinema cat: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubegate recordings ARGS`.
async fn kubegate_recordings(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kubegate"))
        .arg("recordings")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_exec_on_a_terminal_is_recorded_over_websocket_and_spdy() {
    let (double, kubegate, dir, log) = recording(&[]).await;
    for (n, (transport, websockets)) in [("spdy", false), ("websocket", true)]
        .into_iter()
        .enumerate()
    {
        let line = kubectl_line(&double, &kubegate, websockets, "exec -it box -- sh");
        let terminal = Tmux::run(double.dir.path(), transport, &line).await;
        terminal.type_line("echo recorded-$((6*7))").await;
        terminal.wait_for("recorded-42").await;
        terminal.resize(120, 40).await;
        eventually("the double sees the resize", || {
            double.server.state().stats.terminal.get() == Some((120, 40))
        })
        .await;
        terminal.type_line("exit 3").await;
        terminal.wait_closed().await;

        let annotations = session_end(&log, n).await;
        assert_eq!(
            annotations["kubegate.io/recording-status"], "complete",
            "{transport}: {annotations}"
        );
        assert_eq!(annotations["kubegate.io/exit-code"], "3", "{transport}");
        let path = linked_file(&dir, &annotations);
        let cast = Cast::read(&path);
        let header = &cast.header;
        assert_eq!(header["version"], 2);
        // The terminal's first size: the header's, or (when output came
        // before kubectl sent it) the first resize after 80×24.
        let first = match (header["width"].as_u64(), header["height"].as_u64()) {
            (Some(80), Some(24)) => cast.of("r").first().map(|r| r.to_string()),
            (Some(w), Some(h)) => Some(format!("{w}x{h}")),
            _ => None,
        };
        assert_eq!(
            first.as_deref(),
            Some("100x30"),
            "{transport}: the first size"
        );
        assert_eq!(header["command"], "sh");
        assert_eq!(header["title"], "default/box/main exec");
        let meta = &header["kubegate"];
        assert_eq!(meta["tty"], true);
        assert_eq!(meta["pod"], "box");
        assert_eq!(meta["argv"], serde_json::json!(["sh"]));
        assert_eq!(
            meta["audit_id"].as_str(),
            path.file_stem().and_then(|s| s.to_str())
        );
        let expected_protocol = if websockets {
            "v5.channel.k8s.io"
        } else {
            "v4.channel.k8s.io"
        };
        assert_eq!(meta["protocol"], expected_protocol, "{transport}");
        // What the double saw last is the last size recorded.
        assert_eq!(cast.of("r").last(), Some(&"120x40"), "{transport}");
        assert_eq!(cast.of("x"), ["3"], "{transport}");
        assert!(cast.of("i").is_empty(), "stdin is not recorded by default");
        assert!(cast.output().contains("recorded-42"), "{transport}");
        let times: Vec<f64> = cast.events.iter().map(|e| e.0).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "times never go back"
        );

        assert!(
            asciinema_cat(&path).await.contains("recorded-42"),
            "{transport}"
        );
        let played =
            kubegate_recordings(&["play", "--speed", "1000", path.to_str().unwrap()]).await;
        assert!(played.contains("recorded-42"));
    }
    let listed = kubegate_recordings(&["list", dir.to_str().unwrap()]).await;
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.contains("alice\tdefault/box/main\tsh\tcomplete"))
            .count(),
        2,
        "{listed}"
    );
}

#[tokio::test]
async fn kubectl_attach_on_a_terminal_is_recorded_with_what_was_typed() {
    let (double, kubegate, dir, log) = recording(&["--record-stdin"]).await;
    let mut shell = pod("shell");
    let container = &mut shell["spec"]["containers"][0];
    container["command"] = serde_json::json!(["sh"]);
    // kubectl attaches a terminal only to a container that has one.
    container["stdin"] = true.into();
    container["tty"] = true.into();
    double.store().create("default", shell).unwrap();
    let line = kubectl_line(&double, &kubegate, true, "attach -it shell");
    let terminal = Tmux::run(double.dir.path(), "attach", &line).await;
    terminal.type_line("echo attached-$((5*5))").await;
    terminal.wait_for("attached-25").await;
    terminal.type_line("exit").await;
    terminal.wait_closed().await;
    let annotations = session_end(&log, 0).await;
    let cast = Cast::read(&linked_file(&dir, &annotations));
    assert_eq!(cast.header["kubegate"]["subresource"], "attach");
    assert!(cast.header["title"].as_str().unwrap().ends_with(" attach"));
    assert!(cast.output().contains("attached-25"));
    assert!(
        cast.of("i").concat().contains("echo attached-$((5*5))"),
        "{:?}",
        cast.of("i")
    );
}

#[tokio::test]
async fn sessions_without_a_terminal_are_recorded_only_when_asked() {
    let script = [
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2; exit 4",
    ];
    // Not asked: the audit event says why there is no recording.
    let (double, kubegate, dir, log) = recording(&[]).await;
    let ran = kubectl(&double, &kubegate, true, &script)
        .output()
        .await
        .unwrap();
    assert_eq!(ran.status.code(), Some(4));
    let annotations = session_end(&log, 0).await;
    let status = annotations["kubegate.io/recording-status"]
        .as_str()
        .unwrap();
    assert!(status.starts_with("off: no terminal"), "{status}");
    assert!(annotations.get("kubegate.io/recording").is_none());
    assert!(
        kubegate_recordings(&["list", dir.to_str().unwrap()])
            .await
            .lines()
            .count()
            == 1
    );
    drop((kubegate, double));

    let (double, kubegate, dir, log) = recording(&["--record-non-interactive"]).await;
    for (n, websockets) in [true, false].into_iter().enumerate() {
        let ran = kubectl(&double, &kubegate, websockets, &script)
            .output()
            .await
            .unwrap();
        assert_eq!(ran.status.code(), Some(4));
        let annotations = session_end(&log, n).await;
        assert_eq!(annotations["kubegate.io/exit-code"], "4");
        let cast = Cast::read(&linked_file(&dir, &annotations));
        assert_eq!(cast.header["kubegate"]["tty"], false);
        // Without a terminal, newlines return the carriage for players.
        let output = cast.output();
        assert!(
            output.contains("one\r\n") && output.contains("two\r\n"),
            "{output:?}"
        );
        assert_eq!(cast.of("x"), ["4"]);
    }
    // What is relayed is what the pod sent, recorded or not.
    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let stdin = double.path("stdin.bin");
    std::fs::write(&stdin, &input).unwrap();
    let mut cat = kubectl(
        &double,
        &kubegate,
        true,
        &["exec", "-i", "box", "--", "cat"],
    );
    cat.stdin(std::fs::File::open(&stdin).unwrap());
    let echoed = within("kubectl exec cat", cat.output()).await.unwrap();
    assert!(
        echoed.stdout == input,
        "{} bytes came back changed",
        echoed.stdout.len()
    );
}

/// A command printing `bytes` bytes of `a`, without a terminal, then
/// running `then`.
fn printing(bytes: usize, then: &str) -> Vec<String> {
    ["exec", "box", "--", "sh", "-c"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("head -c {bytes} /dev/zero | tr '\\0' a; {then}")])
        .collect()
}

#[tokio::test]
async fn the_size_cap_truncates_the_recording_or_cuts_the_session() {
    for mode in ["continue", "refuse"] {
        // Cut, the session ends before its command does.
        let then = if mode == "refuse" {
            "exec sleep 1000"
        } else {
            "true"
        };
        let args = printing(3_000_000, then);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (double, kubegate, dir, log) = recording(&[
            "--record-non-interactive",
            "--record-maxsize=1",
            &format!("--record-failure={mode}"),
        ])
        .await;
        let ran = within(
            "kubectl exec",
            kubectl(&double, &kubegate, true, &args).output(),
        )
        .await
        .unwrap();
        let annotations = session_end(&log, 0).await;
        assert_eq!(
            annotations["kubegate.io/recording-status"], "truncated",
            "{mode}"
        );
        let path = linked_file(&dir, &annotations);
        let cast = Cast::read(&path);
        let markers = cast.of("m");
        assert!(
            markers.last().unwrap().contains("--record-maxsize"),
            "{markers:?}"
        );
        assert!(std::fs::metadata(&path).unwrap().len() < 1_200_000);
        // What was relayed reached the client whole either way.
        assert_eq!(ran.stdout.len(), 3_000_000, "{mode}");
        assert_eq!(
            ran.status.success(),
            mode == "continue",
            "{mode}: cut or not"
        );
    }
}

#[tokio::test]
async fn without_room_to_record_sessions_are_refused_or_go_unrecorded() {
    let exec =
        "/api/v1/namespaces/default/pods/box/exec?command=true&tty=true&stdin=true&stdout=true";
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", "v5.channel.k8s.io"),
    ];
    // A floor no disk has: as a full disk looks.
    let (_double, kubegate, _dir, _log) =
        recording(&["--record-min-free=1000000000000", "--record-failure=refuse"]).await;
    let refused = call(Method::GET, &kubegate.url(exec), &upgrade, "").await;
    assert_eq!(refused.status, 503);
    let message = refused.status_message();
    assert!(
        message.contains("--record-min-free") && message.contains("--record-failure=refuse"),
        "{message}"
    );
    let off = kubegate
        .metric("kubegate_recordings_total{status=\"off\"}")
        .await;
    assert_eq!(off, "1");

    let (double, kubegate, _dir, log) = recording(&[
        "--record-min-free=1000000000000",
        "--record-failure=continue",
    ])
    .await;
    let line = kubectl_line(&double, &kubegate, true, "exec -it box -- sh");
    let terminal = Tmux::run(double.dir.path(), "unrecorded", &line).await;
    terminal.type_line("echo unrecorded-$((2*3))").await;
    terminal.wait_for("unrecorded-6").await;
    terminal.type_line("exit").await;
    terminal.wait_closed().await;
    let annotations = session_end(&log, 0).await;
    let status = annotations["kubegate.io/recording-status"]
        .as_str()
        .unwrap();
    assert!(
        status.starts_with("off: ") && status.contains("--record-min-free"),
        "{status}"
    );
}

#[tokio::test]
async fn a_quota_reached_mid_session_ends_the_recording_incomplete() {
    let args = printing(4_000_000, "true");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (double, kubegate, dir, log) = recording(&[
        "--record-non-interactive",
        "--record-quota=1",
        "--record-failure=continue",
    ])
    .await;
    let ran = kubectl(&double, &kubegate, true, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(ran.stdout.len(), 4_000_000);
    let annotations = session_end(&log, 0).await;
    let status = annotations["kubegate.io/recording-status"]
        .as_str()
        .unwrap();
    assert!(
        status.starts_with("incomplete: ") && status.contains("--record-quota"),
        "{status}"
    );
    let cast = Cast::read(&linked_file(&dir, &annotations));
    assert!(cast.of("m").last().unwrap().contains("recording stopped"));
    let incomplete = kubegate
        .metric("kubegate_recordings_total{status=\"incomplete\"}")
        .await;
    assert_eq!(incomplete, "1");
    let written: u64 = kubegate
        .metric("kubegate_recording_bytes_total")
        .await
        .parse()
        .unwrap();
    assert!(written > 1_000_000, "{written}");
}

#[tokio::test]
async fn a_recordings_directory_others_can_read_is_refused_at_start() {
    let double = Double::start().await;
    let dir = double.path("open");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = Kubegate::try_start(
        &double.kubeconfig,
        &["--record-sessions-dir", dir.to_str().unwrap()],
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        error.contains("--record-sessions-dir") && error.contains("chmod 700"),
        "{error}"
    );
}
