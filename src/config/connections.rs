//! Client connections: `--max-connections` (its default a function of the
//! open-file limit), the deadlines, TCP keep-alive and the shutdown grace.

use super::{Env, Problems};
use crate::cli::Args;
use crate::connection::{Deadlines, Settings};

pub(super) fn settings(args: &Args, env: &Env, problems: &mut Problems) -> Option<Settings> {
    let flags = &args.connections;
    let grace = problems.check(flags.shutdown_grace.get());
    let first_request = problems.check(flags.first_request_timeout.get());
    let idle = problems.check(flags.client_idle_timeout.get());
    // `--keepalive` is documented as the period for client connections too;
    // its error is reported with the network flags.
    let keepalive = args.network.keepalive.get().ok();
    Some(Settings {
        limit: limit(flags.max_connections, env.open_file_limit),
        deadlines: Deadlines {
            first_request: first_request?,
            idle: idle?,
        },
        keepalive: keepalive?,
        grace: grace?,
    })
}

/// `--max-connections`, or with 0 what `open_files` allows: half of it (a
/// relayed session holds a client and an upstream descriptor), less a
/// reserve for upstream connections, audit files and the admin port.
fn limit(asked: usize, open_files: u64) -> usize {
    const RESERVE: u64 = 64;
    if asked > 0 {
        return asked;
    }
    let half = open_files.saturating_sub(RESERVE) / 2;
    usize::try_from(half)
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::limit;

    #[test]
    fn the_default_limit_is_half_the_open_files_less_a_reserve() {
        assert_eq!(limit(0, 1024), 480);
        assert_eq!(limit(0, 1_048_576), 524_256);
        assert_eq!(limit(0, 64), 16);
        assert_eq!(limit(0, u64::MAX), 1 << 20);
        assert_eq!(limit(100, 1024), 100);
    }
}
