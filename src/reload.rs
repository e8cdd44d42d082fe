//! Files read again when they change: certificates (cert-manager, a renewed
//! secret) and the policy file (a ConfigMap update). Polled, because the
//! kubelet updates mounted volumes by swapping a symlink, which file
//! notifications miss; a poll is one `stat` per file per interval.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use crate::lifecycle::Lifecycle;

/// Every `interval`, while `owner` lives and until `lifecycle` stops,
/// checks whether any of `files` changed (modification time or size) and
/// then calls `reload` with the owner. A failed reload (a half-written
/// file, a typo) is logged once and keeps what the owner had; the next
/// change is tried again.
pub fn watch<O, E>(
    files: Vec<PathBuf>,
    interval: Duration,
    owner: Weak<O>,
    reload: impl Fn(&O) -> Result<(), E> + Send + 'static,
    lifecycle: &Lifecycle,
) where
    O: Send + Sync + 'static,
    E: Display,
{
    lifecycle.spawn(async move {
        let mut seen = modified(&files);
        loop {
            tokio::time::sleep(interval).await;
            let Some(owner) = owner.upgrade() else {
                return;
            };
            let now = modified(&files);
            if now == seen {
                continue;
            }
            if let Err(error) = reload(&owner) {
                tracing::warn!(%error, "keeping what was read before");
            }
            seen = now;
        }
    });
}

fn modified(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}
