//! The `--record-*` flags: where recordings go, which sessions, the
//! limits.

use std::time::Duration;

use super::Problems;
use crate::audit::FailureMode;
use crate::cli::{AuditFailure, RecordingFlags};
use crate::error::StartupError;
use crate::recording;

const MIB: u64 = 1024 * 1024;

/// The recording settings: `Some(None)` when sessions are not recorded.
pub(super) fn settings(
    flags: &RecordingFlags,
    problems: &mut Problems,
) -> Option<Option<recording::Settings>> {
    let Some(dir) = &flags.record_sessions_dir else {
        let set = flags.record_non_interactive || flags.record_stdin || flags.serve_recordings;
        let unused = set.then(|| {
            StartupError::Unsupported(
                "--record-non-interactive, --record-stdin and --serve-recordings need --record-sessions-dir".into(),
            )
        });
        return match unused {
            Some(error) => problems.check(Err::<(), _>(error)).map(|_| None),
            None => Some(None),
        };
    };
    if flags.record_maxsize == 0 {
        problems.check(Err::<(), _>(StartupError::Unsupported(
            "--record-maxsize must be at least 1 (MB)".into(),
        )))?;
    }
    Some(Some(recording::Settings {
        dir: dir.clone(),
        non_interactive: flags.record_non_interactive,
        stdin: flags.record_stdin,
        max_bytes: flags.record_maxsize.saturating_mul(MIB),
        quota: flags.record_quota.saturating_mul(MIB),
        min_free: flags.record_min_free.saturating_mul(MIB),
        max_age: Duration::from_secs(flags.record_maxage.saturating_mul(86_400)),
        serve: flags.serve_recordings,
        failure: match flags.record_failure {
            AuditFailure::Refuse => FailureMode::Refuse,
            AuditFailure::Continue => FailureMode::Continue,
        },
    }))
}
