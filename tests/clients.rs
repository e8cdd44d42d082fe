//! Real clients through kubegate: curl, kubectl and the Python
//! `kubernetes` client. A missing client fails the test with the command
//! that installs it; nothing is skipped.

mod support;

use std::path::Path;
use std::process::Stdio;

use kubegate::config::Env;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// kubectl pointed at kubegate, with a throwaway home and no kubeconfig.
fn kubectl(home: &Path, kubegate: &Kubegate, args: &[&str]) -> Command {
    kubectl_at(home, &kubegate.url(""), args)
}

/// kubectl with `server` as its apiserver, a throwaway home and no kubeconfig.
fn kubectl_at(home: &Path, server: &str, args: &[&str]) -> Command {
    let mut command = program(
        "kubectl",
        "install kubectl from the Kubernetes apt repository or a cloud SDK",
    );
    command
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .arg(format!("--server={server}"))
        .args(args);
    command
}

/// Runs a `kubectl exec`, once more when kubectl's own race lost its
/// output: kubectl before 1.33 reads a WebSocket before it has made its
/// streams, and drops what arrives that early ("Unknown stream id",
/// kubernetes#131203), so a command that answers at once can lose its
/// output. Only that message of the client's is tried again.
async fn kubectl_exec(command: impl Fn() -> Command) -> std::process::Output {
    let mut tried = within("kubectl exec", command().output()).await.unwrap();
    if String::from_utf8_lossy(&tried.stderr).contains("Unknown stream id") {
        tried = within("kubectl exec", command().output()).await.unwrap();
    }
    tried
}

async fn output(mut command: Command) -> String {
    let output = within("client", command.output())
        .await
        .expect("client runs");
    assert!(
        output.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Spawns a long-running client and returns its stdout lines.
fn stream(mut command: Command) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>) {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command.spawn().expect("client runs");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn line_containing(lines: &mut Lines<BufReader<ChildStdout>>, text: &str) -> String {
    within(text, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the client ended before printing {text:?}");
    })
    .await
}

/// The local port kubectl port-forward says it listens on.
async fn forwarded_port(lines: &mut Lines<BufReader<ChildStdout>>) -> u16 {
    let line = line_containing(lines, "Forwarding from 127.0.0.1:").await;
    line.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// `kubectl get pods -w` sees `pod`, and `kubectl logs -f` follows its log
/// (which holds "line one") to a line appended now; the watch goes on.
async fn watch_and_follow(
    double: &Double,
    server: &str,
    pod: &str,
) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>) {
    let home = double.dir.path();
    let (watching, mut watched) = stream(kubectl_at(
        home,
        server,
        &["get", "pods", "--watch", "-o", "name"],
    ));
    line_containing(&mut watched, &format!("pod/{pod}")).await;
    let (_following, mut log) = stream(kubectl_at(home, server, &["logs", "-f", pod]));
    line_containing(&mut log, "line one").await;
    double.store().append_log("default", pod, "line two");
    line_containing(&mut log, "line two").await;
    (watching, watched)
}

#[tokio::test]
async fn curl_lists_and_watches() {
    let double = Double::start().await;
    double
        .store()
        .create("default", pod("seen-by-curl"))
        .unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let mut list = program("curl", "apt-get install curl");
    list.args(["-sSf", &kubegate.url("/api/v1/namespaces/default/pods")]);
    let list: serde_json::Value = serde_json::from_str(&output(list).await).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "seen-by-curl");

    let mut watch = program("curl", "apt-get install curl");
    watch.args([
        "-sSN",
        &kubegate.url("/api/v1/namespaces/default/pods?watch=true"),
    ]);
    let (_curl, mut lines) = stream(watch);
    line_containing(&mut lines, "seen-by-curl").await;
    double.store().create("default", pod("later")).unwrap();
    line_containing(&mut lines, "\"later\"").await;
}

#[tokio::test]
async fn kubectl_gets_watches_follows_applies_and_deletes() {
    let double = Double::start().await;
    double.store().create("default", pod("existing")).unwrap();
    double.store().append_log("default", "existing", "line one");
    let kubegate = Kubegate::start(&double, &[]).await;
    let home = double.dir.path();

    // The apiserver prints the table (Accept: …;as=Table), as kubectl asks.
    let table = output(kubectl(home, &kubegate, &["get", "pods"])).await;
    for column in [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "existing", "1/1", "Running",
    ] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    let wide = output(kubectl(home, &kubegate, &["get", "pods", "-o", "wide"])).await;
    assert!(wide.contains("NODE") && wide.contains("10.0.0.1"), "{wide}");
    let described = output(kubectl(home, &kubegate, &["describe", "pod", "existing"])).await;
    assert!(
        described.contains("Name:")
            && described.contains("existing")
            && described.contains("Running"),
        "{described}"
    );
    let yaml = output(kubectl(
        home,
        &kubegate,
        &["get", "pod", "existing", "-o", "yaml"],
    ))
    .await;
    assert!(
        yaml.contains("kind: Pod") && yaml.contains("name: existing"),
        "{yaml}"
    );

    let (_table_watch, mut table_lines) = stream(kubectl(home, &kubegate, &["get", "pods", "-w"]));
    let row = line_containing(&mut table_lines, "existing").await;
    assert!(row.contains("Running"), "{row}");
    let (_watching, mut watched) = watch_and_follow(&double, &kubegate.url(""), "existing").await;

    let manifest = double.path("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: applied\nspec:\n  containers:\n  - name: main\n    image: busybox\n",
    )
    .unwrap();
    let applied = output(kubectl(
        home,
        &kubegate,
        &[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(applied.contains("pod/applied created"), "{applied}");
    assert!(double.store().get("default", "applied").is_some());
    line_containing(&mut watched, "pod/applied").await;

    let deleted = output(kubectl(home, &kubegate, &["delete", "pod", "applied"])).await;
    assert!(deleted.contains("\"applied\" deleted"), "{deleted}");
    assert!(double.store().get("default", "applied").is_none());
}

#[tokio::test]
async fn the_python_kubernetes_client_lists_creates_and_watches() {
    let double = Double::start().await;
    double.store().create("default", pod("existing")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let probe = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output();
    assert!(
        probe.map(|o| o.status.success()).unwrap_or(false),
        "the Python kubernetes client is not installed; pip install kubernetes (scripts/test installs it)"
    );
    let mut python = program("python3", "install Python 3");
    python.args([
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/python_client.py"
        ),
        &kubegate.url(""),
    ]);
    let printed = output(python).await;
    assert!(printed.contains("listed existing"), "{printed}");
    assert!(printed.contains("event ADDED from-python"), "{printed}");
    assert!(printed.trim_end().ends_with("done"), "{printed}");
}

/// Random bytes from a simple generator (no extra crate for test data).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

async fn with_box() -> (Double, Kubegate) {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    (double, kubegate)
}

/// kubectl's two exec transports: WebSocket (default) and SPDY.
const EXEC_TRANSPORTS: [(&str, &str); 2] = [("websocket", "true"), ("spdy", "false")];

#[tokio::test]
async fn kubectl_exec_works_over_websocket_and_spdy() {
    let (double, kubegate) = with_box().await;
    let home = double.dir.path();
    let input = random_bytes(1 << 20, 0x9e3779b97f4a7c15);
    let input_file = double.path("stdin.bin");
    std::fs::write(&input_file, &input).unwrap();
    for (transport, websockets) in EXEC_TRANSPORTS {
        let mut cat = kubectl(home, &kubegate, &["exec", "-i", "box", "--", "cat"]);
        cat.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
            .stdin(std::fs::File::open(&input_file).unwrap());
        let output = within("kubectl exec", cat.output()).await.unwrap();
        assert!(
            output.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stdout == input,
            "{transport}: 1 MiB of stdin came back changed ({} bytes)",
            output.stdout.len()
        );

        let exit_args = [
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ];
        let output = kubectl_exec(|| {
            let mut exit = kubectl(home, &kubegate, &exit_args);
            exit.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets);
            exit
        })
        .await;
        assert_eq!(
            output.status.code(),
            Some(3),
            "{transport}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "out\n",
            "{transport}"
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("err\n"),
            "{transport}"
        );
    }
}

#[tokio::test]
async fn kubectl_attach_streams_stdin_and_stdout() {
    let (double, kubegate) = with_box().await;
    for (transport, websockets) in EXEC_TRANSPORTS {
        let mut attach = kubectl(double.dir.path(), &kubegate, &["attach", "-i", "box"]);
        attach
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = attach.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"attached\n")
            .await
            .unwrap();
        drop(stdin);
        let output = within("kubectl attach", child.wait_with_output())
            .await
            .unwrap();
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("attached"),
            "{transport}: {output:?}"
        );
    }
}

/// Sends `payload` through a local port and reads it back.
async fn round_trip(port: u16, payload: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.split();
    let mut echoed = vec![0u8; payload.len()];
    let (written, read) = tokio::join!(writer.write_all(payload), reader.read_exact(&mut echoed));
    written.unwrap();
    read.unwrap();
    echoed
}

#[tokio::test]
async fn kubectl_port_forward_works_over_tunneled_and_raw_spdy() {
    let (double, kubegate) = with_box().await;
    let echo = EchoServer::start().await;
    for (transport, websockets) in [("websocket (SPDY tunneled)", "true"), ("spdy", "false")] {
        let mut forward = kubectl(
            double.dir.path(),
            &kubegate,
            &["port-forward", "pod/box", &format!("0:{}", echo.port)],
        );
        forward.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets);
        let (_child, mut lines) = stream(forward);
        let local = forwarded_port(&mut lines).await;
        for n in 0..3u64 {
            let payload = random_bytes(256 * 1024, n + 1);
            assert!(
                within("sequential", round_trip(local, &payload)).await == payload,
                "{transport}: connection {n}"
            );
        }
        let concurrent = (0..4u64).map(|n| async move {
            let payload = random_bytes(128 * 1024, n + 100);
            assert!(
                round_trip(local, &payload).await == payload,
                "{transport}: concurrent {n}"
            );
        });
        within("concurrent", futures_util::future::join_all(concurrent)).await;
    }
}

/// kubegate multiplexing port-forward (the default), then relaying it:
/// the flags, and how many upstream sessions 71 connections cost.
/// kubegate's port-forward modes, and what the double sees of 71
/// port-forwards in each: multiplexed (one session), relayed by flag (one
/// each), and multiplexed in front of an apiserver that takes no SPDY
/// (both SPDY forms refused once, then every port-forward relayed).
const PORT_FORWARD_MODES: [(&[&str], bool, usize); 3] = [
    (&[], false, 1),
    (&["--port-forward-multiplex=false"], false, 71),
    (&[], true, 73),
];

/// The double for a port-forward mode, with the pod `box`.
async fn double_for(refuse_spdy: bool) -> Double {
    let options = kubegate_double::Options {
        refuse_spdy,
        ..Default::default()
    };
    let double = Double::with(options, Identity::Certificate).await;
    double.store().create("default", pod("box")).unwrap();
    double
}

#[tokio::test]
async fn the_python_client_execs_and_port_forwards() {
    for (flags, refuse_spdy, sessions) in PORT_FORWARD_MODES {
        let double = double_for(refuse_spdy).await;
        let kubegate = Kubegate::start(&double, flags).await;
        let echo = EchoServer::start().await;
        let mut python = program("python3", "install Python 3");
        python.args([
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/python_stream.py"
            ),
            &kubegate.url(""),
            "box",
            &echo.port.to_string(),
        ]);
        let printed = output(python).await;
        assert!(printed.contains("exec stdout from python"), "{printed}");
        assert!(printed.contains("exec stderr to-stderr"), "{printed}");
        assert!(printed.contains("exec exit 7"), "{printed}");
        assert!(printed.contains("port-forward ok 16384"), "{printed}");
        assert!(
            printed.contains("port-forward connections 70 of 70 byte-exact"),
            "{printed}"
        );
        assert_eq!(
            double.port_forward_sessions(),
            sessions,
            "{flags:?}, SPDY refused: {refuse_spdy}"
        );
    }
}

/// The npm packages the JavaScript tests use, installed by scripts/test.
fn node_modules() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_modules");
    assert!(
        dir.join(".bin/deno").exists(),
        "npm packages are missing; run `npm ci` in tests/clients (scripts/test does)"
    );
    dir
}

#[tokio::test]
async fn client_node_execs_and_port_forwards() {
    node_modules();
    for (flags, refuse_spdy, sessions) in PORT_FORWARD_MODES {
        let double = double_for(refuse_spdy).await;
        let kubegate = Kubegate::start(&double, flags).await;
        let echo = EchoServer::start().await;
        let mut node = program("node", "install Node.js");
        node.args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node_stream.mjs"),
            &kubegate.url(""),
            "box",
            &echo.port.to_string(),
        ]);
        let printed = output(node).await;
        assert!(printed.contains("exec stdout from node"), "{printed}");
        assert!(printed.contains("exec stderr to-stderr"), "{printed}");
        assert!(printed.contains("exec status Failure 4"), "{printed}");
        assert!(printed.contains("port-forward ok 100000"), "{printed}");
        assert!(
            printed.contains("port-forward connections 70 of 70 byte-exact"),
            "{printed}"
        );
        assert_eq!(
            double.port_forward_sessions(),
            sessions,
            "{flags:?}, SPDY refused: {refuse_spdy}"
        );
    }
}

fn deno(args: &[&str], token: Option<&str>) -> Command {
    deno_with(&[], args, token)
}

/// The Deno example with Deno's own `flags` (before the script) and the
/// example's `args`.
fn deno_with(flags: &[&str], args: &[&str], token: Option<&str>) -> Command {
    let mut command = Command::new(node_modules().join(".bin/deno"));
    command
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env("DENO_DIR", std::env::temp_dir().join("kubegate-deno-cache"))
        .env_remove("KUBEGATE_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .args(["run", "--allow-net", "--allow-env"])
        .args(flags)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/deno/kubegate.ts"
        ))
        .args(args);
    if let Some(token) = token {
        command.env("KUBEGATE_TOKEN", token);
    }
    command
}

#[tokio::test]
async fn the_deno_example_lists_follows_execs_and_port_forwards() {
    let (double, kubegate) = with_box().await;
    double.store().append_log("default", "box", "box log line");
    let echo = EchoServer::start().await;
    let printed = output(deno(
        &[&kubegate.url(""), "box", &echo.port.to_string()],
        None,
    ))
    .await;
    for line in [
        "pods box",
        "log box log line",
        "exec stdout from deno",
        "exec stderr to-stderr",
        "exec status Failure 6",
        "port-forward ok",
        "port-forward connections 70 of 70 byte-exact",
    ] {
        assert!(printed.contains(line), "{line:?} missing from {printed}");
    }
    assert_eq!(double.port_forward_sessions(), 1);
}

#[tokio::test]
async fn the_deno_example_uses_the_access_token() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    double.store().append_log("default", "box", "box log line");
    let token_file = double.path("access-token");
    std::fs::write(&token_file, "deno-secret").unwrap();
    let kubegate = Kubegate::start(
        &double,
        &["--access-token-file", token_file.to_str().unwrap()],
    )
    .await;
    let echo = EchoServer::start().await;
    let args = [kubegate.url(""), "box".to_string(), echo.port.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = output(deno(&args, Some("deno-secret"))).await;
    assert!(
        printed.contains("exec stdout from deno") && printed.contains("port-forward ok"),
        "{printed}"
    );

    let refused = within("deno", deno(&args, Some("wrong")).output())
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
}

/// Runs a client that must fail; its standard error.
async fn failure(mut command: Command) -> String {
    let output = within("client", command.output())
        .await
        .expect("client runs");
    assert!(
        !output.status.success(),
        "client succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn kubectl_reads_through_read_only_and_every_write_is_refused_with_the_reason() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    double.store().append_log("default", "box", "line one");
    let kubegate = Kubegate::start(&double, &["--read-only"]).await;
    let home = double.dir.path();

    let table = output(kubectl(home, &kubegate, &["get", "pods"])).await;
    assert!(table.contains("box"), "{table}");
    let _watching = watch_and_follow(&double, &kubegate.url(""), "box").await;

    let manifest = double.path("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: applied\nspec:\n  containers:\n  - name: main\n    image: busybox\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    let echo = EchoServer::start().await;
    let forward = format!("0:{}", echo.port);
    let refused: [&[&str]; 4] = [
        &["apply", "--validate=false", "-f", path],
        &["delete", "pod", "box"],
        &["exec", "box", "--", "echo", "hi"],
        &["port-forward", "pod/box", &forward],
    ];
    for args in refused {
        let stderr = failure(kubectl(home, &kubegate, args)).await;
        assert!(
            stderr.contains("forbidden: kubegate's policy does not let this proxy")
                && stderr.contains("--read-only"),
            "kubectl {args:?}: {stderr}"
        );
    }
    assert!(double.store().get("default", "applied").is_none());
    assert!(double.store().get("default", "box").is_some());
}

#[tokio::test]
async fn the_python_client_lists_through_read_only_and_its_create_is_refused() {
    let double = Double::start().await;
    double.store().create("default", pod("existing")).unwrap();
    let kubegate = Kubegate::start(&double, &["--read-only"]).await;
    let mut python = program("python3", "install Python 3");
    python.args([
        "-c",
        "import sys
from kubernetes import client
from kubernetes.client.rest import ApiException
configuration = client.Configuration()
configuration.host = sys.argv[1]
api = client.CoreV1Api(client.ApiClient(configuration))
print('listed', ','.join(p.metadata.name for p in api.list_namespaced_pod('default').items))
pod = client.V1Pod(metadata=client.V1ObjectMeta(name='new'), spec=client.V1PodSpec(containers=[client.V1Container(name='m', image='busybox')]))
try:
    api.create_namespaced_pod('default', pod)
    print('created')
except ApiException as refused:
    print('refused', refused.status, refused.reason)
",
        &kubegate.url(""),
    ]);
    let printed = output(python).await;
    assert!(printed.contains("listed existing"), "{printed}");
    assert!(printed.contains("refused 403 Forbidden"), "{printed}");
    assert!(double.store().get("default", "new").is_none());
}

#[tokio::test]
async fn a_pods_declared_port_answers_through_kubectl_port_forward() {
    let double = Double::start().await;
    let mut web = pod("web");
    web["spec"]["containers"][0]["ports"] = serde_json::json!([{ "containerPort": 80 }]);
    double.store().create("default", web).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let (_child, mut lines) = stream(kubectl(
        double.dir.path(),
        &kubegate,
        &["port-forward", "pod/web", "0:80"],
    ));
    let local = forwarded_port(&mut lines).await;
    let page = get(&format!("http://127.0.0.1:{local}/")).await;
    assert_eq!(page.status, 200);
    let text = String::from_utf8_lossy(&page.body).into_owned();
    assert!(text.contains("Hello from pod default/web"), "{text}");
}

#[tokio::test]
async fn the_root_lists_the_apiservers_paths() {
    let double = Double::start().await;
    let kubegate = Kubegate::start(&double, &[]).await;
    let root = get(&kubegate.url("/")).await;
    assert_eq!(root.status, 200);
    let paths = root.json()["paths"].clone();
    assert!(
        paths
            .as_array()
            .is_some_and(|p| p.contains(&serde_json::json!("/api"))),
        "{paths}"
    );
}

/// kubectl's everyday commands through kubegate: list, watch and follow,
/// exec, and a port-forward round trip.
async fn everyday_commands(double: &Double, server: &str, echo: &EchoServer) {
    let home = double.dir.path();
    let listed = output(kubectl_at(home, server, &["get", "pods", "-o", "name"])).await;
    assert!(listed.contains("pod/box"), "{listed}");
    double.store().append_log("default", "box", "line one");
    let _watch = watch_and_follow(double, server, "box").await;
    let said =
        kubectl_exec(|| kubectl_at(home, server, &["exec", "box", "--", "echo", "hi there"])).await;
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&said.stdout).trim(), "hi there");
    let (_child, mut lines) = stream(kubectl_at(
        home,
        server,
        &["port-forward", "pod/box", &format!("0:{}", echo.port)],
    ));
    let local = forwarded_port(&mut lines).await;
    let payload = random_bytes(64 * 1024, 7);
    assert!(within("port-forward", round_trip(local, &payload)).await == payload);
}

#[tokio::test]
async fn kubectl_works_through_http_and_socks_proxies_named_in_the_kubeconfig() {
    let (double, _) = with_box().await;
    let echo = EchoServer::start().await;
    let port = double.server.address().port();
    let tinyproxy = ProxyKind::Tinyproxy { credentials: None };
    let guarded = ProxyKind::Tinyproxy {
        credentials: Some(("alice", "s3cret")),
    };
    // socks5h hands the name to the proxy, which resolves it.
    for (kind, scheme, userinfo, host, seen) in [
        (
            tinyproxy,
            "http",
            "",
            "127.0.0.1",
            format!("CONNECT 127.0.0.1:{port}"),
        ),
        (
            guarded,
            "http",
            "alice:s3cret@",
            "127.0.0.1",
            format!("CONNECT 127.0.0.1:{port}"),
        ),
        (
            ProxyKind::Dante,
            "socks5",
            "",
            "127.0.0.1",
            format!(" 127.0.0.1.{port}\n"),
        ),
        (
            ProxyKind::Dante,
            "socks5h",
            "",
            "localhost",
            format!(" 127.0.0.1.{port}\n"),
        ),
    ] {
        let proxy = ForwardProxy::start(kind).await;
        let config = double.kubeconfig_edited(
            "proxied",
            Some(&format!("https://{host}:{port}")),
            &[&format!(
                "proxy-url: {scheme}://{userinfo}127.0.0.1:{}",
                proxy.port
            )],
        );
        let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
        everyday_commands(&double, &kubegate.url(""), &echo).await;
        let log = proxy.log();
        assert!(
            log.contains(&seen),
            "{kind:?} {scheme}: {seen:?} not in\n{log}"
        );
    }
}

#[tokio::test]
async fn kubectl_works_through_an_https_proxy_verified_with_the_clusters_ca() {
    let (double, _) = with_box().await;
    let echo = EchoServer::start().await;
    let proxy = ForwardProxy::start(ProxyKind::Tinyproxy { credentials: None }).await;
    let front = ForwardProxy::tls_front(proxy.port, &double.pki.server()).await;
    let proxy_url = format!("proxy-url: https://localhost:{}", front.port);
    let config = double.kubeconfig_edited("https-proxy", None, &[&proxy_url]);
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    everyday_commands(&double, &kubegate.url(""), &echo).await;
    let connect = format!("CONNECT 127.0.0.1:{}", double.server.address().port());
    assert!(proxy.log().contains(&connect), "{}", proxy.log());
}

#[tokio::test]
async fn the_environments_https_proxy_carries_kubectl_and_no_proxy_and_loopback_bypass_it() {
    let (double, _) = with_box().await;
    let echo = EchoServer::start().await;
    let squid = ForwardProxy::start(ProxyKind::Squid).await;
    let port = double.server.address().port();
    let by_name = double.kubeconfig_edited(
        "by-name",
        Some(&format!("https://{PROXIED_NAME}:{port}")),
        &["tls-server-name: localhost"],
    );
    let proxy = format!("http://127.0.0.1:{}", squid.port);
    let flags = ["--kubeconfig", by_name.to_str().unwrap()];
    let env = Env::from_pairs([("https_proxy", proxy.as_str())]);
    let kubegate = Kubegate::try_start_in(&env, &flags).await.unwrap();
    everyday_commands(&double, &kubegate.url(""), &echo).await;
    let connect = format!("CONNECT {PROXIED_NAME}:{port}");
    assert!(squid.log().contains(&connect), "{}", squid.log());
    drop(kubegate);

    // NO_PROXY names the apiserver: kubegate goes direct, where no resolver
    // but squid's knows the name.
    let env = Env::from_pairs([
        ("HTTPS_PROXY", proxy.as_str()),
        ("NO_PROXY", "10.0.0.0/8, .kubegate.test"),
    ]);
    let kubegate = Kubegate::try_start_in(&env, &flags).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 503, "{}", answer.status_message());
    let message = answer.status_message();
    assert!(
        message.contains(&format!(
            "cannot reach the apiserver at {PROXIED_NAME}:{port}: dns error"
        )),
        "{message}"
    );

    // A loopback apiserver is never proxied, even by a proxy that is down.
    let down = format!("http://127.0.0.1:{}", free_port());
    let env = Env::from_pairs([("HTTPS_PROXY", down.as_str())]);
    let flags = ["--kubeconfig", double.kubeconfig.to_str().unwrap()];
    let kubegate = Kubegate::try_start_in(&env, &flags).await.unwrap();
    assert_eq!(get(&kubegate.url("/api")).await.status, 200);
}

#[tokio::test]
async fn a_proxy_that_refuses_gets_an_error_naming_the_proxy() {
    let double = Double::start().await;
    let proxy = ForwardProxy::start(ProxyKind::Tinyproxy {
        credentials: Some(("alice", "s3cret")),
    })
    .await;
    let at = format!("127.0.0.1:{}", proxy.port);
    let config = double.kubeconfig_edited(
        "no-credentials",
        None,
        &[&format!("proxy-url: http://{at}")],
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api/v1/namespaces/default/pods")).await;
    assert_eq!(answer.status, 502);
    let message = answer.status_message();
    assert!(
        message.contains(&format!(
            "proxy {at} refused CONNECT: 407 Proxy Authentication Required"
        )),
        "{message}"
    );

    let closed = format!("127.0.0.1:{}", free_port());
    let config = double.kubeconfig_edited(
        "proxy-down",
        None,
        &[&format!("proxy-url: socks5://{closed}")],
    );
    let kubegate = Kubegate::try_start(&config, &[]).await.unwrap();
    let answer = get(&kubegate.url("/api")).await;
    assert_eq!(answer.status, 502);
    let message = answer.status_message();
    assert!(message.contains(&format!("proxy {closed}")), "{message}");
}

/// A copy of `double`'s kubeconfig whose cluster, user and context are all
/// called `name`, so that two can be merged.
fn renamed_kubeconfig(double: &Double, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&double.kubeconfig).unwrap();
    let path = double.path(&format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        text.replace(": double-user", ": double")
            .replace(": double", &format!(": {name}")),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn one_kubegate_serves_two_contexts_each_with_its_own_identity() {
    let first = Double::start().await;
    let second = Double::with(kubegate_double::Options::default(), Identity::Token).await;
    for (double, own) in [(&first, "only-in-one"), (&second, "only-in-two")] {
        double.store().create("default", pod("box")).unwrap();
        double.store().create("default", pod(own)).unwrap();
    }
    let kubeconfig = format!(
        "{}:{}",
        renamed_kubeconfig(&first, "one").display(),
        renamed_kubeconfig(&second, "two").display()
    );
    let log = first.path("audit.log");
    let env = Env::from_pairs([("KUBECONFIG", kubeconfig.as_str())]);
    let flags = [
        "--all-contexts",
        "--audit-log-path",
        log.to_str().unwrap(),
        "--admin-address=127.0.0.1:0",
    ];
    let kubegate = Kubegate::try_start_in(&env, &flags).await.unwrap();

    let listed = get(&kubegate.url("/clusters")).await.json();
    assert_eq!(listed["clusters"][0]["name"], "one");
    assert_eq!(listed["clusters"][1]["path"], "/clusters/two/");
    let rebound = call(
        http::Method::GET,
        &kubegate.url("/clusters"),
        &[("host", "attacker.example")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(rebound.status, 403, "the filters guard the list too");
    let home = first.dir.path();
    let echo = EchoServer::start().await;
    for (double, name, own, other, user) in [
        (&first, "one", "only-in-one", "only-in-two", "alice"),
        (&second, "two", "only-in-two", "only-in-one", "token-user"),
    ] {
        let server = kubegate.url(&format!("/clusters/{name}"));
        let pods = output(kubectl_at(home, &server, &["get", "pods", "-o", "name"])).await;
        assert!(
            pods.contains(own) && !pods.contains(other),
            "{name}: {pods}"
        );
        // Watch, logs -f, exec and port-forward under the prefix.
        everyday_commands(double, &server, &echo).await;
        let seen = get(&format!("{server}/echo")).await.json();
        assert_eq!(
            seen["user"]["username"], user,
            "{name} has its own identity"
        );
        assert_eq!(seen["path"], "/echo", "the prefix does not go upstream");
    }
    let ready = get(&format!(
        "http://{}/readyz?verbose",
        kubegate.admin.unwrap()
    ))
    .await;
    let text = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 200, "{text}");
    assert!(
        text.contains("[+]context:one ok\n[+]context:two ok\n"),
        "{text}"
    );
    let unknown = get(&kubegate.url("/clusters/three/api")).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.status_message().contains("GET /clusters"));
    assert_eq!(get(&kubegate.url("/api")).await.status, 404);

    // One apiserver gone: the other context serves on.
    drop(second);
    assert_eq!(get(&kubegate.url("/clusters/two/api")).await.status, 503);
    assert_eq!(get(&kubegate.url("/clusters/one/api")).await.status, 200);

    kubegate.shutdown().await;
    let events = std::fs::read_to_string(&log).unwrap();
    for name in ["one", "two"] {
        let tagged = format!("\"kubegate.io/context\":\"{name}\"");
        assert!(
            events.contains(&tagged),
            "{tagged} missing from the audit log"
        );
    }
}

/// The Deno example over `https://`: everything works, and kubegate's
/// counter shows which WebSocket handshake Deno used. Deno tries HTTP/1.1
/// first and sends an RFC 8441 extended CONNECT only when that fails (an
/// HTTP/2-only server), so against kubegate, which offers both, none of
/// its 72 WebSockets arrive over HTTP/2.
#[tokio::test]
async fn deno_over_https_opens_its_websockets_with_http1() {
    node_modules();
    let (double, _) = with_box().await;
    double.store().append_log("default", "box", "box log line");
    let kubegate = Kubegate::start_tls(&double, &[]).await;
    let echo = EchoServer::start().await;
    let ca = double.path("ca.crt");
    let base = format!("https://127.0.0.1:{}", kubegate.address.port());
    let printed = output(deno_with(
        &["--cert", ca.to_str().unwrap()],
        &[&base, "box", &echo.port.to_string()],
        None,
    ))
    .await;
    for line in [
        "exec stdout from deno",
        "port-forward ok",
        "port-forward connections 70 of 70 byte-exact",
    ] {
        assert!(printed.contains(line), "{line:?} missing from {printed}");
    }
    let over_http2 = kubegate
        .metric("kubegate_websockets_over_http2_total")
        .await;
    assert_eq!(over_http2, "0", "{printed}");
    assert_eq!(double.port_forward_sessions(), 1);
}
