//! The command line: `kubectl proxy`'s flags, names and defaults first, then
//! kubegate's own. Only clap lives here; [`crate::config`] gives the strings
//! their types.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default of `--accept-hosts`: loopback names only (kubectl's).
pub const DEFAULT_ACCEPT_HOSTS: &str = r"^localhost$,^127\.0\.0\.1$,^\[::1\]$";

/// The in-cluster service-account directory.
pub const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `--version`: which build this is, since only the default build has the
/// `demo` command.
const VERSION: &str = if cfg!(feature = "demo") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("KUBEGATE_COMMIT"),
        ", with the demo apiserver double)"
    )
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("KUBEGATE_COMMIT"),
        ", production build)"
    )
};

const ABOUT: &str = "Creates a proxy server or application-level gateway between localhost and \
the Kubernetes API server, like `kubectl proxy`, but safe to leave exec, attach and \
port-forward on.";

const AFTER_HELP: &str = "\
Examples:
  # Serve the API on http://127.0.0.1:8001 with the current kubeconfig context
  kubegate

  # Try it without a cluster: a built-in apiserver double behind kubegate
  kubegate demo

  # Serve on a random port; the line 'Starting to serve on ...' names it
  kubegate --port=0

  # Serve only the pods API, and static files from ./web under /static/
  kubegate --accept-paths='^/api/v1/namespaces/[^/]+/pods' --www=./web

  # Serve on a unix socket, readable by this user only
  kubegate --unix-socket=/tmp/kubegate.sock

Differences from kubectl proxy are listed in the README.";

/// `kubegate`: an authenticating reverse proxy for the Kubernetes API.
#[derive(Debug, Clone, Parser)]
#[command(name = "kubegate", version = VERSION, about = ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Run something other than the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The port on which to run the proxy. Set to 0 to pick a random port.
    #[arg(short = 'p', long, default_value_t = 8001, global = true)]
    pub port: u16,

    /// The IP address on which to serve on.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    pub address: String,

    /// Unix socket on which to run the proxy (mode 0600).
    #[arg(short = 'u', long, value_name = "PATH", global = true)]
    pub unix_socket: Option<PathBuf>,

    /// Regular expressions for hosts that the proxy should accept
    /// (comma-separated; matched against the Host header without its port).
    #[arg(long, default_value = DEFAULT_ACCEPT_HOSTS, global = true)]
    pub accept_hosts: String,

    /// Regular expressions for paths that the proxy should accept.
    #[arg(long, default_value = "^.*", global = true)]
    pub accept_paths: String,

    /// Regular expressions for paths that the proxy should reject. Paths
    /// specified here will be rejected even if accepted by --accept-paths.
    /// kubegate's default is empty (kubectl's rejects exec and attach).
    #[arg(long, default_value = "", global = true)]
    pub reject_paths: String,

    /// Regular expressions for HTTP methods that the proxy should reject
    /// (example --reject-methods='POST,PUT,PATCH'). Upgrades (exec, attach,
    /// port-forward) count as POST.
    #[arg(long, default_value = "^$", global = true)]
    pub reject_methods: String,

    /// Prefix to serve the proxied API under.
    #[arg(long, default_value = "/", global = true)]
    pub api_prefix: String,

    /// Also serve static files from the given directory under the specified
    /// prefix.
    #[arg(short = 'w', long, value_name = "DIR", global = true)]
    pub www: Option<PathBuf>,

    /// Prefix to serve static files under, if static file directory is
    /// specified.
    #[arg(short = 'P', long, default_value = "/static/", global = true)]
    pub www_prefix: String,

    /// If true, disable request filtering in the proxy. This is dangerous, and
    /// can leave you vulnerable to XSRF attacks, when used with an accessible
    /// port.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub disable_filter: bool,

    /// keepalive specifies the keep-alive period for an active network
    /// connection to the apiserver (e.g. 30s). 0 uses the default (15s); a
    /// negative value disables keep-alive.
    #[arg(long, default_value = "0", allow_hyphen_values = true, global = true)]
    pub keepalive: String,

    /// If true, enables automatically appending the kube context server path
    /// to each request.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub append_server_path: bool,

    /// Path to the kubeconfig file to use. Default: $KUBECONFIG (several files
    /// merged), then ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// kubegate: serve several kubeconfig contexts from one process, each
    /// under /clusters/<context>/ (comma-separated names); GET /clusters
    /// lists them.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["context", "cluster", "user", "all_contexts"], global = true)]
    pub contexts: Vec<String>,

    /// kubegate: serve every context of the kubeconfig, as --contexts does.
    #[arg(long, conflicts_with_all = ["context", "cluster", "user"], num_args = 0..=1, default_missing_value = "true", global = true)]
    pub all_contexts: bool,

    /// The name of the kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// The name of the kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,

    /// The name of the kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,

    /// The address and port of the Kubernetes API server (overrides the
    /// kubeconfig; works without one).
    #[arg(short = 's', long, global = true)]
    pub server: Option<String>,

    /// Path to a cert file for the certificate authority.
    #[arg(long, value_name = "PATH", global = true)]
    pub certificate_authority: Option<String>,

    /// If true, the server's certificate will not be checked for validity.
    /// This will make your HTTPS connections insecure.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub insecure_skip_tls_verify: bool,

    /// Server name to use for server certificate validation.
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,

    /// Bearer token for authentication to the API server.
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,

    /// Path to a client certificate file for TLS.
    #[arg(long, value_name = "PATH", global = true)]
    pub client_certificate: Option<String>,

    /// Path to a client key file for TLS.
    #[arg(long, value_name = "PATH", global = true)]
    pub client_key: Option<String>,

    /// Username for basic authentication to the API server.
    #[arg(long, global = true)]
    pub username: Option<String>,

    /// Password for basic authentication to the API server.
    #[arg(long, global = true)]
    pub password: Option<String>,

    /// Username to impersonate for the operation.
    #[arg(long = "as", value_name = "USER", global = true)]
    pub as_user: Option<String>,

    /// Group to impersonate for the operation; repeat for several.
    #[arg(long = "as-group", value_name = "GROUP", global = true)]
    pub as_group: Vec<String>,

    /// UID to impersonate for the operation.
    #[arg(long = "as-uid", value_name = "UID", global = true)]
    pub as_uid: Option<String>,

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

    /// kubegate: rules in Kubernetes terms (verbs, resources, namespaces,
    /// non-resource URLs; Allow or Deny, first match wins, no match is
    /// refused), checked after the filters; re-read when it changes. See
    /// docs/policy.md.
    #[arg(long, value_name = "PATH", global = true)]
    pub policy_file: Option<PathBuf>,

    /// kubegate: allow only get, list and watch (and discovery and the
    /// self reviews tools send): no write, exec, attach, port-forward or
    /// proxy. With --policy-file, the file's Deny rules still apply.
    #[arg(long, global = true)]
    pub read_only: bool,

    /// kubegate: regular expressions for browser origins (scheme://host:port)
    /// allowed to use the proxy, WebSockets included; each must match the
    /// whole origin (unlike kubectl's filter flags, which match substrings). Requests carrying any
    /// other Origin are refused, except kubegate's own (pages from --www).
    #[arg(long, default_value = "", global = true)]
    pub accept_origins: String,

    /// kubegate: require this token (read from the file) on every API
    /// request, as "Authorization: Bearer TOKEN" or as the WebSocket
    /// subprotocol base64url.bearer.authorization.k8s.io.TOKEN.
    #[arg(long, value_name = "PATH", global = true)]
    pub access_token_file: Option<PathBuf>,

    /// kubegate: make a random access token, print it once, and require it
    /// (written to --access-token-file too, if given).
    #[arg(long, global = true)]
    pub generate_access_token: bool,

    /// Audit: write audit.k8s.io/v1 events to this file ("-" for stdout).
    #[arg(long, value_name = "PATH", global = true)]
    pub audit_log_path: Option<PathBuf>,

    /// Audit: the apiserver's audit Policy file; without it every request is
    /// audited at level Metadata.
    #[arg(long, value_name = "PATH", global = true)]
    pub audit_policy_file: Option<PathBuf>,

    /// Audit: rotate the log past this many megabytes (0: never).
    #[arg(long, default_value_t = 100, value_name = "MB", global = true)]
    pub audit_log_maxsize: u64,

    /// Audit: keep at most this many rotated logs (0: all).
    #[arg(long, default_value_t = 100, global = true)]
    pub audit_log_maxbackup: usize,

    /// Audit: delete rotated logs older than this many days (0: never).
    #[arg(long, default_value_t = 366, value_name = "DAYS", global = true)]
    pub audit_log_maxage: u64,

    /// Audit: when the log cannot be written, refuse requests with 503, or
    /// continue (events are lost, and kubegate says so loudly).
    #[arg(long, default_value = "refuse", value_parser = ["refuse", "continue"], global = true)]
    pub audit_failure: String,

    /// Audit: largest request or response body recorded at levels Request
    /// and RequestResponse; a larger one is marked truncated.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES", global = true)]
    pub audit_max_body_bytes: usize,

    /// Audit: send events to a collector described by this kubeconfig-format
    /// file (as kube-apiserver's flag of the same name), in EventList batches.
    #[arg(long, value_name = "PATH", global = true)]
    pub audit_webhook_config_file: Option<PathBuf>,

    /// Audit: events per webhook batch at most.
    #[arg(long, default_value_t = 400, global = true)]
    pub audit_webhook_batch_max_size: usize,

    /// Audit: how long a webhook batch waits to fill.
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true)]
    pub audit_webhook_batch_max_wait: String,

    /// Audit: events buffered for the webhook at most; more are counted and
    /// logged as lost to the webhook.
    #[arg(long, default_value_t = 10000, global = true)]
    pub audit_webhook_buffer_size: usize,

    /// Audit: the first wait before a failed webhook batch is retried
    /// (doubling up to a minute).
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true)]
    pub audit_webhook_initial_backoff: String,

    /// kubegate: serve /healthz, /readyz and /metrics on this address (e.g.
    /// 127.0.0.1:8002); off by default.
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub admin_address: Option<String>,

    /// kubegate: log as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// kubegate: serve HTTPS with this certificate (PEM, chain first);
    /// re-read when it changes.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_private_key_file",
        global = true
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// kubegate: the private key for --tls-cert-file (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert_file", global = true)]
    pub tls_private_key_file: Option<PathBuf>,

    /// kubegate: listen on a non-loopback --address without an access token,
    /// letting anyone who can reach the port act with kubegate's identity.
    #[arg(long, global = true)]
    pub allow_unauthenticated_remote: bool,

    /// kubegate: pass a client's own Authorization and Impersonate-* headers
    /// to the apiserver (kubectl proxy does; kubegate drops them by default,
    /// so that the proxy's identity is the only one used).
    #[arg(long, global = true)]
    pub forward_client_credentials: bool,

    /// kubegate: how long in-flight requests may run after SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true)]
    pub shutdown_grace: String,

    /// kubegate: most client connections open at once; more wait in the
    /// listen backlog until one closes. 0: half the open file limit (each
    /// relayed exec or port-forward holds two descriptors), less a reserve.
    #[arg(long, default_value_t = 0, value_name = "N", global = true)]
    pub max_connections: usize,

    /// kubegate: answer WebSocket port-forwards (v4.channel.k8s.io,
    /// v4.base64.channel.k8s.io) here and carry each connection as a stream
    /// pair on one shared upstream session per pod; false relays every
    /// port-forward's bytes as they are, one apiserver connection each.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    pub port_forward_multiplex: bool,

    /// kubegate: how long a shared port-forward session stays open with no
    /// connection on it.
    #[arg(long, default_value = "60s", value_name = "DURATION", global = true)]
    pub port_forward_idle_timeout: String,

    /// kubegate: how long a new client connection has to send its first
    /// request (the TLS handshake and HTTP/2 preface included).
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true)]
    pub first_request_timeout: String,

    /// kubegate: how long a client connection with no request in flight
    /// stays open (HTTP/1.1 keep-alive, HTTP/2); a watch, log stream, exec
    /// or port-forward in flight is never cut.
    #[arg(long, default_value = "90s", value_name = "DURATION", global = true)]
    pub client_idle_timeout: String,

    /// kubegate: limit for opening a connection (TCP and TLS) to the apiserver.
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true)]
    pub connect_timeout: String,

    /// kubegate: worker threads; 1 (the default) is the most CPU-efficient,
    /// 0 means one per core, for the most throughput on a busy many-core
    /// machine.
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,

    /// kubegate: how often credential files (a token file, client
    /// certificate and key files, --tls-cert-file) and --policy-file are
    /// checked for changes.
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true)]
    pub token_reload_interval: String,

    /// kubegate: where the in-cluster service-account token, ca.crt and
    /// namespace are read from when there is no kubeconfig.
    #[arg(long, env = "KUBEGATE_SERVICE_ACCOUNT_DIR", default_value = DEFAULT_SERVICE_ACCOUNT_DIR, value_name = "DIR", global = true)]
    pub service_account_dir: PathBuf,

    /// Log level as kubectl counts it: 0 start-up and warnings, 1 also one
    /// line per request, 4 debug, 6 and above trace.
    #[arg(
        short = 'v',
        long = "v",
        default_value_t = 0,
        value_name = "LEVEL",
        global = true
    )]
    pub verbosity: u8,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What to run instead of the proxy.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Start a built-in apiserver double with a throwaway PKI and real mutual
    /// TLS, and kubegate in front of it: try kubegate without a cluster.
    Demo,
    /// Work with a --policy-file without a cluster.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print shell completions: `source <(kubegate completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `kubegate policy …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Print what FILE (with --read-only, if given) decides for a request,
    /// and which rule decides it; exit 1 when it is refused.
    #[command(
        after_help = "Examples:\n  kubegate policy check policy.yaml GET /api/v1/namespaces/team-a/pods\n  kubegate policy check policy.yaml GET '/api/v1/pods?watch=1'\n  kubegate policy check policy.yaml GET /api/v1/namespaces/team-a/pods/web/exec --upgrade"
    )]
    Check {
        /// The policy file.
        file: PathBuf,
        /// The HTTP method (GET, POST, PUT, PATCH, DELETE, …).
        method: String,
        /// The request path, with its query if any.
        path: String,
        /// The request is an upgrade (exec, attach, port-forward).
        #[arg(long)]
        upgrade: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn booleans_take_gos_spellings_as_kubectls_do() {
        let parse = |flag: &str| Args::parse_from(["kubegate", flag]).disable_filter;
        assert!(!Args::parse_from(["kubegate"]).disable_filter);
        assert!(parse("--disable-filter"));
        assert!(parse("--disable-filter=true"));
        assert!(!parse("--disable-filter=false"));
        let args = Args::parse_from(["kubegate", "--insecure-skip-tls-verify", "demo"]);
        assert!(args.insecure_skip_tls_verify && matches!(args.command, Some(Command::Demo)));
    }

    #[test]
    fn defaults_are_kubectl_proxys_except_reject_paths() {
        let args = Args::parse_from(["kubegate"]);
        assert_eq!(args.port, 8001);
        assert_eq!(args.address, "127.0.0.1");
        assert_eq!(args.accept_hosts, DEFAULT_ACCEPT_HOSTS);
        assert_eq!(args.accept_paths, "^.*");
        assert_eq!(args.reject_paths, "");
        assert_eq!(args.reject_methods, "^$");
        assert_eq!(args.api_prefix, "/");
        assert_eq!(args.www_prefix, "/static/");
    }

    #[test]
    fn flags_work_after_the_demo_subcommand() {
        let args = Args::parse_from(["kubegate", "demo", "-p", "0"]);
        assert!(matches!(args.command, Some(Command::Demo)));
        assert_eq!(args.port, 0);
    }
}
