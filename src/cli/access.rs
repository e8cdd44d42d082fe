//! Who may use kubegate, and with whose credentials upstream.

use std::path::PathBuf;

/// Who may use kubegate.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessFlags {
    /// kubegate: require this token (read from the file) on every API
    /// request, as "Authorization: Bearer TOKEN" or as the WebSocket
    /// subprotocol base64url.bearer.authorization.k8s.io.TOKEN.
    #[arg(long, value_name = "PATH", global = true, display_order = 45)]
    pub access_token_file: Option<PathBuf>,

    /// kubegate: make a random access token, print it once, and require it
    /// (written to --access-token-file too, if given).
    #[arg(long, global = true, display_order = 46)]
    pub generate_access_token: bool,

    /// kubegate: listen on a non-loopback --address without an access token,
    /// letting anyone who can reach the port act with kubegate's identity.
    #[arg(long, global = true, display_order = 63)]
    pub allow_unauthenticated_remote: bool,

    /// kubegate: pass a client's own Authorization and Impersonate-* headers
    /// to the apiserver (kubectl proxy does; kubegate drops them by default,
    /// so that the proxy's identity is the only one used).
    #[arg(long, global = true, display_order = 64)]
    pub forward_client_credentials: bool,
}
