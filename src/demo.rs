//! `kubegate demo` (the binary's, with the default `demo` feature): the
//! apiserver double from `kubegate-double` with a fresh PKI, a kubeconfig
//! for it, and kubegate in front on the usual flags (port 8001 unless `-p`).

use std::path::PathBuf;

use kubegate::cli::Args;
use kubegate::error::StartupError;
use kubegate_double::{ApiServer, KubeconfigUser, Options, Pki, append_log_lines, seed};

/// The running double and what kubegate needs to reach it; stops it when
/// dropped.
pub struct Demo {
    double: ApiServer,
    dir: DemoDir,
    ticker: tokio::task::JoinHandle<()>,
}

impl Demo {
    /// Starts the double with the demo's pods and writes a kubeconfig that
    /// holds the only identity it accepts.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] if the double cannot start or its files cannot be
    /// written.
    pub async fn start() -> Result<Demo, StartupError> {
        let dir = DemoDir::create().map_err(|e| {
            StartupError::Credential(format!("cannot create a directory for the demo PKI: {e}"))
        })?;
        let pki = Pki::new("kubegate-demo-ca");
        let double = ApiServer::start(&pki, Options::default())
            .await
            .map_err(|e| {
                StartupError::Credential(format!("cannot start the apiserver double: {e}"))
            })?;
        seed(&double.state().store);
        let ticker = tokio::spawn(append_log_lines(double.state().clone()));
        let demo = Demo {
            double,
            dir,
            ticker,
        };
        demo.write_kubeconfig(&pki).map_err(|e| {
            StartupError::Credential(format!("cannot write the demo kubeconfig: {e}"))
        })?;
        Ok(demo)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.0.join("kubeconfig")
    }

    fn write_kubeconfig(&self, pki: &Pki) -> std::io::Result<()> {
        let ca = self.dir.0.join("ca.crt");
        std::fs::write(&ca, pki.ca_pem())?;
        let (cert, key) = pki
            .client("demo-admin", &["system:masters"])
            .write(&self.dir.0, "demo-admin")?;
        let user = KubeconfigUser::Certificate {
            cert: &cert,
            key: &key,
        };
        kubegate_double::write_kubeconfig(&self.kubeconfig(), &self.double.url(), &ca, user)
    }

    /// The command line with the demo's kubeconfig in place of the user's.
    pub fn args(&self, args: &Args) -> Args {
        let mut args = args.clone();
        args.kubeconfig = Some(self.kubeconfig());
        args.context = None;
        args
    }

    /// What to try, for kubegate serving at `base`.
    pub fn banner(&self, base: &str) -> String {
        format!(
            "kubegate demo: an apiserver double runs at {} with a throwaway CA; it only accepts\n\
             the client certificate of \"demo-admin\" (kubeconfig: {}).\n\
             kubegate holds that identity and serves the API at {base} with no credentials needed. Try:\n\
             \n  curl {base}/api/v1/namespaces/default/pods\
             \n  curl '{base}/api/v1/namespaces/default/pods?watch=true'\
             \n  curl '{base}/api/v1/namespaces/default/pods/nginx/log?follow=true'\
             \n  kubectl --server {base} get pods\
             \n  kubectl --server {base} get pods -w\
             \n\nCtrl-C stops both.",
            self.double.url(),
            self.kubeconfig().display(),
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.ticker.abort();
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
