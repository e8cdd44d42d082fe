//! kubectl's filter flags and `--accept-origins`, each a compiled list.

use super::Problems;
use crate::cli::FilterFlags;
use crate::cors::OriginPolicy;
use crate::filters::Filters;

pub(super) fn settings(
    flags: &FilterFlags,
    problems: &mut Problems,
) -> Option<(Filters, OriginPolicy)> {
    let accept_hosts = problems.check(flags.accept_hosts.get());
    let accept_paths = problems.check(flags.accept_paths.get());
    let reject_paths = problems.check(flags.reject_paths.get());
    let reject_methods = problems.check(flags.reject_methods.get());
    let accept_origins = problems.check(flags.accept_origins.get());
    let filters = Filters {
        accept_hosts: accept_hosts?,
        accept_paths: accept_paths?,
        reject_paths: reject_paths?,
        reject_methods: reject_methods?,
        disabled: flags.disable_filter,
    };
    Some((
        filters,
        OriginPolicy {
            accept: accept_origins?,
        },
    ))
}
