//! `--address`, `--port`, `--unix-socket`, the prefixes, `--www` and the
//! serving certificate: where clients connect and what they find there.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Problems;
use crate::cli::ListeningFlags;
use crate::error::StartupError;
use crate::listen::Listen;
use crate::proxy::Routes;

/// The listening subsystem's settings.
pub(super) struct Listening {
    pub listen: Listen,
    pub routes: Routes,
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub(super) fn settings(flags: &ListeningFlags, problems: &mut Problems) -> Option<Listening> {
    let listen = problems.check(listen(flags));
    let routes = problems.check(routes(flags));
    Some(Listening {
        listen: listen?,
        routes: routes?,
        tls: flags
            .tls_cert_file
            .clone()
            .zip(flags.tls_private_key_file.clone()),
    })
}

fn listen(flags: &ListeningFlags) -> Result<Listen, StartupError> {
    if let Some(path) = &flags.unix_socket {
        // kubectl only objects when --port was changed from its default.
        if flags.port != 8001 {
            return Err(StartupError::flag(
                "unix-socket",
                "cannot be combined with --port; choose one",
            ));
        }
        return Ok(Listen::Unix(path.clone()));
    }
    Ok(Listen::Tcp(SocketAddr::new(
        flags.address.get()?,
        flags.port,
    )))
}

fn routes(flags: &ListeningFlags) -> Result<Routes, StartupError> {
    let www = match &flags.www {
        Some(dir) if !dir.is_dir() => {
            return Err(StartupError::flag(
                "www",
                format!(
                    "{} is not a directory; give a directory of static files",
                    dir.display()
                ),
            ));
        }
        Some(dir) => Some((dir.clone(), flags.www_prefix.clone())),
        None => None,
    };
    Ok(Routes {
        strip_api_prefix: !flags.api_prefix.starts_with("/api"),
        api_prefix: flags.api_prefix.clone(),
        www,
    })
}
