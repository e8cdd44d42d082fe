//! `--port-forward-multiplex` and `--port-forward-idle-timeout`.

use std::time::Duration;

use super::Problems;
use crate::cli::PortForwardFlags;

/// The shared sessions' idle timeout, or `None` when every port-forward is
/// relayed as bytes.
pub(super) fn settings(
    flags: &PortForwardFlags,
    problems: &mut Problems,
) -> Option<Option<Duration>> {
    let idle = problems.check(flags.port_forward_idle_timeout.get())?;
    Some(flags.port_forward_multiplex.then_some(idle))
}
