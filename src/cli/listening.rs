//! Where kubegate listens and what it serves there: kubectl proxy's
//! address, port, unix socket and prefixes, and kubegate's TLS.

use std::{net::IpAddr, path::PathBuf};

use super::value::{self, Checked};

/// Where clients connect, and the prefixes served there.
#[derive(Debug, Clone, clap::Args)]
pub struct ListeningFlags {
    /// The port on which to run the proxy. Set to 0 to pick a random port.
    #[arg(
        short = 'p',
        long,
        default_value_t = 8001,
        global = true,
        display_order = 1
    )]
    pub port: u16,

    /// The IP address on which to serve on.
    #[arg(long, default_value = "127.0.0.1", global = true, value_parser = value::ip(), display_order = 2)]
    pub address: Checked<IpAddr>,

    /// Unix socket on which to run the proxy (mode 0600).
    #[arg(
        short = 'u',
        long,
        value_name = "PATH",
        global = true,
        display_order = 3
    )]
    pub unix_socket: Option<PathBuf>,

    /// Prefix to serve the proxied API under.
    #[arg(long, default_value = "/", global = true, value_parser = value::prefix, display_order = 8)]
    pub api_prefix: String,

    /// Also serve static files from the given directory under the specified
    /// prefix.
    #[arg(
        short = 'w',
        long,
        value_name = "DIR",
        global = true,
        display_order = 9
    )]
    pub www: Option<PathBuf>,

    /// Prefix to serve static files under, if static file directory is
    /// specified.
    #[arg(short = 'P', long, default_value = "/static/", global = true, value_parser = value::prefix, display_order = 10)]
    pub www_prefix: String,

    /// kubegate: serve HTTPS with this certificate (PEM, chain first);
    /// re-read when it changes.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_private_key_file",
        global = true,
        display_order = 61
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// kubegate: the private key for --tls-cert-file (PEM).
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_cert_file",
        global = true,
        display_order = 62
    )]
    pub tls_private_key_file: Option<PathBuf>,
}
