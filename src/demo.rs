//! `kubegate demo` (the binary's, with the default `demo` feature): the
//! apiserver double from `kubegate-double` with a fresh PKI, a kubeconfig
//! for it, and kubegate in front on the usual flags (port 8001 unless `-p`).

use std::path::PathBuf;

use kubegate::cli::Args;
use kubegate::error::StartupError;
use kubegate_double::{ApiServer, KubeconfigUser, Options, Pki, append_log_lines, seed};

/// The browser console (`examples/browser/`), built into the demo so that
/// `kubegate demo` serves it under `--www-prefix` with no files beside it.
const CONSOLE: [(&str, &[u8]); 7] = [
    (
        "index.html",
        include_bytes!("../examples/browser/index.html"),
    ),
    (
        "kubegate.js",
        include_bytes!("../examples/browser/kubegate.js"),
    ),
    (
        "vendor/xterm.mjs",
        include_bytes!("../examples/browser/vendor/xterm.mjs"),
    ),
    (
        "vendor/xterm.css",
        include_bytes!("../examples/browser/vendor/xterm.css"),
    ),
    (
        "vendor/addon-fit.mjs",
        include_bytes!("../examples/browser/vendor/addon-fit.mjs"),
    ),
    (
        "vendor/asciinema-player.min.js",
        include_bytes!("../examples/browser/vendor/asciinema-player.min.js"),
    ),
    (
        "vendor/asciinema-player.css",
        include_bytes!("../examples/browser/vendor/asciinema-player.css"),
    ),
];

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
        demo.write_console().map_err(|e| {
            StartupError::Credential(format!("cannot write the demo's browser console: {e}"))
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

    fn write_console(&self) -> std::io::Result<()> {
        for (name, bytes) in CONSOLE {
            let path = self.dir.0.join("www").join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)?;
        }
        Ok(())
    }

    /// The command line with the demo's kubeconfig in place of the user's,
    /// and the browser console as `--www` unless one was given.
    pub fn args(&self, args: &Args) -> Args {
        let mut args = args.clone();
        args.clusters.kubeconfig = Some(self.kubeconfig());
        args.clusters.context = None;
        if args.listening.www.is_none() {
            args.listening.www = Some(self.dir.0.join("www"));
        }
        // Shells opened in the demo are recorded, for the console to play.
        let recording = &mut args.recording;
        if recording.record_sessions_dir.is_none() {
            recording.record_sessions_dir = Some(self.dir.0.join("recordings"));
            recording.serve_recordings = true;
        }
        args
    }

    /// What to try, for kubegate serving at `base` with `args` (the
    /// console is under `--www-prefix` unless `--www` was given).
    pub fn banner(&self, base: &str, args: &Args) -> String {
        let k = format!("kubectl --server {base}");
        let mut tries = vec![
            (format!("{k} get pods -w"), "list and watch"),
            (format!("{k} logs -f nginx"), "follow a log"),
            (format!("{k} exec -it busybox -- sh"), "a shell in a pod"),
            (
                format!("{k} port-forward pod/nginx 8080:80"),
                "then: curl localhost:8080",
            ),
        ];
        if args.listening.www.as_ref() == Some(&self.dir.0.join("www")) {
            let console = format!("open {base}{}", args.listening.www_prefix);
            tries.push((
                console,
                "the browser console: pods, logs, a terminal, recordings",
            ));
        }
        if on_path("deno") {
            let deno = format!(
                "deno eval 'console.log((await (await fetch(\"{base}/api/v1/namespaces/default/pods\")).json()).items.map(p => p.metadata.name))'"
            );
            tries.push((deno, "from Deno"));
        }
        let width = tries
            .iter()
            .map(|(command, _)| command.len())
            .max()
            .unwrap_or(0);
        let tries: String = tries
            .iter()
            .map(|(command, what)| format!("\n  {command:width$}  # {what}"))
            .collect();
        format!(
            "kubegate demo: an apiserver double runs at {double} with a throwaway CA and accepts only\n\
             the client certificate of \"demo-admin\" (kubeconfig: {kubeconfig}). kubegate holds that\n\
             identity and serves the API at {base}, no credentials needed. Try:\n{tries}\n\nCtrl-C stops both.",
            double = self.double.url(),
            kubeconfig = self.kubeconfig().display(),
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
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
