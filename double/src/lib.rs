//! kubegate-double: a small Kubernetes API server with real mutual TLS, used
//! by `kubegate demo`, kubegate's tests and its benchmark. It behaves like
//! the apiserver wherever kubegate can tell the difference, and knows
//! nothing of kubegate: it is a library of its own, so that the proxy's
//! production build carries none of it.
//!
//! - [`pki`]: a throwaway CA and certificates.
//! - [`apiserver`]: TLS, client-certificate and token authentication, h1/h2.
//! - [`api`]: discovery, pods, watch, logs, and the test endpoints.
//! - [`store`]: pods, resourceVersions, events, logs.
//! - [`stream`]: exec, attach and port-forward over WebSocket and SPDY.
//! - [`table`]: pods as the `Table` kubectl prints.

pub mod api;
pub mod apiserver;
pub mod pki;
pub mod store;
pub mod stream;
pub mod table;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use apiserver::{ApiServer, Options, User};
pub use pki::{Issued, Pki};

/// How a kubeconfig written by [`write_kubeconfig`] authenticates.
pub enum KubeconfigUser<'a> {
    /// Client certificate and key files.
    Certificate {
        /// PEM certificate file.
        cert: &'a Path,
        /// PEM key file.
        key: &'a Path,
    },
    /// A bearer token.
    Token(&'a str),
    /// A token file.
    TokenFile(&'a Path),
}

/// Writes a one-context kubeconfig (`context: double`) for `server`.
///
/// # Errors
///
/// The I/O error.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: KubeconfigUser<'_>,
) -> std::io::Result<()> {
    let user = match user {
        KubeconfigUser::Certificate { cert, key } => {
            format!(
                "client-certificate: {}\n    client-key: {}",
                cert.display(),
                key.display()
            )
        }
        KubeconfigUser::Token(token) => format!("token: {token}"),
        KubeconfigUser::TokenFile(file) => format!("tokenFile: {}", file.display()),
    };
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: double
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: double-user
  user:
    {user}
contexts:
- name: double
  context:
    cluster: double
    user: double-user
    namespace: default
current-context: double
",
        ca = ca.display()
    );
    pki::write_private(path, text.as_bytes())
}

/// Adds the demo's pods (with a few log lines each) to `store`.
pub fn seed(store: &store::Store) {
    for (name, image, ports) in [
        (
            "nginx",
            "nginx:1.27",
            json!([{ "name": "http", "containerPort": 80, "protocol": "TCP" }]),
        ),
        ("busybox", "busybox:1.36", json!([])),
    ] {
        let pod = json!({
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": { "containers": [{ "name": name, "image": image, "ports": ports }] },
        });
        if store.create("default", pod).is_ok() {
            store.append_log("default", name, &format!("{name} started"));
        }
    }
}

/// Appends a line to every demo pod's log every two seconds, so that
/// `logs -f` has something to follow.
pub async fn append_log_lines(state: Arc<apiserver::State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        for name in ["nginx", "busybox"] {
            state.store.append_log(
                "default",
                name,
                &format!("{} {name}: tick {n}", store::now()),
            );
        }
    }
}
