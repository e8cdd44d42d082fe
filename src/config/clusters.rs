//! The apiservers: the kubeconfig files, the contexts served (one, or one
//! per name under `/clusters/`), kubectl's global flags over them, or the
//! pod's service account.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube_client::config::KubeConfigOptions;

use super::{Env, Problems};
use crate::cli::ClusterFlags;
use crate::error::StartupError;
use crate::upstream::settings::{self, Network, UpstreamSettings};

/// How to reach and authenticate to each apiserver.
#[derive(Debug)]
pub(crate) struct Clusters {
    /// One unnamed, or one per context with `--contexts`.
    pub upstreams: Vec<(String, UpstreamSettings)>,
    /// Whether the apiservers are served under `/clusters/<context>/`.
    pub named: bool,
}

pub(super) async fn settings(
    flags: &ClusterFlags,
    env: &Env,
    network: &Arc<Network>,
    problems: &mut Problems,
) -> Option<Clusters> {
    warn_of_ignored_flags(flags);
    let named = flags.all_contexts || !flags.contexts.is_empty();
    let mut upstreams = problems.check(upstreams(flags, env, network, named).await)?;
    if !flags.append_server_path {
        for (_, upstream) in &mut upstreams {
            upstream.server_path.clear();
        }
    }
    Some(Clusters { upstreams, named })
}

async fn upstreams(
    flags: &ClusterFlags,
    env: &Env,
    network: &Arc<Network>,
    named: bool,
) -> Result<Vec<(String, UpstreamSettings)>, StartupError> {
    let paths = match kubeconfig_paths(flags, env) {
        // `--server` alone is enough, as for kubectl.
        Err(StartupError::NoKubeconfig) if flags.overrides.server.is_some() => Some(Vec::new()),
        found => found?,
    };
    let overrides = &flags.overrides;
    let Some(paths) = paths else {
        if named {
            return Err(StartupError::flag(
                "contexts",
                "needs a kubeconfig that holds the contexts; pass --kubeconfig",
            ));
        }
        let upstream = in_cluster(&flags.service_account_dir, env, network)?;
        return Ok(vec![(String::new(), upstream)]);
    };
    if !named {
        let chosen = KubeConfigOptions {
            context: flags.context.clone(),
            cluster: flags.cluster.clone(),
            user: flags.user.clone(),
        };
        let upstream = settings::from_kubeconfig(&paths, &chosen, overrides, network).await?;
        return Ok(vec![(String::new(), upstream)]);
    }
    let names = match flags.all_contexts {
        true => settings::context_names(&paths)?,
        false => flags.contexts.clone(),
    };
    if names.is_empty() {
        return Err(StartupError::flag(
            "all-contexts",
            "the kubeconfig has no contexts; add one or serve a single cluster",
        ));
    }
    let mut upstreams = Vec::with_capacity(names.len());
    for name in names {
        let chosen = KubeConfigOptions {
            context: Some(name.clone()),
            ..KubeConfigOptions::default()
        };
        let upstream = settings::from_kubeconfig(&paths, &chosen, overrides, network).await?;
        upstreams.push((name, upstream));
    }
    Ok(upstreams)
}

/// kubectl's global flags that mean nothing to a proxy: accepted (scripts
/// pass them to `kubectl proxy`) with a warning.
fn warn_of_ignored_flags(flags: &ClusterFlags) {
    let ignored = &flags.ignored;
    let given = [
        ("namespace", ignored.namespace.is_some()),
        ("request-timeout", ignored.request_timeout.is_some()),
        ("cache-dir", ignored.cache_dir.is_some()),
        (
            "match-server-version",
            ignored.match_server_version.is_some(),
        ),
        ("warnings-as-errors", ignored.warnings_as_errors.is_some()),
        ("disable-compression", ignored.disable_compression.is_some()),
        ("log-flush-frequency", ignored.log_flush_frequency.is_some()),
        ("profile", ignored.profile.is_some()),
        ("profile-output", ignored.profile_output.is_some()),
        ("vmodule", ignored.vmodule.is_some()),
    ];
    for (flag, _) in given.iter().filter(|(_, given)| *given) {
        tracing::warn!("--{flag} has no effect on a proxy; ignored");
    }
}

/// The pod's service account, where the environment says kubegate runs in
/// a pod.
fn in_cluster(
    dir: &Path,
    env: &Env,
    network: &Arc<Network>,
) -> Result<UpstreamSettings, StartupError> {
    let (Some(host), Some(port)) = (
        env.get("KUBERNETES_SERVICE_HOST"),
        env.get("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(StartupError::NoKubeconfig);
    };
    settings::in_cluster(dir, host, port, network)
}

/// The kubeconfig files to read, or `None` for the in-cluster account.
fn kubeconfig_paths(flags: &ClusterFlags, env: &Env) -> Result<Option<Vec<PathBuf>>, StartupError> {
    if let Some(path) = &flags.kubeconfig {
        return Ok(Some(vec![path.clone()]));
    }
    if let Some(list) = env.get("KUBECONFIG") {
        // Like client-go: files in the list that don't exist are skipped.
        let paths: Vec<PathBuf> = std::env::split_paths(list).filter(|p| p.exists()).collect();
        if !paths.is_empty() {
            return Ok(Some(paths));
        }
    }
    if let Some(home) = env.get("HOME") {
        let default = Path::new(home).join(".kube").join("config");
        if default.exists() {
            return Ok(Some(vec![default]));
        }
    }
    if env.get("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(None);
    }
    Err(StartupError::NoKubeconfig)
}
