//! Real clients through kubegate: curl, kubectl and the Python
//! `kubernetes` client. A missing client fails the test with the command
//! that installs it; nothing is skipped.

mod support;

use std::path::Path;
use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// A command, failing the test with `install` if the program is missing.
fn program(name: &str, install: &str) -> Command {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; {install} (scripts/test installs it)"
    );
    let mut command = Command::new(name);
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// kubectl pointed at kubegate, with a throwaway home and no kubeconfig.
fn kubectl(home: &Path, kubegate: &Kubegate, args: &[&str]) -> Command {
    let mut command = program(
        "kubectl",
        "install kubectl from the Kubernetes apt repository or a cloud SDK",
    );
    command
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .arg(format!("--server={}", kubegate.url("")))
        .args(args);
    command
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

    let table = output(kubectl(home, &kubegate, &["get", "pods"])).await;
    assert!(
        table.contains("NAME") && table.contains("existing"),
        "{table}"
    );

    let (_watching, mut watched) = stream(kubectl(
        home,
        &kubegate,
        &["get", "pods", "--watch", "-o", "name"],
    ));
    line_containing(&mut watched, "pod/existing").await;

    let (_following, mut log) = stream(kubectl(home, &kubegate, &["logs", "-f", "existing"]));
    line_containing(&mut log, "line one").await;
    double.store().append_log("default", "existing", "line two");
    line_containing(&mut log, "line two").await;

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
