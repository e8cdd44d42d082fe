//! `--keepalive`, `--connect-timeout`, `--token-reload-interval` and the
//! environment's proxies: one [`Network`] that every cluster shares.

use std::sync::Arc;

use super::{Env, Problems};
use crate::cli::NetworkFlags;
use crate::upstream::forward_proxy::ProxyRule;
use crate::upstream::settings::Network;

pub(super) fn settings(
    flags: &NetworkFlags,
    env: &Env,
    problems: &mut Problems,
) -> Option<Arc<Network>> {
    let keepalive = problems.check(flags.keepalive.get());
    let connect_timeout = problems.check(flags.connect_timeout.get());
    let token_reload_interval = problems.check(flags.token_reload_interval.get());
    Some(Arc::new(Network {
        environment_proxy: ProxyRule::from_environment(&env.proxies()),
        keepalive: keepalive?,
        connect_timeout: connect_timeout?,
        token_reload_interval: token_reload_interval?,
    }))
}
