//! The `kubegate` binary as a user runs it: the start-up line, start-up
//! errors (one line, exit 1), the unix socket, signals and draining, and
//! memory that stays flat while gigabytes stream through.

mod support;

use std::path::Path;
use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KUBEGATE: &str = env!("CARGO_BIN_EXE_kubegate");

/// The binary with a clean environment (no KUBECONFIG, an empty HOME).
fn kubegate(home: &Path, args: &[&str]) -> Command {
    prepared(Command::new(KUBEGATE), home, args)
}

/// The binary in front of `double`, on a free port, under a resource
/// limit set by `prlimit` (`limit` like `--fsize=65536`).
async fn start_limited(double: &Double, limit: &str, extra: &[&str]) -> Running {
    let mut command = Command::new("prlimit");
    command.args([limit, "--", KUBEGATE]);
    let kubeconfig = double.kubeconfig.to_str().unwrap();
    let args = [&["--kubeconfig", kubeconfig, "-p", "0"], extra].concat();
    run(prepared(command, double.dir.path(), &args)).await
}

/// `command` with `args` and a clean environment.
fn prepared(mut command: Command, home: &Path, args: &[&str]) -> Command {
    command
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running binary and the address from its start-up line.
struct Running {
    child: Child,
    served_on: String,
    /// Everything written to stderr, read as it comes so the pipe never fills.
    stderr: tokio::task::JoinHandle<String>,
}

async fn start(home: &Path, args: &[&str]) -> Running {
    run(kubegate(home, args)).await
}

/// The binary in front of `double`, on a free port, with `extra` flags.
async fn start_for(double: &Double, extra: &[&str]) -> Running {
    let mut args = vec![
        "--kubeconfig",
        double.kubeconfig.to_str().unwrap(),
        "-p",
        "0",
    ];
    args.extend_from_slice(extra);
    start(double.dir.path(), &args).await
}

/// Spawns a prepared command and waits for its start-up line.
async fn run(mut command: Command) -> Running {
    let mut child = command.spawn().expect("kubegate runs");
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr_pipe, &mut text).await;
        text
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let served_on = within("start-up line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(address) = line.strip_prefix("Starting to serve on ") {
                return address.to_string();
            }
        }
        panic!("kubegate exited before serving");
    })
    .await;
    Running {
        child,
        served_on,
        stderr,
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.served_on)
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak resident memory (VmHWM) so far, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    async fn exit_code(mut self) -> i32 {
        within("exit", self.child.wait())
            .await
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

/// Runs the binary to completion; returns (exit code, stderr).
async fn fails(home: &Path, args: &[&str]) -> (i32, String) {
    let output = within("kubegate", kubegate(home, args).output())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts a start-up failure: exit 1 and one line mentioning every word.
async fn refuses_to_start(home: &Path, args: &[&str], words: &[&str]) {
    let (code, stderr) = fails(home, args).await;
    assert_eq!(code, 1, "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("kubegate: "), "{stderr}");
    for word in words {
        assert!(
            lines[0].contains(word),
            "{args:?}: {word:?} missing from {stderr}"
        );
    }
}

#[tokio::test]
async fn every_bad_flag_is_reported_at_once_one_line_each() {
    let double = Double::start().await;
    let kubeconfig = double.kubeconfig.to_str().unwrap();
    let args = [
        "--kubeconfig",
        kubeconfig,
        "--address=nowhere",
        "--shutdown-grace=5x",
        "--accept-paths=(",
    ];
    let (code, stderr) = fails(double.dir.path(), &args).await;
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, flag) in lines
        .iter()
        .zip(["--address", "--accept-paths", "--shutdown-grace"])
    {
        assert!(line.starts_with(&format!("kubegate: {flag}: ")), "{stderr}");
    }
}

#[tokio::test]
async fn port_zero_prints_the_real_port_and_serves_there() {
    let double = Double::start().await;
    let running = start_for(&double, &[]).await;
    assert!(running.served_on.starts_with("127.0.0.1:"));
    assert_ne!(running.served_on, "127.0.0.1:0");
    assert_eq!(
        get(&running.url("/api")).await.json()["kind"],
        "APIVersions"
    );
}

#[tokio::test]
async fn kubeconfig_is_found_through_the_kubeconfig_variable_with_several_files() {
    let double = Double::start().await;
    let empty = double.path("empty.yaml");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n").unwrap();
    let list = format!(
        "{}:{}:{}",
        double.path("missing.yaml").display(),
        empty.display(),
        double.kubeconfig.display()
    );
    let mut command = kubegate(double.dir.path(), &["-p", "0"]);
    command.env("KUBECONFIG", list);
    let running = run(command).await;
    assert_eq!(
        get(&running.url("/echo")).await.json()["user"]["username"],
        "alice"
    );
}

#[tokio::test]
async fn in_cluster_credentials_are_used_without_a_kubeconfig() {
    let double = Double::with(kubegate_double::Options::default(), Identity::Token).await;
    let account = double.path("serviceaccount");
    std::fs::create_dir(&account).unwrap();
    std::fs::copy(double.path("ca.crt"), account.join("ca.crt")).unwrap();
    std::fs::write(account.join("token"), "token-1").unwrap();
    std::fs::write(account.join("namespace"), "default").unwrap();
    let mut command = kubegate(
        double.dir.path(),
        &[
            "-p",
            "0",
            "--service-account-dir",
            account.to_str().unwrap(),
        ],
    );
    command.env("KUBERNETES_SERVICE_HOST", "127.0.0.1").env(
        "KUBERNETES_SERVICE_PORT",
        double.server.address().port().to_string(),
    );
    let running = run(command).await;
    assert_eq!(
        get(&running.url("/echo")).await.json()["user"]["username"],
        "token-user"
    );
}

#[tokio::test]
async fn misconfiguration_fails_at_start_with_one_line_naming_the_fix() {
    let double = Double::start().await;
    let home = double.dir.path();
    let kubeconfig = double.kubeconfig.to_str().unwrap();
    let bad_policy = double.path("bad-policy.yaml");
    std::fs::write(
        &bad_policy,
        "rules:\n  - action: Allow\n    verbs: [get]\n  - action: Deny\n    verb: [delete]\n",
    )
    .unwrap();
    let bad_yaml = double.path("bad-yaml.yaml");
    std::fs::write(&bad_yaml, "rules:\n  - {action: Allow, verbs: [get\n").unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[],
            &["no kubeconfig found", "--kubeconfig", "kubegate demo"],
        ),
        (
            &["--kubeconfig", "/nonexistent/config"],
            &["/nonexistent/config", "no such file"],
        ),
        (
            &["--kubeconfig", kubeconfig, "--context", "prod"],
            &["\"prod\"", "get-contexts"],
        ),
        (
            &["--kubeconfig", kubeconfig, "--user", "mallory"],
            &["\"mallory\"", "get-users"],
        ),
        (
            &["--kubeconfig", kubeconfig, "--reject-paths", "^/ok,(bad"],
            &["--reject-paths", "(bad"],
        ),
        (
            &["--kubeconfig", kubeconfig, "--address", "localhost"],
            &["--address", "IP address"],
        ),
        (
            &["--kubeconfig", kubeconfig, "--keepalive", "soon"],
            &["--keepalive", "10s"],
        ),
        (
            &["--kubeconfig", kubeconfig, "-u", "/tmp/x.sock", "-p", "9"],
            &["--unix-socket", "--port"],
        ),
        (
            &[
                "--kubeconfig",
                kubeconfig,
                "--policy-file",
                "/nonexistent/policy.yaml",
            ],
            &["policy file /nonexistent/policy.yaml", "no such file"],
        ),
        (
            &[
                "--kubeconfig",
                kubeconfig,
                "--policy-file",
                bad_policy.to_str().unwrap(),
            ],
            &[
                "policy file",
                "bad-policy.yaml",
                "rule 2",
                "unknown field `verb`",
            ],
        ),
        (
            &[
                "--kubeconfig",
                kubeconfig,
                "--policy-file",
                bad_yaml.to_str().unwrap(),
            ],
            &["policy file", "bad-yaml.yaml", "unclosed bracket", "line 2"],
        ),
    ];
    for (args, words) in cases {
        refuses_to_start(home, args, words).await;
    }

    let ca = double.path("ca.crt");
    let write = |name: &str, user: &str, ca_line: &str| {
        let path = double.path(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    {ca_line}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
                double.server.url()
            ),
        )
        .unwrap();
        path
    };
    let ca_line = format!("certificate-authority: {}", ca.display());
    let missing_key = write(
        "missing-key",
        &format!(
            "    client-certificate: {}\n    client-key: /nonexistent/alice.key",
            double.path("alice.crt").display()
        ),
        &ca_line,
    );
    refuses_to_start(
        home,
        &["--kubeconfig", missing_key.to_str().unwrap()],
        &["/nonexistent/alice.key", "no such file"],
    )
    .await;

    let (_, other_key) = double
        .pki
        .client("bob", &[])
        .write(double.dir.path(), "bob")
        .unwrap();
    let mismatched = write(
        "mismatched",
        &format!(
            "    client-certificate: {}\n    client-key: {}",
            double.path("alice.crt").display(),
            other_key.display()
        ),
        &ca_line,
    );
    refuses_to_start(
        home,
        &["--kubeconfig", mismatched.to_str().unwrap()],
        &["does not belong to the certificate", "alice.crt"],
    )
    .await;

    let garbage = double.path("garbage-ca.crt");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let bad_ca = write(
        "bad-ca",
        "    token: x",
        &format!("certificate-authority: {}", garbage.display()),
    );
    refuses_to_start(
        home,
        &["--kubeconfig", bad_ca.to_str().unwrap()],
        &["garbage-ca.crt", "PEM"],
    )
    .await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    refuses_to_start(
        home,
        &["--kubeconfig", kubeconfig, "-p", &port],
        &["already in use", "--port"],
    )
    .await;
}

/// kubegate with `env` added to its clean environment, in front of
/// `kubeconfig`: answers `GET /api`, then stops; returns the status and
/// its log.
async fn get_api_with_environment(
    home: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
) -> (u16, String) {
    let args = ["--kubeconfig", kubeconfig.to_str().unwrap(), "-p", "0"];
    let mut command = prepared(Command::new(KUBEGATE), home, &args);
    command.envs(env.iter().copied());
    let running = run(command).await;
    let status = get(&running.url("/api")).await.status;
    running.signal("TERM");
    let stderr = running.stderr;
    within("exit", { running.child }.wait()).await.unwrap();
    (status.as_u16(), within("stderr", stderr).await.unwrap())
}

/// A shell's `HTTPS_PROXY` and a local cluster (kind, minikube): the
/// environment's proxies follow Go's rule, and are never taken for the
/// kubeconfig's `proxy-url`. The binary, since the kubeconfig loader reads
/// the process's own environment.
#[tokio::test]
async fn the_environment_proxy_follows_gos_rule_and_is_not_the_kubeconfigs() {
    let double = Double::start().await;
    let home = double.dir.path();
    let down = format!("http://127.0.0.1:{}", free_port());
    let direct: [&[(&str, &str)]; 3] = [
        // NO_PROXY names the apiserver.
        &[("HTTPS_PROXY", &down), ("NO_PROXY", "127.0.0.1")],
        // A loopback apiserver is never proxied.
        &[("HTTPS_PROXY", &down)],
        &[("https_proxy", &down)],
    ];
    for env in direct {
        let (status, log) = get_api_with_environment(home, &double.kubeconfig, env).await;
        assert_eq!(status, 200, "{env:?}: {log}");
        assert!(
            !log.contains("reaching the apiserver through"),
            "{env:?}: {log}"
        );
    }
    // A real proxy-url is used, whatever the environment says, and the log
    // says where it came from.
    let proxy = ForwardProxy::start(ProxyKind::Tinyproxy { credentials: None }).await;
    let proxy_url = format!("proxy-url: http://127.0.0.1:{}", proxy.port);
    let config = double.kubeconfig_edited("proxied", None, &[&proxy_url]);
    let env = [("HTTPS_PROXY", down.as_str()), ("NO_PROXY", "127.0.0.1")];
    let (status, log) = get_api_with_environment(home, &config, &env).await;
    assert_eq!(status, 200, "{log}");
    let via = format!(
        "reaching the apiserver through http://127.0.0.1:{} (the kubeconfig's proxy-url)",
        proxy.port
    );
    assert!(log.contains(&via), "{log}");
    assert!(proxy.log().contains("CONNECT 127.0.0.1"), "{}", proxy.log());
}

#[tokio::test]
async fn no_credential_appears_in_the_log_at_any_level() {
    let double = Double::with(kubegate_double::Options::default(), Identity::Token).await;
    // Through a proxy that wants credentials, which kubegate must not log.
    let proxy = ForwardProxy::start(ProxyKind::Tinyproxy {
        credentials: Some(("alice", "proxy-pass")),
    })
    .await;
    let proxy_url = format!(
        "proxy-url: http://alice:proxy-pass@127.0.0.1:{}",
        proxy.port
    );
    let config = double.kubeconfig_edited("proxied", None, &[&proxy_url]);
    let config = config.to_str().unwrap();
    let running = start(
        double.dir.path(),
        &["--kubeconfig", config, "-p", "0", "-v", "9"],
    )
    .await;
    for path in ["/echo", "/api/./x"] {
        get(&running.url(path)).await;
    }
    assert_eq!(get(&running.url("/api")).await.status, 200);
    support::call(
        http::Method::GET,
        &running.url("/echo"),
        &[("authorization", "Bearer client-secret")],
        bytes::Bytes::new(),
    )
    .await;
    running.signal("TERM");
    let stderr = running.stderr;
    assert_eq!(
        within("exit", { running.child }.wait())
            .await
            .unwrap()
            .code(),
        Some(0)
    );
    let log = within("stderr", stderr).await.unwrap();
    assert!(
        log.contains("request refused"),
        "the log is written at this level: {log}"
    );
    let via = format!(
        "reaching the apiserver through http://127.0.0.1:{}",
        proxy.port
    );
    assert!(log.contains(&via), "{via:?} not in the log: {log}");
    let proxy_secrets = ["proxy-pass", "YWxpY2U6cHJveHktcGFzcw"];
    for secret in ["token-1", "client-secret", "PRIVATE KEY"]
        .iter()
        .chain(&proxy_secrets)
    {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    // stderr is a pipe here, as for a file or a collector: no colours.
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log: {log:?}"
    );
}

#[tokio::test]
async fn the_unix_socket_is_private_serves_and_is_removed_on_exit() {
    use std::os::unix::fs::PermissionsExt;
    let double = Double::start().await;
    let socket = double.path("kubegate.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let running = start(
        double.dir.path(),
        &[
            "--kubeconfig",
            double.kubeconfig.to_str().unwrap(),
            "--unix-socket",
            socket.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(running.served_on, socket.display().to_string());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // It was bound in a private directory and renamed into place; the
    // directory is gone.
    let staging: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".d"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--unix-socket",
            socket.to_str().unwrap(),
            "http://localhost/api/v1/namespaces/default/pods",
        ])
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)");
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list["kind"], "PodList");
    running.signal("TERM");
    assert_eq!(running.exit_code().await, 0);
    assert!(!socket.exists(), "the socket file is removed on exit");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let double = Double::start().await;
    let running = start_for(&double, &[]).await;
    let slow = tokio::spawn(get_owned(running.url("/faults/slow?ms=1500")));
    // The request is in flight once the double has counted it.
    within("request reaches the double", async {
        while double
            .server
            .state()
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    running.signal("TERM");
    let answer = within("slow request", slow).await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request completed");
    assert_eq!(running.exit_code().await, 0);
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let double = Double::start().await;
    let running = start_for(&double, &["--shutdown-grace", "200ms"]).await;
    // A watch never finishes by itself.
    let watch = open_watch(&running).await;
    running.signal("INT");
    assert_eq!(running.exit_code().await, 0);
    drop(watch);
}

/// A watch of the default namespace's pods, open (it never ends by itself).
async fn open_watch(running: &Running) -> http::Response<hyper::body::Incoming> {
    let url = running.url("/api/v1/namespaces/default/pods?watch=1");
    let watch = send(http::Method::GET, &url, &[], bytes::Bytes::new()).await;
    assert_eq!(watch.status(), 200);
    watch
}

async fn get_owned(url: String) -> Answer {
    get(&url).await
}

#[tokio::test]
async fn a_gibibyte_each_way_streams_in_constant_memory() {
    let double = Double::start().await;
    let running = start_for(&double, &[]).await;
    const GIB: u64 = 1 << 30;
    assert_eq!(
        download_length(&running.url(&format!("/bytes?size={GIB}"))).await,
        GIB
    );
    assert_eq!(
        upload_mib(&running.url("/echo"), 1024).await["bodyBytes"],
        GIB
    );

    let peak = running.peak_rss_kib();
    assert!(
        peak < 64 * 1024,
        "kubegate's peak RSS was {peak} KiB for 2 GiB streamed"
    );
}

#[tokio::test]
async fn help_reads_like_kubectl_proxy() {
    let output = std::process::Command::new(KUBEGATE)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--port",
        "--address",
        "--unix-socket",
        "--accept-hosts",
        "--accept-paths",
        "--reject-paths",
        "--reject-methods",
        "--api-prefix",
        "--www",
        "--www-prefix",
        "--disable-filter",
        "--keepalive",
        "--append-server-path",
        "--kubeconfig",
        "--context",
        "--cluster",
        "--user",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("kubegate demo"));
}

#[tokio::test]
async fn a_generated_access_token_is_printed_once_and_required() {
    let double = Double::start().await;
    let saved = double.path("saved-token");
    // An old, readable file is replaced by a new private one.
    std::fs::write(&saved, "old token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = kubegate(
        double.dir.path(),
        &[
            "--kubeconfig",
            double.kubeconfig.to_str().unwrap(),
            "-p",
            "0",
            "--generate-access-token",
            "--access-token-file",
            saved.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("token line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let token = first
        .strip_prefix("Access token: ")
        .expect("the token is printed first")
        .to_string();
    let address = within("start-up line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let address = address
        .strip_prefix("Starting to serve on ")
        .unwrap()
        .to_string();
    assert_eq!(std::fs::read_to_string(&saved).unwrap().trim(), token);
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(get(&format!("http://{address}/api")).await.status, 401);
    let bearer = format!("Bearer {token}");
    let answer = support::call(
        http::Method::GET,
        &format!("http://{address}/api"),
        &[("authorization", &bearer)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn sigterm_flushes_every_audit_event_before_exit() {
    let double = Double::start().await;
    let log = double.path("audit.log");
    let running = start_for(&double, &["--audit-log-path", log.to_str().unwrap()]).await;
    for _ in 0..200 {
        assert_eq!(get(&running.url("/api")).await.status, 200);
    }
    running.signal("TERM");
    assert_eq!(running.exit_code().await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let complete = text
        .lines()
        .filter(|l| l.contains("\"stage\":\"ResponseComplete\""))
        .count();
    assert_eq!(complete, 200);
}

#[tokio::test]
async fn sigterm_writes_the_response_complete_of_an_open_watch() {
    let double = Double::start().await;
    let log = double.path("audit.log");
    let flags = ["--shutdown-grace", "200ms", "--audit-log-path"];
    let running = start_for(&double, &[&flags[..], &[log.to_str().unwrap()]].concat()).await;
    let watch = open_watch(&running).await;
    let id = watch.headers()["audit-id"].to_str().unwrap().to_string();
    running.signal("TERM");
    assert_eq!(running.exit_code().await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let complete: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|e: &serde_json::Value| {
            e["auditID"] == id.as_str() && e["stage"] == "ResponseComplete"
        })
        .collect();
    assert_eq!(complete.len(), 1, "{text}");
    assert_eq!(
        complete[0]["annotations"]["kubegate.io/response"],
        "closed by kubegate's shutdown before its body was complete"
    );
    drop(watch);
}

#[tokio::test]
async fn a_full_disk_tears_no_line_and_loses_no_event() {
    let double = Double::start().await;
    let log = double.path("audit.log");
    // The file size limit (RLIMIT_FSIZE) stands for a full disk: a write
    // past it fails partway with EFBIG.
    let running = start_limited(
        &double,
        "--fsize=65536",
        &["--audit-log-path", log.to_str().unwrap()],
    )
    .await;
    let mut ids = Vec::new();
    let refused = within("the log fills and requests are refused", async {
        loop {
            let answer = get(&running.url("/api")).await;
            if answer.status == 503 {
                return answer;
            }
            assert_eq!(answer.status, 200);
            ids.push(answer.headers["audit-id"].to_str().unwrap().to_string());
        }
    })
    .await;
    assert!(
        refused.status_message().contains("audit"),
        "{}",
        refused.status_message()
    );
    let full = std::fs::read_to_string(&log).unwrap();
    assert!(full.ends_with('\n'), "the full log ends with a whole line");
    for line in full.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is a whole event");
    }
    // Space is freed (the log moved aside): kubegate writes what it held
    // and serves again.
    let aside = double.path("audit.log.full");
    std::fs::rename(&log, &aside).unwrap();
    let mut answer = get(&running.url("/api")).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    within("requests are served again", async {
        while answer.status != 200 {
            tick.tick().await;
            answer = get(&running.url("/api")).await;
        }
    })
    .await;
    running.signal("TERM");
    assert_eq!(running.exit_code().await, 0);
    let text = std::fs::read_to_string(&aside).unwrap() + &std::fs::read_to_string(&log).unwrap();
    let completed: std::collections::HashSet<String> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["stage"] == "ResponseComplete")
        .map(|event| event["auditID"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = ids.iter().filter(|id| !completed.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered requests have no ResponseComplete",
        lost.len(),
        ids.len()
    );
}

#[tokio::test]
async fn idle_sockets_past_the_descriptor_limit_do_not_stop_service() {
    let double = Double::start().await;
    // 128 descriptors: --max-connections defaults to 32, and idle sockets
    // beyond it wait in the backlog, not on kubegate's descriptors.
    let running = start_limited(&double, "--nofile=128", &["--first-request-timeout=1s"]).await;
    let mut idle = Vec::new();
    for _ in 0..140 {
        idle.push(
            tokio::net::TcpStream::connect(&running.served_on)
                .await
                .unwrap(),
        );
    }
    // Served once the idle sockets before it have had their deadline.
    let answer = within(
        "a request behind 140 idle sockets",
        get(&running.url("/api")),
    )
    .await;
    assert_eq!(answer.status, 200);
    drop(idle);
    assert_eq!(get(&running.url("/api")).await.status, 200);
    running.signal("TERM");
    assert_eq!(running.exit_code().await, 0);
}

#[tokio::test]
async fn an_open_exec_session_is_closed_after_the_grace_period() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let running = start_for(&double, &["--shutdown-grace", "300ms"]).await;
    let path = "/api/v1/namespaces/default/pods/box/exec?command=cat&stdin=true&stdout=true";
    let mut request = format!("ws://{}{path}", running.served_on)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(&running.served_on)
        .await
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    running.signal("TERM");
    assert_eq!(
        running.exit_code().await,
        0,
        "exits once the grace period is over"
    );
    // The session was closed under the client.
    while let Some(Ok(message)) = within("session end", socket.next()).await {
        if message.is_close() {
            break;
        }
    }
}

#[tokio::test]
async fn sigterm_under_load_resets_no_request_in_flight() {
    let double = Double::start().await;
    let running = start_for(&double, &[]).await;
    let requests = &double.server.state().stats.requests;
    let before = requests.load(std::sync::atomic::Ordering::Acquire);
    let in_flight: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get_owned(running.url("/faults/slow?ms=400"))))
        .collect();
    within("16 requests in flight", async {
        while requests.load(std::sync::atomic::Ordering::Acquire) < before + 16 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    running.signal("TERM");
    for request in in_flight {
        assert_eq!(
            within("request", request).await.unwrap().status,
            200,
            "an in-flight request was cut"
        );
    }
    assert_eq!(running.exit_code().await, 0);
}

#[tokio::test]
async fn policy_check_prints_the_decision_and_the_rule_without_a_cluster() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/policy/sidecar-one-namespace.yaml"
    );
    let check = |args: &[&str]| {
        let output = std::process::Command::new(KUBEGATE)
            .args(["policy", "check", example])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )
    };
    let (allowed, line) = check(&["GET", "/api/v1/namespaces/team-a/pods?watch=1"]);
    assert!(allowed, "{line}");
    assert!(line.starts_with("allowed: watch by rule 2 of "), "{line}");
    let (allowed, line) = check(&["get", "/api/v1/namespaces/team-a/secrets/s"]);
    assert!(!allowed);
    assert!(
        line.starts_with("refused: 403 secrets \"s\" is forbidden:") && line.contains("rule 1 of"),
        "{line}"
    );
    let (allowed, line) = check(&[
        "GET",
        "/api/v1/namespaces/team-a/pods/web/exec",
        "--upgrade",
    ]);
    assert!(
        !allowed && line.contains("create resource \"pods/exec\""),
        "{line}"
    );
    let (allowed, line) = check(&["GET", "/api/v1/namespaces/team-a/pods", "--read-only"]);
    assert!(
        allowed && line.ends_with("(Allow) and --read-only"),
        "{line}"
    );
}

#[tokio::test]
async fn policy_check_warns_of_a_namespaced_deny_that_an_all_namespace_list_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let rules = r#"
rules:
  - action: Deny
    namespaces: [kube-system]
    resources: [{group: "", resources: ["secrets"]}]
  - action: Allow
    verbs: [get, list, watch]
    resources: [{group: "", resources: ["secrets", "pods"]}]
"#;
    std::fs::write(&file, rules).unwrap();
    let check = |target: &str| {
        std::process::Command::new(KUBEGATE)
            .args(["policy", "check", file.to_str().unwrap(), "GET", target])
            .output()
            .unwrap()
    };
    // The namespace looks hidden, and is, one namespace at a time...
    let one = check("/api/v1/namespaces/kube-system/secrets");
    assert!(!one.status.success());
    // ...but every namespace's secrets are listed at once, and the check
    // says so whatever request it is asked about.
    let all = check("/api/v1/secrets");
    assert!(all.status.success());
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert!(stdout.starts_with("allowed: list by rule 2"), "{stdout}");
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kubegate: warning: rule 1 denies secrets in namespaces kube-system but not across all namespaces: list of secrets in every namespace is allowed by rule 2;"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&one.stderr), stderr);
}

#[tokio::test]
async fn named_kubectl_gate_it_is_a_kubectl_plugin_and_says_kubectl_gate() {
    let double = Double::start().await;
    let bin = tempfile::tempdir().unwrap();
    let plugin = bin.path().join("kubectl-gate");
    std::os::unix::fs::symlink(KUBEGATE, &plugin).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| {
        let mut command = prepared(Command::new("kubectl"), double.dir.path(), args);
        command.env("PATH", &path);
        command
    };
    let output = |args: &[&str]| {
        let mut command = kubectl(args);
        async move {
            within("kubectl", command.output())
                .await
                .expect("kubectl runs (it must be on PATH)")
        }
    };
    let list = output(&["plugin", "list"]).await;
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains(plugin.to_str().unwrap()), "{listed}");
    let help = output(&["gate", "--help"]).await;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: kubectl gate [OPTIONS]"), "{help}");
    let missing = output(&["gate", "--kubeconfig", "/nonexistent/config"]).await;
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(said.starts_with("kubectl gate: "), "{said}");
    // Flags go after the plugin's name, as kubectl requires.
    let kubeconfig = double.kubeconfig.to_str().unwrap();
    let running = run(kubectl(&[
        "gate",
        "--kubeconfig",
        kubeconfig,
        "--port",
        "0",
    ]))
    .await;
    let pods = get(&running.url("/api/v1/namespaces/default/pods")).await;
    assert_eq!(pods.status, 200);
}

#[tokio::test]
async fn the_version_names_the_commit_and_completions_are_printed() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(KUBEGATE)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let version = run(&["--version"]);
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    assert!(run(&["completion", "bash"]).contains("_kubegate()"));
    assert!(run(&["completion", "zsh"]).contains("#compdef kubegate"));
    assert!(run(&["completion", "fish"]).contains("complete -c kubegate"));
}

#[tokio::test]
async fn a_generated_token_is_never_written_through_a_symlink() {
    let double = Double::start().await;
    let target = double.path("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    let link = double.path("token-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let kubeconfig = double.kubeconfig.to_str().unwrap();
    let args = [
        "--kubeconfig",
        kubeconfig,
        "-p",
        "0",
        "--generate-access-token",
    ];
    let file = ["--access-token-file", link.to_str().unwrap()];
    refuses_to_start(
        double.dir.path(),
        &[&args[..], &file].concat(),
        &["symbolic link"],
    )
    .await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let double = Double::start().await;
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4).map(str::to_string))
        .unwrap();
    // Started with a low soft limit, as a shell's `ulimit -Sn 256` leaves it.
    let script = format!(
        "ulimit -Sn 256 && exec {KUBEGATE} --kubeconfig {} -p 0",
        double.kubeconfig.display()
    );
    let mut command = Command::new("sh");
    command
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let running = run(command).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", running.pid())).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let soft = line.split_whitespace().nth(3).unwrap();
    assert_eq!(soft, hard, "{line}");
}
