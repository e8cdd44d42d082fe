//! How kubegate's connections behave on the network.

use std::time::Duration;

use super::value::{self, Checked};

/// Keep-alive, connect and reload timings for every connection kubegate makes.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkFlags {
    /// keepalive specifies the keep-alive period for an active network
    /// connection to the apiserver (e.g. 30s), and kubegate uses it for
    /// client connections too. 0 uses the default (15s); a negative value
    /// disables keep-alive.
    #[arg(long, default_value = "0", allow_hyphen_values = true, global = true, value_parser = value::keepalive(), display_order = 12)]
    pub keepalive: Checked<Option<Duration>>,

    /// kubegate: limit for opening a connection (TCP and TLS) to the apiserver.
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true, value_parser = value::duration(), display_order = 71)]
    pub connect_timeout: Checked<Duration>,

    /// kubegate: how often credential files (a token file, client
    /// certificate and key files, --tls-cert-file) and --policy-file are
    /// checked for changes.
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true, value_parser = value::duration(), display_order = 73)]
    pub token_reload_interval: Checked<Duration>,
}
