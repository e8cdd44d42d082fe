//! Port-forward: multiplexed onto shared sessions, or relayed.

use std::time::Duration;

use super::value::{self, Checked};

/// How WebSocket port-forwards are carried.
#[derive(Debug, Clone, clap::Args)]
pub struct PortForwardFlags {
    /// kubegate: answer WebSocket port-forwards (v4.channel.k8s.io,
    /// v4.base64.channel.k8s.io) here and carry each connection as a stream
    /// pair on one shared upstream session per pod; false relays every
    /// port-forward's bytes as they are, one apiserver connection each.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true, display_order = 67)]
    pub port_forward_multiplex: bool,

    /// kubegate: how long a shared port-forward session stays open with no
    /// connection on it.
    #[arg(long, default_value = "60s", value_name = "DURATION", global = true, value_parser = value::deadline(), display_order = 68)]
    pub port_forward_idle_timeout: Checked<Duration>,
}
