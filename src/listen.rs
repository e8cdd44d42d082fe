//! Where clients connect: a TCP address or a unix socket (mode 0600, the
//! stale file replaced, removed again on exit).

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::error::StartupError;

/// Where kubegate listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `--address` and `--port`.
    Tcp(SocketAddr),
    /// `--unix-socket`.
    Unix(PathBuf),
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// `--address`/`--port`.
    Tcp(TcpListener),
    /// `--unix-socket`; the file is removed when this is dropped.
    Unix(UnixListener, UnixSocketFile),
}

/// An accepted connection.
pub enum Accepted {
    /// From TCP, with the peer's address.
    Tcp(TcpStream, SocketAddr),
    /// From the unix socket.
    Unix(UnixStream),
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `listen`.
    ///
    /// # Errors
    ///
    /// A [`StartupError::Listen`] naming the address and the fix.
    pub async fn bind(listen: &Listen) -> Result<Listener, StartupError> {
        match listen {
            Listen::Tcp(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(|e| listen_error(&address.to_string(), &e))?;
                Ok(Listener::Tcp(listener))
            }
            Listen::Unix(path) => bind_unix(path),
        }
    }

    /// Waits for the next connection.
    ///
    /// # Errors
    ///
    /// The accept error (e.g. out of file descriptors); the caller backs off.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream, peer))
            }
            Listener::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
        }
    }
}

impl fmt::Display for Listener {
    /// The address as `kubectl proxy` prints it: `127.0.0.1:8001`, or the
    /// socket path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(address) => write!(f, "{address}"),
                Err(_) => f.write_str("?"),
            },
            Listener::Unix(_, file) => write!(f, "{}", file.0.display()),
        }
    }
}

fn bind_unix(path: &Path) -> Result<Listener, StartupError> {
    let shown = path.display().to_string();
    // Like kubectl, replace a stale socket; never delete anything else.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StartupError::Listen {
                address: shown,
                message:
                    "a file that is not a socket is in the way; remove it or choose another path"
                        .into(),
            });
        }
        std::fs::remove_file(path).map_err(|e| listen_error(&shown, &e))?;
    }
    // Bound in a private directory, made 0600 there, then renamed into
    // place: no other user can connect in between.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let private = path.with_file_name(format!(".{name}.{}.d", std::process::id()));
    let bound = bind_privately(&private, path);
    let _ = std::fs::remove_dir(&private);
    let listener = bound.map_err(|e| listen_error(&shown, &e))?;
    Ok(Listener::Unix(listener, UnixSocketFile(path.to_path_buf())))
}

/// Binds a socket in the new 0700 directory `private`, makes it 0600 and
/// renames it to `path`.
fn bind_privately(private: &Path, path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(private)?;
    let staged = private.join("socket");
    let listener = UnixListener::bind(&staged)?;
    let placed = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staged, path));
    if placed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    placed.map(|()| listener)
}

fn listen_error(address: &str, error: &std::io::Error) -> StartupError {
    let message = match error.kind() {
        std::io::ErrorKind::AddrInUse => "the address is already in use; stop what is using it or pick another --port (0 picks a free one)".to_string(),
        std::io::ErrorKind::AddrNotAvailable => "no interface has this address; check --address".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied; use a port above 1023 or a writable socket path".to_string(),
        _ => crate::error::io_reason(error),
    };
    StartupError::Listen {
        address: address.to_string(),
        message,
    }
}
