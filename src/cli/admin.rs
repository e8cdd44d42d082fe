//! The admin port: `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;

use super::value::{self, Checked};

/// The admin port.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminFlags {
    /// kubegate: serve /healthz, /readyz and /metrics on this address (e.g.
    /// 127.0.0.1:8002); off by default.
    #[arg(long, value_name = "HOST:PORT", global = true, value_parser = value::socket_address(), display_order = 59)]
    pub admin_address: Option<Checked<SocketAddr>>,
}
