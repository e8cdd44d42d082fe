//! The `Authorization` header kubegate sends, kept fresh: a fixed token, a
//! token file re-read when it changes (the kubelet rotates service-account
//! tokens about hourly), or an exec credential plugin re-run before its
//! token expires. Requests read the current header without a lock; one task
//! owns the refreshing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use http::{HeaderValue, Uri};
use kube_client::config::ExecConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::settings::{ClientIdentity, CredentialSource, parse_identity};
use crate::error::StartupError;
use crate::lifecycle::Lifecycle;
use crate::telemetry::UpstreamCounters;

/// How long before expiry an exec plugin is run again.
const EXEC_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long to wait before retrying a failed refresh.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The current credential header, and the task that keeps it fresh.
pub struct Credentials {
    header: Arc<ArcSwapOption<HeaderValue>>,
    /// Where refreshes that worked and that failed are counted.
    refreshes: UpstreamCounters,
    /// Where a fresh credential comes from, for a reload after a 401.
    reload: Reload,
    /// One reload at a time, and when the last one ran: a 401 burst runs
    /// the plugin once, and a token the apiserver keeps refusing does not
    /// run it more than once per [`RELOAD_SPACING`].
    reloading: tokio::sync::Mutex<Option<std::time::Instant>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

/// The least time between two reloads after 401s.
const RELOAD_SPACING: std::time::Duration = std::time::Duration::from_secs(5);

/// What a reload after a 401 does.
enum Reload {
    Nothing,
    TokenFile(PathBuf),
    Exec(Box<ExecConfig>, Uri),
}

impl Drop for Credentials {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
    }
}

impl Credentials {
    /// Loads the credential once (so that a broken one fails at start-up)
    /// and starts refreshing it. An exec plugin may also hand back a client
    /// certificate, returned here for the TLS configuration.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming the file or plugin and the fix.
    pub async fn start(
        source: &CredentialSource,
        server: &Uri,
        reload_interval: Duration,
        refreshes: &UpstreamCounters,
        lifecycle: &Lifecycle,
    ) -> Result<(Credentials, Option<ClientIdentity>), StartupError> {
        let header = Arc::new(ArcSwapOption::empty());
        let mut identity = None;
        let mut reload = Reload::Nothing;
        let refresher = match source {
            CredentialSource::None => None,
            CredentialSource::Bearer(token) => {
                header.store(Some(Arc::new(bearer(token.expose_secret())?)));
                None
            }
            CredentialSource::Basic(user, password) => {
                let pair = format!("{user}:{}", password.expose_secret());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                header.store(Some(Arc::new(sensitive(&format!("Basic {encoded}"))?)));
                None
            }
            CredentialSource::TokenFile(path) => {
                let token = read_token_file(path).map_err(StartupError::Credential)?;
                header.store(Some(Arc::new(bearer(&token)?)));
                reload = Reload::TokenFile(path.clone());
                Some(lifecycle.spawn(watch_token_file(
                    path.clone(),
                    reload_interval,
                    header.clone(),
                    refreshes.clone(),
                )))
            }
            CredentialSource::Exec(exec) => {
                let output = run_exec(exec, server)
                    .await
                    .map_err(StartupError::Credential)?;
                identity = output.identity;
                if let Some(token) = &output.token {
                    header.store(Some(Arc::new(bearer(token.expose_secret())?)));
                }
                reload = Reload::Exec(exec.clone(), server.clone());
                Some(lifecycle.spawn(refresh_exec(
                    (**exec).clone(),
                    server.clone(),
                    output.expires,
                    header.clone(),
                    refreshes.clone(),
                )))
            }
        };
        Ok((
            Credentials {
                header,
                refreshes: refreshes.clone(),
                reload,
                reloading: tokio::sync::Mutex::new(None),
                refresher,
            },
            identity,
        ))
    }

    /// The header to send now, if any. Lock-free.
    pub fn header(&self) -> Option<HeaderValue> {
        self.header.load().as_deref().cloned()
    }

    /// The apiserver answered 401 to `sent`: load a fresh credential now, so
    /// that the next request carries it (client-go drops its cached token on
    /// 401 for the same reason). Runs only on this rare path, never per
    /// request; concurrent callers share one reload.
    pub async fn rejected(&self, sent: Option<&HeaderValue>) {
        let mut last = self.reloading.lock().await;
        if self.header().as_ref() != sent {
            // Another request reloaded while this one waited.
            return;
        }
        if last.is_some_and(|at| at.elapsed() < RELOAD_SPACING) {
            // The fresh credential is refused too; running the plugin again
            // at once would only storm it.
            return;
        }
        *last = Some(std::time::Instant::now());
        let fresh = match &self.reload {
            Reload::Nothing => return,
            Reload::TokenFile(path) => read_token_file(path),
            Reload::Exec(exec, server) => run_exec(exec, server).await.and_then(|output| {
                output
                    .token
                    .map(|t| t.expose_secret().to_string())
                    .ok_or_else(|| "the exec credential plugin returned no token".to_string())
            }),
        };
        match fresh.map(|token| bearer(&token)) {
            Ok(Ok(value)) => {
                self.header.store(Some(Arc::new(value)));
                self.refreshes.refreshed(true);
            }
            Ok(Err(error)) => {
                self.refreshes.refreshed(false);
                tracing::warn!(%error, "cannot use the reloaded token");
            }
            Err(error) => {
                self.refreshes.refreshed(false);
                tracing::warn!(%error, "cannot reload the credential after a 401");
            }
        }
    }
}

fn sensitive(value: &str) -> Result<HeaderValue, StartupError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        StartupError::Credential(
            "the token contains characters that cannot be sent in a header; check the token".into(),
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn bearer(token: &str) -> Result<HeaderValue, StartupError> {
    sensitive(&format!("Bearer {token}"))
}

fn read_token_file(path: &PathBuf) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(format!(
            "token file {} is empty; write the token into it",
            path.display()
        )),
        Err(e) => Err(format!(
            "token file {}: {}; check the kubeconfig's tokenFile or the mounted service account",
            path.display(),
            crate::error::io_reason(&e)
        )),
    }
}

/// Re-reads the token file by path every interval (the kubelet swaps a
/// symlink, so an open handle would keep the old token). A failed read
/// keeps the last good token.
async fn watch_token_file(
    path: PathBuf,
    interval: Duration,
    header: Arc<ArcSwapOption<HeaderValue>>,
    refreshes: UpstreamCounters,
) {
    loop {
        tokio::time::sleep(interval).await;
        match read_token_file(&path).map(|token| bearer(&token)) {
            Ok(Ok(value)) => {
                if header.load().as_deref() != Some(&value) {
                    header.store(Some(Arc::new(value)));
                    refreshes.refreshed(true);
                    tracing::info!(file = %path.display(), "token file changed; using the new token");
                }
            }
            Ok(Err(error)) => {
                refreshes.refreshed(false);
                tracing::warn!(%error, "ignoring the new token");
            }
            Err(error) => {
                refreshes.refreshed(false);
                tracing::warn!(%error, "keeping the last good token");
            }
        }
    }
}

/// Runs the exec plugin again shortly before its token expires; on
/// failure, keeps the old token and retries.
async fn refresh_exec(
    exec: ExecConfig,
    server: Uri,
    mut expires: Option<jiff::Timestamp>,
    header: Arc<ArcSwapOption<HeaderValue>>,
    refreshes: UpstreamCounters,
) {
    loop {
        // A token without an expiry is refreshed only after a 401.
        let Some(at) = expires else { return };
        let now = jiff::Timestamp::now();
        let wait = if at > now {
            at.duration_since(now)
                .unsigned_abs()
                .saturating_sub(EXEC_REFRESH_MARGIN)
        } else {
            Duration::ZERO
        };
        tokio::time::sleep(wait).await;
        match run_exec(&exec, &server).await {
            Ok(output) => {
                if let Some(token) = output.token
                    && let Ok(value) = bearer(token.expose_secret())
                {
                    header.store(Some(Arc::new(value)));
                }
                expires = output.expires;
                refreshes.refreshed(true);
                tracing::info!("exec credential plugin refreshed the token");
            }
            Err(error) => {
                refreshes.refreshed(false);
                tracing::warn!(%error, "exec credential plugin failed; keeping the last token");
                expires = Some(jiff::Timestamp::now() + RETRY_AFTER_FAILURE + EXEC_REFRESH_MARGIN);
            }
        }
    }
}

/// What an exec plugin returned.
struct ExecOutput {
    token: Option<SecretString>,
    expires: Option<jiff::Timestamp>,
    identity: Option<ClientIdentity>,
}

#[derive(Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

/// Runs an exec credential plugin as client-go does: its own environment
/// plus `KUBERNETES_EXEC_INFO`, no stdin, stdout parsed as an
/// `ExecCredential`, stderr left to the terminal.
async fn run_exec(exec: &ExecConfig, server: &Uri) -> Result<ExecOutput, String> {
    let command = exec
        .command
        .as_deref()
        .ok_or("the exec credential plugin has no command; set users[].user.exec.command")?;
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1beta1".into());
    let mut spec = serde_json::json!({ "interactive": false });
    if exec.provide_cluster_info {
        spec["cluster"] = serde_json::json!({ "server": server.to_string() });
    }
    let info =
        serde_json::json!({ "apiVersion": api_version, "kind": "ExecCredential", "spec": spec });
    let mut process = tokio::process::Command::new(command);
    process
        .args(exec.args.iter().flatten())
        .env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for name in exec.drop_env.iter().flatten() {
        process.env_remove(name);
    }
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            process.env(name, value);
        }
    }
    let hint = exec
        .install_hint
        .as_deref()
        .unwrap_or("check that it is installed and on PATH");
    let output = tokio::time::timeout(Duration::from_secs(120), process.output())
        .await
        .map_err(|_| format!("exec credential plugin {command} did not finish within 120s"))?
        .map_err(|e| {
            format!(
                "exec credential plugin {command} could not be run ({}); {hint}",
                crate::error::io_reason(&e)
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "exec credential plugin {command} failed ({}); run it by hand to see why",
            output.status
        ));
    }
    let credential: ExecCredential = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!("exec credential plugin {command} printed no ExecCredential JSON ({e})")
    })?;
    let status = credential
        .status
        .ok_or_else(|| format!("exec credential plugin {command} returned no status"))?;
    let expires = match &status.expiration_timestamp {
        Some(text) => Some(text.parse::<jiff::Timestamp>().map_err(|e| {
            format!("exec credential plugin {command} gave a bad expirationTimestamp ({e})")
        })?),
        None => None,
    };
    let identity = match (&status.client_certificate_data, &status.client_key_data) {
        (Some(cert), Some(key)) => {
            let origin = format!("exec credential plugin {command}");
            Some(
                parse_identity(cert.as_bytes(), &origin, key.as_bytes(), &origin)
                    .map_err(|e| e.to_string())?,
            )
        }
        _ => None,
    };
    if status.token.is_none() && identity.is_none() {
        return Err(format!(
            "exec credential plugin {command} returned neither a token nor a client certificate"
        ));
    }
    Ok(ExecOutput {
        token: status.token.map(SecretString::from),
        expires,
        identity,
    })
}
