//! Rules in Kubernetes terms: `--policy-file` and `--read-only`.

use std::path::PathBuf;

/// `--policy-file` and `--read-only`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyFlags {
    /// kubegate: rules in Kubernetes terms (verbs, resources, namespaces,
    /// non-resource URLs; Allow or Deny, first match wins, no match is
    /// refused), checked after the filters; re-read when it changes. See
    /// docs/policy.md.
    #[arg(long, value_name = "PATH", global = true, display_order = 42)]
    pub policy_file: Option<PathBuf>,

    /// kubegate: allow only get, list and watch (and discovery and the
    /// self reviews tools send): no write, exec, attach, port-forward or
    /// proxy. With --policy-file, the file's Deny rules still apply.
    #[arg(long, global = true, display_order = 43)]
    pub read_only: bool,
}
