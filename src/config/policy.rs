//! `--policy-file` and `--read-only`.

use super::Problems;
use crate::cli::PolicyFlags;
use crate::policy::Policy;

/// The policy, `Some(None)` when neither flag is given.
pub(super) fn settings(flags: &PolicyFlags, problems: &mut Problems) -> Option<Option<Policy>> {
    problems.check(Policy::load(flags.policy_file.as_deref(), flags.read_only))
}
