//! The audit trail: kube-apiserver's `--audit-*` flags.

use std::{path::PathBuf, time::Duration};

use super::value::{self, Checked};

/// Where audit events go, and which.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditFlags {
    /// Audit: write audit.k8s.io/v1 events to this file ("-" for stdout).
    #[arg(long, value_name = "PATH", global = true, display_order = 47)]
    pub audit_log_path: Option<PathBuf>,

    /// Audit: the apiserver's audit Policy file; without it every request is
    /// audited at level Metadata.
    #[arg(long, value_name = "PATH", global = true, display_order = 48)]
    pub audit_policy_file: Option<PathBuf>,

    /// Audit: rotate the log past this many megabytes (0: never).
    #[arg(
        long,
        default_value_t = 100,
        value_name = "MB",
        global = true,
        display_order = 49
    )]
    pub audit_log_maxsize: u64,

    /// Audit: keep at most this many rotated logs (0: all).
    #[arg(long, default_value_t = 100, global = true, display_order = 50)]
    pub audit_log_maxbackup: usize,

    /// Audit: delete rotated logs older than this many days (0: never).
    #[arg(
        long,
        default_value_t = 366,
        value_name = "DAYS",
        global = true,
        display_order = 51
    )]
    pub audit_log_maxage: u64,

    /// Audit: when the log cannot be written, refuse requests with 503, or
    /// continue (events are lost, and kubegate says so loudly).
    #[arg(long, default_value = "refuse", global = true, display_order = 52)]
    pub audit_failure: AuditFailure,

    /// Audit: largest request or response body recorded at levels Request
    /// and RequestResponse; a larger one is marked truncated.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES", global = true, display_order = 53)]
    pub audit_max_body_bytes: usize,

    /// Audit: send events to a collector described by this kubeconfig-format
    /// file (as kube-apiserver's flag of the same name), in EventList batches.
    #[arg(long, value_name = "PATH", global = true, display_order = 54)]
    pub audit_webhook_config_file: Option<PathBuf>,

    /// Audit: events per webhook batch at most.
    #[arg(long, default_value_t = 400, global = true, display_order = 55)]
    pub audit_webhook_batch_max_size: usize,

    /// Audit: how long a webhook batch waits to fill.
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true, value_parser = value::duration(), display_order = 56)]
    pub audit_webhook_batch_max_wait: Checked<Duration>,

    /// Audit: events buffered for the webhook at most; more are counted and
    /// logged as lost to the webhook.
    #[arg(long, default_value_t = 10000, global = true, display_order = 57)]
    pub audit_webhook_buffer_size: usize,

    /// Audit: the first wait before a failed webhook batch is retried
    /// (doubling up to a minute).
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true, value_parser = value::duration(), display_order = 58)]
    pub audit_webhook_initial_backoff: Checked<Duration>,
}

/// `--audit-failure`: what to do when the log cannot be written.
// The flag's help says what each value means; doc comments on the variants
// would be printed by `--help` as a second list.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFailure {
    Refuse,
    Continue,
}
