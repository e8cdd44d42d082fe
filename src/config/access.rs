//! `--access-token-file`, `--generate-access-token`,
//! `--allow-unauthenticated-remote` and `--forward-client-credentials`.

use super::Problems;
use crate::access::AccessToken;
use crate::cli::AccessFlags;
use crate::error::StartupError;
use crate::listen::Listen;

/// Who may use kubegate, and with whose credentials upstream.
#[derive(Debug)]
pub(crate) struct Access {
    /// The token every API request must carry, if any.
    pub token: Option<AccessToken>,
    /// `--forward-client-credentials`.
    pub forward_client_credentials: bool,
}

/// The access settings, and a generated token to print once.
pub(super) fn settings(
    flags: &AccessFlags,
    problems: &mut Problems,
) -> Option<(Access, Option<String>)> {
    let (token, generated) = problems.check(token(flags))?;
    let access = Access {
        token,
        forward_client_credentials: flags.forward_client_credentials,
    };
    Some((access, generated))
}

fn token(flags: &AccessFlags) -> Result<(Option<AccessToken>, Option<String>), StartupError> {
    match (&flags.access_token_file, flags.generate_access_token) {
        (None, false) => Ok((None, None)),
        (Some(path), false) => Ok((Some(AccessToken::load(path)?.0), None)),
        (path, true) => {
            let token = AccessToken::generate()?;
            if let Some(path) = path {
                AccessToken::write(path, &token)?;
            }
            Ok((Some(AccessToken::new(&token)), Some(token)))
        }
    }
}

/// A non-loopback address needs a token, or an explicit opt-out.
pub(super) fn remote_needs_a_token(
    listen: &Listen,
    access: &Access,
    flags: &AccessFlags,
) -> Result<(), StartupError> {
    match listen {
        Listen::Tcp(address)
            if !address.ip().is_loopback()
                && access.token.is_none()
                && !flags.allow_unauthenticated_remote =>
        {
            Err(StartupError::flag(
                "address",
                format!(
                    "{} is reachable from other machines, and without an access token anyone who can reach it acts with kubegate's credentials (TLS alone authenticates no client); add --access-token-file (or --generate-access-token) and --tls-cert-file, or pass --allow-unauthenticated-remote if that is really meant",
                    address.ip()
                ),
            ))
        }
        _ => Ok(()),
    }
}
