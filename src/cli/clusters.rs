//! Which apiservers kubegate serves and who it is there: the kubeconfig,
//! its contexts, kubectl's global flags that override it, and the pod's
//! service account.

use secrecy::SecretString;
use std::path::PathBuf;

use super::DEFAULT_SERVICE_ACCOUNT_DIR;
use super::value;

/// The apiservers and kubegate's identity there.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterFlags {
    /// If true, enables automatically appending the kube context server path
    /// to each request.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false, display_order = 13)]
    pub append_server_path: bool,

    /// Path to the kubeconfig file to use. Default: $KUBECONFIG (several files
    /// merged), then ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH", global = true, display_order = 14)]
    pub kubeconfig: Option<PathBuf>,

    /// kubegate: serve several kubeconfig contexts from one process, each
    /// under /clusters/<context>/ (comma-separated names); GET /clusters
    /// lists them.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["context", "cluster", "user", "all_contexts"], global = true, display_order = 15)]
    pub contexts: Vec<String>,

    /// kubegate: serve every context of the kubeconfig, as --contexts does.
    #[arg(long, conflicts_with_all = ["context", "cluster", "user"], num_args = 0..=1, default_missing_value = "true", global = true, display_order = 16)]
    pub all_contexts: bool,

    /// The name of the kubeconfig context to use.
    #[arg(long, global = true, display_order = 17)]
    pub context: Option<String>,

    /// The name of the kubeconfig cluster to use.
    #[arg(long, global = true, display_order = 18)]
    pub cluster: Option<String>,

    /// The name of the kubeconfig user to use.
    #[arg(long, global = true, display_order = 19)]
    pub user: Option<String>,

    /// kubegate: where the in-cluster service-account token, ca.crt and
    /// namespace are read from when there is no kubeconfig.
    #[arg(long, env = "KUBEGATE_SERVICE_ACCOUNT_DIR", default_value = DEFAULT_SERVICE_ACCOUNT_DIR, value_name = "DIR", global = true, display_order = 74)]
    pub service_account_dir: PathBuf,

    /// kubectl's global flags that override the kubeconfig.
    #[command(flatten)]
    pub overrides: Overrides,

    /// kubectl's global flags that mean nothing to a proxy.
    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

/// kubectl's global flags that override the chosen cluster and user of the
/// kubeconfig, as client-go's `ConfigOverrides` do; with `--server` they
/// also work with no kubeconfig at all.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// The address and port of the Kubernetes API server (overrides the
    /// kubeconfig; works without one).
    #[arg(short = 's', long, global = true, display_order = 20)]
    pub server: Option<String>,

    /// Path to a cert file for the certificate authority.
    #[arg(long, value_name = "PATH", global = true, display_order = 21)]
    pub certificate_authority: Option<String>,

    /// If true, the server's certificate will not be checked for validity.
    /// This will make your HTTPS connections insecure.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false, display_order = 22)]
    pub insecure_skip_tls_verify: bool,

    /// Server name to use for server certificate validation.
    #[arg(long, global = true, display_order = 23)]
    pub tls_server_name: Option<String>,

    /// Bearer token for authentication to the API server.
    #[arg(long, global = true, hide_env_values = true, value_parser = value::secret, display_order = 24)]
    pub token: Option<SecretString>,

    /// Path to a client certificate file for TLS.
    #[arg(long, value_name = "PATH", global = true, display_order = 25)]
    pub client_certificate: Option<String>,

    /// Path to a client key file for TLS.
    #[arg(long, value_name = "PATH", global = true, display_order = 26)]
    pub client_key: Option<String>,

    /// Username for basic authentication to the API server.
    #[arg(long, global = true, display_order = 27)]
    pub username: Option<String>,

    /// Password for basic authentication to the API server.
    #[arg(long, global = true, value_parser = value::secret, display_order = 28)]
    pub password: Option<SecretString>,

    /// Username to impersonate for the operation.
    #[arg(long = "as", value_name = "USER", global = true, display_order = 29)]
    pub as_user: Option<String>,

    /// Group to impersonate for the operation; repeat for several.
    #[arg(
        long = "as-group",
        value_name = "GROUP",
        global = true,
        display_order = 30
    )]
    pub as_group: Vec<String>,

    /// UID to impersonate for the operation.
    #[arg(long = "as-uid", value_name = "UID", global = true, display_order = 31)]
    pub as_uid: Option<String>,
}

/// kubectl's global flags that mean nothing to a proxy: accepted, since
/// scripts pass them to `kubectl proxy`, with a warning.
#[derive(Debug, Clone, clap::Args)]
pub struct IgnoredFlags {
    /// kubectl's: accepted for scripts, no effect on a proxy (a warning).
    #[arg(short = 'n', long, global = true, hide = true)]
    pub namespace: Option<String>,

    /// kubectl's: accepted for scripts, no effect on a proxy (a warning).
    #[arg(long, global = true, hide = true)]
    pub request_timeout: Option<String>,

    /// kubectl's: accepted for scripts, no effect on a proxy (a warning).
    #[arg(long, global = true, hide = true)]
    pub cache_dir: Option<String>,

    /// kubectl's: accepted for scripts, no effect on a proxy (a warning).
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub match_server_version: Option<String>,

    /// kubectl's: accepted for scripts, no effect on a proxy (a warning).
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub warnings_as_errors: Option<String>,

    /// kubectl's: accepted for scripts, no effect on a proxy (a warning);
    /// kubegate passes the client's own `Accept-Encoding` through.
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub disable_compression: Option<String>,

    /// kubectl's: accepted for scripts, no effect (a warning).
    #[arg(long, global = true, hide = true)]
    pub log_flush_frequency: Option<String>,

    /// kubectl's: accepted for scripts, no effect (a warning).
    #[arg(long, global = true, hide = true)]
    pub profile: Option<String>,

    /// kubectl's: accepted for scripts, no effect (a warning).
    #[arg(long, global = true, hide = true)]
    pub profile_output: Option<String>,

    /// kubectl's: accepted for scripts, no effect (a warning).
    #[arg(long, global = true, hide = true)]
    pub vmodule: Option<String>,
}
