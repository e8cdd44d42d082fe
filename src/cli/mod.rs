//! The command line: `kubectl proxy`'s flags, names and defaults first, then
//! kubegate's own, in one group per subsystem (a file each). Every value is
//! parsed to its final type here ([`value`]); [`crate::config`] checks the
//! flags against each other and hands each subsystem its settings.

pub mod access;
pub mod admin;
pub mod audit;
pub mod clusters;
pub mod connections;
pub mod filters;
pub mod listening;
pub mod logging;
pub mod network;
pub mod policy;
pub mod port_forward;
pub mod recording;
pub mod value;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use access::AccessFlags;
pub use admin::AdminFlags;
pub use audit::{AuditFailure, AuditFlags};
pub use clusters::{ClusterFlags, IgnoredFlags, Overrides};
pub use connections::ConnectionFlags;
pub use filters::FilterFlags;
pub use listening::ListeningFlags;
pub use logging::{LogFormat, LoggingFlags};
pub use network::NetworkFlags;
pub use policy::PolicyFlags;
pub use port_forward::PortForwardFlags;
pub use recording::RecordingFlags;

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

Differences from kubectl proxy are listed in docs/flags.md.";

// The flags come in one group per subsystem; `display_order` keeps
// `--help` in kubectl proxy's order (its own flags first) across groups.
/// `kubegate`: an authenticating reverse proxy for the Kubernetes API.
#[derive(Debug, Clone, Parser)]
#[command(name = "kubegate", version = VERSION, about = ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Run something other than the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where kubegate listens.
    #[command(flatten)]
    pub listening: ListeningFlags,

    /// kubectl's filters and the accepted origins.
    #[command(flatten)]
    pub filters: FilterFlags,

    /// The apiservers.
    #[command(flatten)]
    pub clusters: ClusterFlags,

    /// Every connection kubegate makes.
    #[command(flatten)]
    pub network: NetworkFlags,

    /// Client connections.
    #[command(flatten)]
    pub connections: ConnectionFlags,

    /// Port-forward.
    #[command(flatten)]
    pub port_forward: PortForwardFlags,

    /// Who may use kubegate.
    #[command(flatten)]
    pub access: AccessFlags,

    /// Rules in Kubernetes terms.
    #[command(flatten)]
    pub policy: PolicyFlags,

    /// The audit trail.
    #[command(flatten)]
    pub audit: AuditFlags,

    /// Session recordings.
    #[command(flatten)]
    pub recording: RecordingFlags,

    /// The admin port.
    #[command(flatten)]
    pub admin: AdminFlags,

    /// Logging.
    #[command(flatten)]
    pub logging: LoggingFlags,
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
    /// Work with session recordings (--record-sessions-dir).
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// Print shell completions: `source <(kubegate completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `kubegate man | man -l -`.
    Man,
}

/// `kubegate policy …`.
#[derive(Debug, Clone, Subcommand)]
pub enum RecordingsCommand {
    /// Print the recordings under DIR, oldest first: time, user, pod,
    /// command, status and size, from each file's header.
    List {
        /// The --record-sessions-dir.
        dir: PathBuf,
    },
    /// Replay a recording's output in this terminal.
    Play {
        /// The .cast file.
        file: PathBuf,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Pauses longer than this many seconds are cut to it.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        idle_limit: f64,
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
        let parse = |flag: &str| Args::parse_from(["kubegate", flag]).filters.disable_filter;
        assert!(!Args::parse_from(["kubegate"]).filters.disable_filter);
        assert!(parse("--disable-filter"));
        assert!(parse("--disable-filter=true"));
        assert!(!parse("--disable-filter=false"));
        let args = Args::parse_from(["kubegate", "--insecure-skip-tls-verify", "demo"]);
        assert!(
            args.clusters.overrides.insecure_skip_tls_verify
                && matches!(args.command, Some(Command::Demo))
        );
    }

    #[test]
    fn defaults_are_kubectl_proxys_except_reject_paths() {
        let args = Args::parse_from(["kubegate"]);
        let listening = &args.listening;
        assert_eq!(listening.port, 8001);
        assert_eq!(listening.address.get().unwrap().to_string(), "127.0.0.1");
        assert_eq!(listening.api_prefix, "/");
        assert_eq!(listening.www_prefix, "/static/");
        let filters = &args.filters;
        let accepts = |list: &value::Checked<crate::pattern::PatternList>, text| {
            list.get().unwrap().is_match(text)
        };
        assert!(accepts(&filters.accept_hosts, "localhost"));
        assert!(accepts(&filters.accept_hosts, "[::1]"));
        assert!(!accepts(&filters.accept_hosts, "example.com"));
        assert!(accepts(&filters.accept_paths, "/anything"));
        assert!(!accepts(
            &filters.reject_paths,
            "/api/v1/namespaces/a/pods/b/exec"
        ));
        assert!(accepts(&filters.reject_methods, ""));
        assert!(!accepts(&filters.reject_methods, "POST"));
    }

    #[test]
    fn flags_work_after_the_demo_subcommand() {
        let args = Args::parse_from(["kubegate", "demo", "-p", "0"]);
        assert!(matches!(args.command, Some(Command::Demo)));
        assert_eq!(args.listening.port, 0);
    }
}
