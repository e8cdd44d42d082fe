//! kubectl proxy's request filters, and kubegate's browser origins.

use super::DEFAULT_ACCEPT_HOSTS;
use super::value::{self, Checked};
use crate::pattern::PatternList;

/// kubectl's host, path and method filters, and the accepted origins.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterFlags {
    /// Regular expressions for hosts that the proxy should accept
    /// (comma-separated; matched against the Host header without its port).
    #[arg(long, default_value = DEFAULT_ACCEPT_HOSTS, global = true, value_parser = value::patterns(), display_order = 4)]
    pub accept_hosts: Checked<PatternList>,

    /// Regular expressions for paths that the proxy should accept.
    #[arg(long, default_value = "^.*", global = true, value_parser = value::patterns(), display_order = 5)]
    pub accept_paths: Checked<PatternList>,

    /// Regular expressions for paths that the proxy should reject. Paths
    /// specified here will be rejected even if accepted by --accept-paths.
    /// kubegate's default is empty (kubectl's rejects exec and attach).
    #[arg(long, default_value = "", global = true, value_parser = value::patterns(), display_order = 6)]
    pub reject_paths: Checked<PatternList>,

    /// Regular expressions for HTTP methods that the proxy should reject
    /// (example --reject-methods='POST,PUT,PATCH'). Upgrades (exec, attach,
    /// port-forward) count as POST.
    #[arg(long, default_value = "^$", global = true, value_parser = value::patterns(), display_order = 7)]
    pub reject_methods: Checked<PatternList>,

    /// If true, disable request filtering in the proxy. This is dangerous, and
    /// can leave you vulnerable to XSRF attacks, when used with an accessible
    /// port.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false, display_order = 11)]
    pub disable_filter: bool,

    /// kubegate: regular expressions for browser origins (scheme://host:port)
    /// allowed to use the proxy, WebSockets included; each must match the
    /// whole origin (unlike kubectl's filter flags, which match substrings). Requests carrying any
    /// other Origin are refused, except kubegate's own (pages from --www).
    #[arg(long, default_value = "", global = true, value_parser = value::whole_patterns(), display_order = 44)]
    pub accept_origins: Checked<PatternList>,
}
