//! The `--audit-*` flags: the log and its rotation, the policy file, the
//! webhook and its batching, what to do when the log fails.

use std::sync::Arc;
use std::time::Duration;

use kube_client::config::KubeConfigOptions;

use super::Problems;
use crate::audit::log::Target;
use crate::audit::{self, FailureMode};
use crate::cli::{AuditFailure, AuditFlags, Overrides};
use crate::error::{StartupError, io_reason};
use crate::upstream::settings::{self, Network};

/// The audit settings, or `Some(None)` when no backend is on.
pub(super) async fn settings(
    flags: &AuditFlags,
    network: &Arc<Network>,
    problems: &mut Problems,
) -> Option<Option<audit::Settings>> {
    let webhook = webhook(flags, network, problems).await;
    if flags.audit_log_path.is_none() && flags.audit_webhook_config_file.is_none() {
        return webhook.map(|_| None);
    }
    let policy = problems.check(policy(flags));
    Some(Some(audit::Settings {
        log: log(flags),
        webhook: webhook?,
        policy: policy?,
        failure: match flags.audit_failure {
            AuditFailure::Refuse => FailureMode::Refuse,
            AuditFailure::Continue => FailureMode::Continue,
        },
        max_body_bytes: flags.audit_max_body_bytes,
    }))
}

fn log(flags: &AuditFlags) -> Option<Target> {
    let path = flags.audit_log_path.as_ref()?;
    Some(match path.to_str() {
        Some("-") => Target::Stdout,
        _ => Target::File {
            path: path.clone(),
            max_bytes: flags.audit_log_maxsize.saturating_mul(1024 * 1024),
            max_backups: flags.audit_log_maxbackup,
            max_age: Duration::from_secs(flags.audit_log_maxage.saturating_mul(86_400)),
        },
    })
}

fn policy(flags: &AuditFlags) -> Result<Option<audit::policy::Policy>, StartupError> {
    let Some(path) = &flags.audit_policy_file else {
        return Ok(None);
    };
    let file = |message| StartupError::File {
        what: "audit policy file",
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file(io_reason(&e)))?;
    let policy = audit::policy::Policy::parse(&text)
        .map_err(|e| file(format!("is not an audit.k8s.io/v1 Policy: {e}")))?;
    Ok(Some(policy))
}

/// The webhook's settings, `Some(None)` without a webhook; its timings are
/// checked either way.
async fn webhook(
    flags: &AuditFlags,
    network: &Arc<Network>,
    problems: &mut Problems,
) -> Option<Option<audit::webhook::Settings>> {
    let batch_max_wait = problems.check(flags.audit_webhook_batch_max_wait.get());
    let initial_backoff = problems.check(flags.audit_webhook_initial_backoff.get());
    let Some(path) = &flags.audit_webhook_config_file else {
        return batch_max_wait.and(initial_backoff).map(|_| None);
    };
    let (current, none) = (KubeConfigOptions::default(), Overrides::default());
    let paths = std::slice::from_ref(path);
    let collector = settings::from_kubeconfig(paths, &current, &none, network).await;
    let collector = problems.check(collector);
    Some(Some(audit::webhook::Settings {
        collector: collector?,
        batch_max_size: flags.audit_webhook_batch_max_size.max(1),
        batch_max_wait: batch_max_wait?,
        buffer: flags.audit_webhook_buffer_size,
        initial_backoff: initial_backoff?,
    }))
}
