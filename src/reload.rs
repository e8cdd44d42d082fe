//! Files read again when they change: certificates (cert-manager, a renewed
//! secret) and the policy file (a ConfigMap update). Polled, because the
//! kubelet updates mounted volumes by swapping a symlink, which file
//! notifications miss; a poll is one `stat` per file per interval.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

/// Every `interval`, while `owner` lives, checks whether any of `files`
/// changed and then calls `reload` with the owner. A failed reload (a
/// half-written file, a typo) is logged and keeps what the owner had; it is
/// tried again at the next change.
pub fn watch<O, E>(
    files: Vec<PathBuf>,
    interval: Duration,
    owner: Weak<O>,
    reload: impl Fn(&O) -> Result<(), E> + Send + 'static,
) where
    O: Send + Sync + 'static,
    E: Display,
{
    tokio::spawn(async move {
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
            match reload(&owner) {
                Ok(()) => seen = now,
                Err(error) => tracing::warn!(%error, "keeping what was read before"),
            }
        }
    });
}

fn modified(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}
