//! `--admin-address`.

use std::net::SocketAddr;

use super::Problems;
use crate::cli::AdminFlags;

pub(super) fn settings(flags: &AdminFlags, problems: &mut Problems) -> Option<Option<SocketAddr>> {
    match &flags.admin_address {
        Some(address) => Some(Some(problems.check(address.get())?)),
        None => Some(None),
    }
}
