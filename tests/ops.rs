//! Operations: the admin port (health, readiness, metrics parsed by the
//! Prometheus client's own parser), refusing an unprotected network
//! listener, credentials that rotate under a live watch, the deploy
//! manifests against the Kubernetes schemas, and the production binary as
//! a non-root user, in an empty chroot and in its image under podman.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use clap::Parser;
use http::Method;
use kubegate_double::Options;
use support::*;

async fn scrape(admin: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let text = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(text.status, 200);
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/parse_metrics.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &text.body)
        .await
        .unwrap();
    drop(stdin);
    let output = within("parser", child.wait_with_output()).await.unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics (pip install prometheus-client; scripts/test does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.rsplit_once(' ')
                .map(|(name, value)| (name.to_string(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

#[tokio::test]
async fn health_readiness_and_metrics_move_with_traffic() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--admin-address=127.0.0.1:0"]).await;
    let admin = kubegate.admin.expect("the admin port is bound");
    assert_eq!(get(&format!("http://{admin}/healthz")).await.status, 200);
    // Readiness needs an answer from the apiserver; kubegate asks for one.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    within("ready", async {
        while get(&format!("http://{admin}/readyz")).await.status != 200 {
            tick.tick().await;
        }
    })
    .await;
    assert_eq!(get(&format!("http://{admin}/nothing")).await.status, 404);

    let before = scrape(admin).await;
    let list = r#"kubegate_requests_total{code="200",decision="allow",verb="list"}"#;
    assert_eq!(before.get(list).copied().unwrap_or(0.0), 0.0);
    for _ in 0..3 {
        assert_eq!(
            get(&kubegate.url("/api/v1/namespaces/default/pods"))
                .await
                .status,
            200
        );
    }
    let refused = get(&kubegate.url("/api/v1/namespaces/default/pods/a%2Fb")).await;
    assert_eq!(refused.status, 400);
    let after = scrape(admin).await;
    assert_eq!(after[list], 3.0);
    assert_eq!(
        after[r#"kubegate_requests_total{code="400",decision="forbid",verb="get"}"#],
        1.0
    );
    assert!(after[r#"kubegate_request_duration_seconds_count{verb="list"}"#] >= 3.0);
    assert!(after["kubegate_upstream_connections_total{}"] >= 1.0);
    assert!(after.contains_key(r#"kubegate_credential_refreshes_total{outcome="failure"}"#));
}

#[tokio::test]
async fn an_unprotected_network_listener_is_refused_at_start() {
    let double = Double::start().await;
    // A TEST-NET address: refused before anything is bound.
    let error = Kubegate::try_start(&double.kubeconfig, &["--address=192.0.2.10"])
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("reachable from other machines")
            && message.contains("--access-token-file"),
        "{message}"
    );
    assert!(
        message.contains("--allow-unauthenticated-remote"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rotated_service_account_token_is_used_while_a_watch_stays_open() {
    let double = Double::with(Options::default(), Identity::Token).await;
    let account = double.path("serviceaccount");
    std::fs::create_dir(&account).unwrap();
    std::fs::copy(double.path("ca.crt"), account.join("ca.crt")).unwrap();
    std::fs::write(account.join("token"), "token-1").unwrap();
    std::fs::write(account.join("namespace"), "default").unwrap();
    // In-cluster: no kubeconfig, the service host and port, the account dir.
    let args = kubegate::cli::Args::try_parse_from([
        "kubegate",
        "--port=0",
        "--token-reload-interval=50ms",
        "--service-account-dir",
        account.to_str().unwrap(),
    ])
    .unwrap();
    let port = double.server.address().port().to_string();
    let env = kubegate::config::Env::from_pairs([
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", port.as_str()),
    ]);
    let config = kubegate::config::Config::load(&args, &env).await.unwrap();
    let proxy = std::sync::Arc::new(kubegate::Proxy::new(config).await.unwrap());
    let listener = kubegate::listen::Listener::bind(&kubegate::listen::Listen::Tcp(
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let kubegate::listen::Listener::Tcp(tcp) = &listener else {
        unreachable!()
    };
    let base = format!("http://{}", tcp.local_addr().unwrap());
    let serving = proxy.clone();
    let task = tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    assert_eq!(
        get(&format!("{base}/echo")).await.json()["user"]["username"],
        "token-user"
    );
    let rv = double.store().resource_version();
    let watch = send(
        Method::GET,
        &format!("{base}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"),
        &[],
        Bytes::new(),
    )
    .await;
    let mut events = Lines::new(watch);
    // The kubelet rotates the token; the old one stops working.
    std::fs::write(account.join("token"), "token-2").unwrap();
    double.server.state().revoke_token("token-1");
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    within("the new token in use", async {
        while get(&format!("{base}/echo")).await.json()["user"]["username"] != "rotated-user" {
            tick.tick().await;
        }
    })
    .await;
    double
        .store()
        .create("default", pod("after-rotation"))
        .unwrap();
    let event = events.next().await.expect("the watch is still open");
    assert!(event.contains("after-rotation"), "{event}");
    task.abort();
}

#[tokio::test]
async fn the_deploy_manifests_validate_against_the_kubernetes_schemas() {
    let validator = std::process::Command::new("sh")
        .args(["-c", "command -v kubernetes-validate"])
        .output()
        .unwrap();
    assert!(
        validator.status.success(),
        "kubernetes-validate is missing; pip install kubernetes-validate (scripts/test does)"
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/sidecar.yaml");
    let output = tokio::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .arg(&manifest)
        .output();
    let output = within("kubernetes-validate", output).await.unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{printed}");
    assert_eq!(
        printed.matches("INFO").count(),
        4,
        "four documents validated: {printed}"
    );
}

#[tokio::test]
async fn the_production_binary_is_static_and_serves_from_an_empty_chroot_by_name() {
    let binary = production_binary();
    let file = std::process::Command::new("file")
        .arg(&binary)
        .output()
        .expect("file(1) runs (apt install file; scripts/test does)");
    let described = String::from_utf8_lossy(&file.stdout);
    // Static and position-independent: no loader, no libraries, and ASLR
    // kept.
    assert!(described.contains("static-pie linked"), "{described}");
    let ldd = std::process::Command::new("ldd")
        .arg(&binary)
        .output()
        .unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    assert!(ldd.contains("statically linked"), "{ldd}");
    // A root holding the binary, /etc/hosts, a CA bundle and the
    // kubeconfig with its files: no libc, no NSS modules, no resolv.conf.
    let double = Double::start().await;
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(etc.join("ssl/certs")).unwrap();
    std::fs::write(etc.join("hosts"), "127.0.0.1 apiserver.test\n").unwrap();
    std::fs::copy(
        double.path("ca.crt"),
        etc.join("ssl/certs/ca-certificates.crt"),
    )
    .unwrap();
    std::fs::copy(&binary, root.path().join("kubegate")).unwrap();
    for name in ["ca.crt", "alice.crt", "alice.key"] {
        std::fs::copy(double.path(name), root.path().join(name)).unwrap();
    }
    let port = double.server.url().rsplit(':').next().unwrap().to_string();
    let by_name = format!("https://apiserver.test:{port}");
    let edited =
        double.kubeconfig_edited("by-name", Some(&by_name), &["tls-server-name: localhost"]);
    let inside = std::fs::read_to_string(edited)
        .unwrap()
        .replace(&format!("{}/", double.dir.path().display()), "/");
    std::fs::write(root.path().join("kubeconfig"), inside).unwrap();
    let mut command = tokio::process::Command::new("/usr/sbin/chroot");
    command
        .arg(root.path())
        .args(["/kubegate", "--kubeconfig=/kubeconfig", "-p", "0"]);
    let (_child, address) =
        spawn_serving(command, "kubegate did not start in the chroot (coreutils)").await;
    let pods = get(&format!("http://{address}/api/v1/namespaces/default/pods")).await;
    assert_eq!(pods.status, 200, "{}", String::from_utf8_lossy(&pods.body));
    assert_eq!(pods.json()["kind"], "PodList");
}

/// Runs `command` (kubegate, or a wrapper around it) with an empty
/// environment and waits for its start-up line: the child and the address
/// it serves on. `failed` (and what it wrote on stderr) is the panic if it
/// exits first.
async fn spawn_serving(
    mut command: tokio::process::Command,
    failed: &str,
) -> (tokio::process::Child, String) {
    command
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{failed}: cannot run it: {e}"));
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let address = within("start-up line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(address) = line.strip_prefix("Starting to serve on ") {
                return address.to_string();
            }
        }
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut said).await;
        }
        panic!("{failed}: {said}");
    })
    .await;
    (child, address)
}

/// Checks that process `pid` runs as user 65532 (the image's user).
fn assert_runs_as_65532(pid: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65532")),
        "{status}"
    );
}

/// The double, with its kubeconfig, certificates and keys made readable
/// by every user (as a mounted secret would be for user 65532).
fn readable_by_all(double: Double) -> Double {
    for entry in std::fs::read_dir(double.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(double.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    double
}

#[tokio::test]
async fn the_production_binary_runs_as_a_non_root_user_without_the_double() {
    let binary = production_binary();
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
            .unwrap();
    assert!(
        dockerfile.contains(PRODUCTION_BUILD),
        "the Dockerfile builds as scripts/test does"
    );
    // The production build carries no apiserver double.
    let demo = std::process::Command::new(&binary)
        .args(["demo", "-p", "0"])
        .output()
        .unwrap();
    assert!(!demo.status.success());
    assert!(
        String::from_utf8_lossy(&demo.stderr).contains("no apiserver double"),
        "{demo:?}"
    );
    // As the distroless image's user 65532, with a kubeconfig it can read.
    let double = readable_by_all(Double::start().await);
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(["--reuid=65532", "--regid=65532", "--clear-groups"])
        .arg(&binary)
        .arg(format!("--kubeconfig={}", double.kubeconfig.display()))
        .args(["-p", "0"]);
    let (child, address) = spawn_serving(
        command,
        "kubegate did not start as user 65532 (setpriv, util-linux)",
    )
    .await;
    assert_runs_as_65532(&child.id().unwrap().to_string());
    let pods = get(&format!("http://{address}/api/v1/namespaces/default/pods")).await;
    assert_eq!(pods.json()["kind"], "PodList");
}

#[tokio::test]
async fn rotated_client_certificate_files_are_presented_on_the_next_connection() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &["--token-reload-interval=20ms"]).await;
    assert_eq!(
        get(&kubegate.url("/echo")).await.json()["user"]["username"],
        "alice"
    );
    let mut events = watch_pods(&double, &kubegate).await;
    // The files are replaced (as a secret update or cert-manager would).
    double
        .pki
        .client("bob", &["ops"])
        .write(double.dir.path(), "alice")
        .unwrap();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    within("the new certificate presented", async {
        while new_connection_identity(&kubegate).await.1 != "bob" {
            tick.tick().await;
        }
    })
    .await;
    double
        .store()
        .create("default", pod("after-rotation"))
        .unwrap();
    assert!(
        events
            .next()
            .await
            .expect("the watch is still open")
            .contains("after-rotation")
    );
}

/// An upgrade through kubegate, which always opens a new connection: the
/// identity `/echo` saw, and when the request was sent and answered.
async fn new_connection_identity(
    kubegate: &Kubegate,
) -> (std::time::Instant, String, std::time::Instant) {
    let sent = std::time::Instant::now();
    let echo = call(
        Method::GET,
        &kubegate.url("/echo"),
        &[("connection", "upgrade"), ("upgrade", "websocket")],
        Bytes::new(),
    )
    .await;
    let user = echo.json()["user"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    (sent, user, std::time::Instant::now())
}

#[tokio::test]
async fn under_load_no_session_resumed_after_a_certificate_rotation_keeps_the_old_identity() {
    let double = Double::start().await;
    // A connect timeout far past any grace a cache-clearing timer could
    // give handshakes still in flight with the old certificate.
    let flags = ["--token-reload-interval=20ms", "--connect-timeout=300s"];
    let kubegate = std::sync::Arc::new(Kubegate::start(&double, &flags).await);
    let stats = &double.server.state().stats;
    let resumed = |stats: &kubegate_double::apiserver::Stats| {
        stats.resumed.load(std::sync::atomic::Ordering::Relaxed)
    };
    // Eight clients at once, each opening connection after connection
    // (with TLS 1.3 tickets to resume), while the files are replaced.
    let load = |count: usize| {
        let kubegate = kubegate.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(count);
            for _ in 0..count {
                seen.push(new_connection_identity(&kubegate).await);
            }
            seen
        })
    };
    let before: Vec<_> = (0..8).map(|_| load(40)).collect();
    within("sessions resumed before the rotation", async {
        while resumed(stats) == 0 {
            new_connection_identity(&kubegate).await;
        }
    })
    .await;
    double
        .pki
        .client("bob", &["ops"])
        .write(double.dir.path(), "alice")
        .unwrap();
    let after: Vec<_> = (0..8).map(|_| load(40)).collect();
    let mut seen = Vec::new();
    for task in before.into_iter().chain(after) {
        seen.extend(within("the load", task).await.unwrap());
    }
    // Once one connection has presented the new certificate, every
    // connection opened later does: none resumes a session of the old one.
    let first_bob = seen
        .iter()
        .filter(|(_, user, _)| user == "bob")
        .map(|(_, _, answered)| *answered)
        .min()
        .expect("the new certificate was presented");
    for (sent, user, _) in &seen {
        if *sent > first_bob {
            assert_eq!(
                user, "bob",
                "a connection made after the rotation kept the old identity"
            );
        }
    }
    // And the new certificate's own sessions are resumed.
    let resumed_after_load = resumed(stats);
    within("the new certificate's sessions resumed", async {
        while resumed(stats) < resumed_after_load + 8 {
            let (_, user, _) = new_connection_identity(&kubegate).await;
            assert_eq!(user, "bob");
        }
    })
    .await;
}

#[tokio::test]
async fn kubegate_serves_https_with_its_certificate_files() {
    let double = Double::start().await;
    let kubegate = Kubegate::start_tls(&double, &[]).await;
    let url = format!("https://127.0.0.1:{}/echo", kubegate.address.port());
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--cacert",
            double.path("ca.crt").to_str().unwrap(),
            &url,
        ])
        .output();
    let output = within("curl", output).await.expect("curl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let echo: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(echo["user"]["username"], "alice");
    // Plain HTTP to the TLS port gets nowhere.
    let plain = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}/api", kubegate.address.port()),
        ])
        .output();
    assert!(!within("curl", plain).await.unwrap().status.success());
}

#[tokio::test]
async fn a_network_address_needs_the_access_token_not_only_tls() {
    let double = Double::start().await;
    let (cert, key) = double
        .pki
        .server()
        .write(double.dir.path(), "serving")
        .unwrap();
    let tls = [
        "--address=192.0.2.10",
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-private-key-file",
        key.to_str().unwrap(),
    ];
    // TLS without client authentication authenticates nobody.
    let error = Kubegate::try_start(&double.kubeconfig, &tls)
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("TLS alone"), "{error}");
    // With the token as well, only binding can fail.
    let with_token = [&tls[..], &["--generate-access-token"]].concat();
    let error = Kubegate::try_start(&double.kubeconfig, &with_token)
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("cannot listen on 192.0.2.10"),
        "{error}"
    );
}

/// podman with its own throwaway storage, and the settings this machine
/// needs: its cgroups are v1 with a v2 hierarchy beside them ("hybrid"),
/// which crun refuses and runc takes, and its sandbox refuses raising a
/// limit past the hard one, which podman's default limits do.
fn podman(storage: &Path) -> std::process::Command {
    let mut command = std::process::Command::new("podman");
    command
        .arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .arg("--tmpdir")
        .arg(storage.join("tmp"))
        .args([
            "--storage-driver=vfs",
            "--runtime=runc",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ]);
    command
}

/// Removes the container when the test ends, however it ends.
struct Container<'a> {
    storage: &'a Path,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = podman(self.storage).args(["rm", "-f", &self.name]).output();
    }
}

#[tokio::test]
async fn the_image_runs_under_podman_as_user_65532_and_proxies() {
    production_binary();
    let storage = tempfile::tempdir().unwrap();
    let image =
        std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image"))
            .arg("--no-build")
            .arg(storage.path())
            .output()
            .expect("scripts/image runs");
    assert!(
        image.status.success(),
        "{}",
        String::from_utf8_lossy(&image.stderr)
    );
    let archive = String::from_utf8_lossy(&image.stdout).trim().to_string();
    let load = podman(storage.path())
        .args(["load", "-i", &archive])
        .output()
        .expect("podman runs; scripts/test installs it (with runc)");
    let loaded = String::from_utf8_lossy(&load.stdout).into_owned();
    assert!(
        load.status.success(),
        "podman load: {loaded}{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let reference = loaded
        .lines()
        .find_map(|line| line.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("podman load named no image: {loaded}"))
        .to_string();

    let double = readable_by_all(Double::start().await);
    let dir = double.dir.path().display().to_string();
    let container = Container {
        storage: storage.path(),
        name: format!("kubegate-test-{}", std::process::id()),
    };
    let run = podman(storage.path());
    let mut command = tokio::process::Command::new("env");
    command
        .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(run.get_program())
        .args(run.get_args())
        .args(["run", "--rm", "--name", &container.name, "--network=host"])
        .args(["--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"])
        .args(["-v", &format!("{dir}:{dir}:ro"), &reference])
        .arg(format!("--kubeconfig={}", double.kubeconfig.display()))
        .args(["-p", "0"]);
    let (_child, address) = spawn_serving(
        command,
        "the image did not start under podman (runc, cgroupfs, vfs; this machine allows it)",
    )
    .await;
    let pods = get(&format!("http://{address}/api/v1/namespaces/default/pods")).await;
    assert_eq!(pods.json()["kind"], "PodList");
    // The process in the container runs as the image's user.
    let inspect = podman(storage.path())
        .args(["inspect", "--format", "{{.State.Pid}}", &container.name])
        .output()
        .unwrap();
    assert_runs_as_65532(String::from_utf8_lossy(&inspect.stdout).trim());
}
