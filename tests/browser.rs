//! Browser users, in Debian's Chromium driven by playwright-core: a page on
//! an allowed origin uses the API (fetch, a followed log, exec and
//! port-forward over WebSocket); a page on another origin is refused and the
//! apiserver hears nothing; the access token is required when set; and a
//! DNS-rebinding name is refused. The page is `examples/browser/`.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use serde_json::Value;
use support::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/browser");

/// Opens `url` in Chromium and evaluates `expressions` in the page; returns
/// the page load's status and each result.
async fn browse(map_host: Option<&str>, url: &str, expressions: &[&str]) -> (u16, Vec<Value>) {
    match map_host {
        Some(host) => browse_with(&["--map", host], url, expressions).await,
        None => browse_with(&[], url, expressions).await,
    }
}

/// [`browse`] with `tests/clients/browser.mjs`'s own flags.
async fn browse_with(flags: &[&str], url: &str, expressions: &[&str]) -> (u16, Vec<Value>) {
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser.mjs");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed; apt-get install chromium (scripts/test does)"
    );
    assert!(
        runner
            .with_file_name("node_modules/playwright-core")
            .exists(),
        "playwright-core is missing; run `npm ci` in tests/clients (scripts/test does)"
    );
    let mut command = tokio::process::Command::new("node");
    command.arg(&runner).args(flags);
    command
        .arg(url)
        .args(expressions)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = within("chromium", command.output())
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty());
    let load: Value = serde_json::from_slice(lines.next().expect("a load line")).unwrap();
    let results = lines.map(|l| serde_json::from_slice(l).unwrap()).collect();
    (load["status"].as_u64().unwrap_or(0) as u16, results)
}

fn value(result: &Value) -> &Value {
    assert_eq!(result["ok"], true, "{result}");
    &result["value"]
}

fn error(result: &Value) -> String {
    assert_eq!(result["ok"], false, "expected a failure: {result}");
    result["error"].as_str().unwrap().to_string()
}

const LIST: &str = "window.kubegateExample.listPods()";
const EXEC: &str =
    "window.kubegateExample.exec('box', ['sh', '-c', 'tr a-z A-Z'], 'hello from chromium')";
const LOG: &str = "window.kubegateExample.followLog('box', 1)";

fn port_forward(port: u16) -> String {
    format!("window.kubegateExample.portForward('box', {port}, 'round trip')")
}

async fn setup(flags: &[&str]) -> (Double, Kubegate, Site) {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    double.store().append_log("default", "box", "box log line");
    let site = Site::serve(Path::new(EXAMPLE)).await;
    let origin = format!(r"--accept-origins=^http://127\.0\.0\.1:{}$", site.port);
    let mut all = vec![origin.as_str()];
    all.extend_from_slice(flags);
    let kubegate = Kubegate::start(&double, &all).await;
    (double, kubegate, site)
}

fn page(site: &Site, kubegate: &Kubegate, token: Option<&str>) -> String {
    let mut url = format!(
        "http://127.0.0.1:{}/index.html?kubegate={}",
        site.port,
        kubegate.url("")
    );
    if let Some(token) = token {
        url.push_str("&token=");
        url.push_str(token);
    }
    url
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_lists_follows_execs_and_port_forwards() {
    let (_double, kubegate, site) = setup(&[]).await;
    let echo = EchoServer::start().await;
    let forward = port_forward(echo.port);
    let (status, results) = browse(
        None,
        &page(&site, &kubegate, None),
        &[LIST, LOG, EXEC, &forward],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(value(&results[0]), &serde_json::json!(["box"]));
    assert_eq!(value(&results[1]), &serde_json::json!(["box log line"]));
    let exec = value(&results[2]);
    assert_eq!(exec["stdout"], "HELLO FROM CHROMIUM");
    assert_eq!(exec["status"]["status"], "Success");
    assert_eq!(value(&results[3]), "round trip");
}

#[tokio::test]
async fn a_page_on_another_origin_is_refused_and_the_apiserver_hears_nothing() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &[]).await;
    let site = Site::serve(Path::new(EXAMPLE)).await;
    let stats = &double.server.state().stats;
    let before = stats.requests.load(Ordering::Acquire);
    // Requests a browser sends without an Origin: a no-cors fetch and an
    // <img> (blind, but a followed log would hold a stream open).
    let base = "new URLSearchParams(location.search).get('kubegate')";
    let no_cors = format!(
        "fetch({base} + '/api/v1/namespaces/default/pods', {{mode: 'no-cors'}}).then(r => r.type)"
    );
    let image = format!(
        "new Promise(done => Object.assign(new Image(), {{onload: () => done('loaded'), onerror: () => done('failed'), src: {base} + '/api/v1/namespaces/default/pods/box/log?follow=true'}}))"
    );
    let (status, results) = browse(
        None,
        &page(&site, &kubegate, None),
        &[LIST, EXEC, &no_cors, &image],
    )
    .await;
    assert_eq!(status, 200, "the attacker's page itself loads");
    assert!(error(&results[0]).contains("Failed to fetch"));
    assert!(error(&results[1]).contains("refused"));
    assert_eq!(value(&results[2]), "opaque");
    assert_eq!(value(&results[3]), "failed");
    assert_eq!(
        stats.requests.load(Ordering::Acquire),
        before,
        "nothing reached the apiserver"
    );
    assert_eq!(stats.open_streams.load(Ordering::Acquire), 0);
}

#[tokio::test]
async fn with_an_access_token_only_the_page_that_sends_it_gets_in() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "page-secret\n").unwrap();
    let (_double, kubegate, site) =
        setup(&["--access-token-file", token_file.path().to_str().unwrap()]).await;
    let (_, with) = browse(
        None,
        &page(&site, &kubegate, Some("page-secret")),
        &[LIST, EXEC],
    )
    .await;
    assert_eq!(value(&with[0]), &serde_json::json!(["box"]));
    assert_eq!(value(&with[1])["stdout"], "HELLO FROM CHROMIUM");

    let (_, without) = browse(None, &page(&site, &kubegate, None), &[LIST, EXEC]).await;
    let refused = error(&without[0]);
    assert!(
        refused.contains("401") && refused.contains("access token"),
        "{refused}"
    );
    assert!(error(&without[1]).contains("refused"));
}

#[tokio::test]
async fn a_dns_rebinding_name_is_refused() {
    let (double, kubegate, _site) = setup(&[]).await;
    let before = double.server.state().stats.requests.load(Ordering::Acquire);
    let url = format!(
        "http://rebind.example:{}/api/v1/namespaces/default/pods",
        kubegate.address.port()
    );
    let (status, _) = browse(Some("rebind.example"), &url, &[]).await;
    assert_eq!(status, 403);
    assert_eq!(
        double.server.state().stats.requests.load(Ordering::Acquire),
        before
    );
}

#[tokio::test]
async fn a_page_served_by_www_is_same_origin_and_needs_no_flag() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let kubegate = Kubegate::start(&double, &["--www", EXAMPLE]).await;
    let (status, results) = browse(None, &kubegate.url("/static/index.html"), &[LIST, EXEC]).await;
    assert_eq!(status, 200);
    assert_eq!(value(&results[0]), &serde_json::json!(["box"]));
    assert_eq!(value(&results[1])["stdout"], "HELLO FROM CHROMIUM");
}

/// Waits in the page until `condition` (a JavaScript expression) holds.
fn until(condition: &str) -> String {
    format!(
        "await new Promise((resolve) => {{ const check = () => ({condition}) ? resolve(true) : setTimeout(check, 20); check(); }})"
    )
}

/// The text on the console's terminal screen.
const SCREEN: &str = "(() => { const b = window.kubegateConsole.term.buffer.active; let text = ''; for (let i = 0; i < b.length; i++) text += b.getLine(i).translateToString(true) + '\\n'; return text; })()";

#[tokio::test]
async fn the_console_runs_a_shell_on_a_terminal_resizes_it_and_shows_the_exit_status() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    double.store().append_log("default", "box", "box log line");
    let kubegate = Kubegate::start(&double, &["--www", EXAMPLE]).await;
    let ready = until("window.kubegateConsole?.pod() === 'box'");
    let logged = until("document.getElementById('log').textContent.includes('box log line')");
    let typed = until(&format!("{SCREEN}.includes('kube42gate')"));
    let exited = until("window.kubegateConsole.status().includes('exited with status 3')");
    let (status, results) = browse(
        None,
        &kubegate.url("/static/index.html"),
        &[
            &ready,
            &logged,
            "(await window.kubegateConsole.connect(), window.kubegateConsole.status())",
            // A terminal: the shell sees one (test -t), and echoes what is typed.
            "(window.kubegateConsole.term.input('test -t 0 && echo kube$((40+2))gate\\r'), true)",
            &typed,
            "(window.kubegateConsole.term.resize(100, 30), true)",
            "(window.kubegateConsole.term.input('exit 3\\r'), true)",
            &exited,
            SCREEN,
        ],
    )
    .await;
    assert_eq!(status, 200);
    for result in &results[..8] {
        value(result);
    }
    assert_eq!(value(&results[2]), "connected to box");
    let screen = value(&results[8]).as_str().unwrap().to_string();
    assert!(
        screen.contains("echo kube$((40+2))gate"),
        "typed text echoed: {screen}"
    );
    assert!(
        screen.contains("[process exited with status 3]"),
        "{screen}"
    );
    assert_eq!(
        double.server.state().stats.terminal.get(),
        Some((100, 30)),
        "the double saw the resize"
    );
}

/// The console, and sessions recorded into `dir` with `extra`.
fn console_recording<'a>(dir: &'a Path, extra: &'a str) -> [&'a str; 5] {
    let dir = dir.to_str().unwrap();
    ["--www", EXAMPLE, "--record-sessions-dir", dir, extra]
}

/// A shell opened in the console is recorded; the console's Recordings
/// view lists it and asciinema-player plays it to the end.
#[tokio::test]
async fn the_console_plays_a_recorded_shell_to_the_end() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    let recordings = double.path("recordings");
    let flags = console_recording(&recordings, "--serve-recordings");
    let kubegate = Kubegate::start(&double, &flags).await;
    let ready = until("window.kubegateConsole?.pod() === 'box'");
    let typed = until(&format!("{SCREEN}.includes('kube42gate')"));
    let exited = until("window.kubegateConsole.status().includes('exited with status 3')");
    let listed = until("document.querySelectorAll('#recording-list tr').length === 1");
    let ended = "await new Promise((resolve) => { const p = window.kubegateConsole.player(); p.addEventListener('ended', () => resolve(true)); p.play(); })";
    let (status, results) = browse(
        None,
        &kubegate.url("/static/index.html"),
        &[
            &ready,
            "(await window.kubegateConsole.connect(), true)",
            "(window.kubegateConsole.term.input('echo kube$((40+2))gate\\r'), true)",
            &typed,
            "(window.kubegateConsole.term.input('exit 3\\r'), true)",
            &exited,
            "(document.getElementById('recordings').open = true, true)",
            &listed,
            "document.querySelector('#recording-list tr').textContent",
            "(await window.kubegateConsole.play(document.querySelector('#recording-list tr').dataset.name), true)",
            ended,
            "document.querySelector('#player .ap-term, #player pre').textContent",
            "document.querySelectorAll('#player .ap-overlay-error').length",
        ],
    )
    .await;
    assert_eq!(status, 200);
    for result in &results[..11] {
        value(result);
    }
    let row = value(&results[8]).as_str().unwrap().to_string();
    assert!(
        row.contains("default/box") && row.contains("sh") && row.contains("complete"),
        "{row}"
    );
    let screen = value(&results[11]).as_str().unwrap().to_string();
    assert!(
        screen.contains("kube42gate"),
        "the player's last screen: {screen}"
    );
    assert_eq!(value(&results[12]), 0, "no error overlay");
}

/// Chromium opens a secure WebSocket on the HTTP/2 connection it already
/// has when the server offers RFC 8441; kubegate's counter shows whether it
/// did.
#[tokio::test]
async fn chromium_runs_exec_and_port_forward_as_websockets_over_http2() {
    let double = Double::start().await;
    double.store().create("default", pod("box")).unwrap();
    // The exec is recorded too: a WebSocket over HTTP/2 is read as any.
    let recordings = double.path("recordings");
    let flags = console_recording(&recordings, "--record-non-interactive");
    let kubegate = Kubegate::start_tls(&double, &flags).await;
    let echo = EchoServer::start().await;
    let forward = port_forward(echo.port);
    let url = format!(
        "https://127.0.0.1:{}/static/index.html",
        kubegate.address.port()
    );
    let (status, results) = browse_with(&["--insecure"], &url, &[LIST, EXEC, &forward]).await;
    assert_eq!(status, 200);
    assert_eq!(value(&results[0]), &serde_json::json!(["box"]));
    assert_eq!(value(&results[1])["stdout"], "HELLO FROM CHROMIUM");
    assert_eq!(value(&results[2]), "round trip");
    assert_eq!(
        kubegate
            .metric("kubegate_websockets_over_http2_total")
            .await,
        "2"
    );
    // Counted when the session has ended, which the page need not wait for.
    let complete = "kubegate_recordings_total{status=\"complete\"}";
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
    within("the exec's recording", async {
        while kubegate.metric(complete).await != "1" {
            tick.tick().await;
        }
    })
    .await;
    let day = std::fs::read_dir(&recordings)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let cast = std::fs::read_dir(day.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(cast.path()).unwrap();
    assert!(text.contains("HELLO FROM CHROMIUM"), "{text}");
}
