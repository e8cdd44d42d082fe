//! The apiserver double: a small Kubernetes API server with real mutual TLS,
//! used by `kubegate demo`, the tests and the benchmark. It behaves like the
//! apiserver wherever kubegate can tell the difference.
//!
//! - [`pki`]: a throwaway CA and certificates.
//! - [`apiserver`]: TLS, client-certificate and token authentication, h1/h2.
//! - [`api`]: discovery, pods, watch, logs, and the test endpoints.
//! - [`store`]: pods, resourceVersions, events, logs.
//! - [`stream`]: exec, attach and port-forward over WebSocket and SPDY.

pub mod api;
pub mod apiserver;
pub mod pki;
pub mod store;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use apiserver::{ApiServer, Options, User};
pub use pki::{Issued, Pki};

use crate::cli::Args;
use crate::config::{Config, Env, StartupError};
use crate::listen::Listener;
use crate::{Proxy, shutdown};

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
    for (name, image) in [("nginx", "nginx:1.27"), ("busybox", "busybox:1.36")] {
        let pod = json!({
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": { "containers": [{ "name": name, "image": image }] },
        });
        if store.create("default", pod).is_ok() {
            store.append_log("default", name, &format!("{name} started"));
        }
    }
}

/// `kubegate demo`: the double with a fresh PKI, a kubeconfig for it, and
/// kubegate in front, on the usual flags (port 8001 unless `-p`).
///
/// # Errors
///
/// A [`StartupError`] if kubegate cannot start (e.g. the port is taken).
pub async fn run(args: &Args) -> Result<(), StartupError> {
    let dir = DemoDir::create().map_err(|e| {
        StartupError::Credential(format!("cannot create a directory for the demo PKI: {e}"))
    })?;
    let pki = Pki::new("kubegate-demo-ca");
    let double = ApiServer::start(&pki, Options::default())
        .await
        .map_err(|e| StartupError::Credential(format!("cannot start the apiserver double: {e}")))?;
    seed(&double.state().store);
    let ticker = tokio::spawn(append_log_lines(double.state().clone()));

    let kubeconfig = dir.0.join("kubeconfig");
    let write = || -> std::io::Result<()> {
        let ca = dir.0.join("ca.crt");
        std::fs::write(&ca, pki.ca_pem())?;
        let (cert, key) = pki
            .client("demo-admin", &["system:masters"])
            .write(&dir.0, "demo-admin")?;
        write_kubeconfig(
            &kubeconfig,
            &double.url(),
            &ca,
            KubeconfigUser::Certificate {
                cert: &cert,
                key: &key,
            },
        )
    };
    write()
        .map_err(|e| StartupError::Credential(format!("cannot write the demo kubeconfig: {e}")))?;

    let mut demo_args = args.clone();
    demo_args.kubeconfig = Some(kubeconfig.clone());
    demo_args.context = None;
    let config = Config::load(&demo_args, &Env::default()).await?;
    let listen = config.listen.clone();
    let proxy = Proxy::new(config).await?;
    let listener = Listener::bind(&listen).await?;
    if let Some(admin) = proxy.start_admin().await? {
        println!("Health and metrics: http://{admin}/healthz /readyz /metrics");
    }
    let base = format!("http://{listener}");
    println!(
        "kubegate demo: an apiserver double runs at {} with a throwaway CA; it only accepts\n\
         the client certificate of \"demo-admin\" (kubeconfig: {}).\n\
         kubegate holds that identity and serves the API at {base} with no credentials needed. Try:\n\
         \n  curl {base}/api/v1/namespaces/default/pods\
         \n  curl '{base}/api/v1/namespaces/default/pods?watch=true'\
         \n  curl '{base}/api/v1/namespaces/default/pods/nginx/log?follow=true'\
         \n  kubectl --server {base} get pods\
         \n  kubectl --server {base} get pods -w\
         \n\nCtrl-C stops both.",
        double.url(),
        kubeconfig.display(),
    );
    let stop = shutdown::signal();
    println!("Starting to serve on {listener}");
    proxy.serve(listener, stop).await;
    ticker.abort();
    Ok(())
}

/// Appends a line to every demo pod's log every two seconds, so that
/// `logs -f` has something to follow.
async fn append_log_lines(state: Arc<apiserver::State>) {
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

/// A private directory for the demo's keys, removed when dropped.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("kubegate-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(DemoDir(path))
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
