//! Client connections: how many, their deadlines, the drain at shutdown,
//! and the threads that serve them.

use std::time::Duration;

use super::value::{self, Checked};

/// Limits and deadlines of client connections.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionFlags {
    /// kubegate: how long in-flight requests may run after SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_name = "DURATION", global = true, value_parser = value::duration(), display_order = 65)]
    pub shutdown_grace: Checked<Duration>,

    /// kubegate: most client connections open at once; at the limit, the
    /// oldest with no request in flight is closed to make room, and with
    /// none, new clients wait in the listen backlog. 0: half the open file
    /// limit (each relayed exec or port-forward holds two descriptors), less
    /// a reserve.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        global = true,
        display_order = 66
    )]
    pub max_connections: usize,

    /// kubegate: how long a new client connection has to send its first
    /// request (the TLS handshake and HTTP/2 preface included).
    #[arg(long, default_value = "30s", value_name = "DURATION", global = true, value_parser = value::deadline(), display_order = 69)]
    pub first_request_timeout: Checked<Duration>,

    /// kubegate: how long a client connection with no request in flight
    /// stays open (HTTP/1.1 keep-alive, HTTP/2); a watch, log stream, exec
    /// or port-forward in flight is never cut.
    #[arg(long, default_value = "90s", value_name = "DURATION", global = true, value_parser = value::deadline(), display_order = 70)]
    pub client_idle_timeout: Checked<Duration>,

    /// kubegate: worker threads; 1 (the default) is the most CPU-efficient,
    /// 0 means one per core, for the most throughput on a busy many-core
    /// machine.
    #[arg(long, default_value_t = 1, global = true, display_order = 72)]
    pub threads: usize,
}
