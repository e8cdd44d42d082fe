//! The recordings directory: `DIR/YYYY-MM-DD/AUDIT-ID.cast`, directories
//! 0700 and files 0600, each written as `.part` and renamed when its
//! session ends. Its limits: a quota on what the directory holds, a floor
//! of free space on its file system, and an age after which recordings are
//! deleted.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::StartupError;

/// What a recording's file ends in while it is being written.
pub const PART: &str = ".part";

/// The recordings directory and its limits.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Bytes the directory may hold (0: no quota).
    quota: u64,
    /// Bytes its file system must keep free.
    min_free: u64,
    /// Bytes it holds now, counted at start and as recordings are written.
    used: AtomicU64,
}

impl Store {
    /// Opens (or creates, mode 0700) `dir`.
    ///
    /// # Errors
    ///
    /// [`StartupError`] naming the directory if it cannot be made or
    /// written, or is open to other users.
    pub fn open(dir: &Path, quota: u64, min_free: u64) -> Result<Store, StartupError> {
        let fail = |reason: String| {
            StartupError::Unsupported(format!("--record-sessions-dir {}: {reason}", dir.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| fail(format!("cannot create it ({error})")))?;
        let mode = fs::metadata(dir)
            .map_err(|error| fail(format!("cannot read it ({error})")))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "other users can open it (mode {:o}): recordings hold what people typed and saw; `chmod 700` it",
                mode & 0o777
            )));
        }
        let probe = dir.join(".kubegate-write-test");
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|error| fail(format!("cannot write in it ({error})")))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            quota,
            min_free,
            used: AtomicU64::new(size_of_tree(dir)),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why no more may be written now, if a limit is reached.
    pub fn problem(&self) -> Option<String> {
        let used = self.used.load(Ordering::Relaxed);
        if self.quota > 0 && used >= self.quota {
            return Some(format!(
                "the recordings directory holds {} MiB, its --record-quota",
                used >> 20
            ));
        }
        match free_bytes(&self.dir) {
            Ok(free) if free < self.min_free => Some(format!(
                "the recordings file system has {} MiB free, under --record-min-free",
                free >> 20
            )),
            Ok(_) => None,
            Err(error) => Some(format!(
                "cannot read the recordings file system's free space: {error}"
            )),
        }
    }

    /// Bytes written to a recording: counted against the quota.
    pub fn wrote(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Creates `DAY/ID.cast.part`, exclusively, mode 0600; returns it and
    /// its name under the directory without `.part`.
    ///
    /// # Errors
    ///
    /// When the file cannot be created.
    pub fn create(&self, day: &str, id: &str) -> io::Result<(File, String)> {
        let folder = self.dir.join(day);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&folder)?;
        let name = format!("{day}/{id}.cast");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(format!("{name}{PART}")))?;
        Ok((file, name))
    }

    /// The recording `name` is whole: `.part` comes off.
    ///
    /// # Errors
    ///
    /// When the rename fails.
    pub fn complete(&self, name: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        fs::rename(path.with_extension(format!("cast{PART}")), path)
    }

    /// Removes a recording that never started (the apiserver refused the
    /// session).
    pub fn discard(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{name}{PART}")));
    }

    /// Deletes recordings last written more than `max_age` ago, and the
    /// day directories they leave empty; returns how many.
    pub fn sweep(&self, max_age: Duration) -> usize {
        let Some(cutoff) = SystemTime::now().checked_sub(max_age) else {
            return 0;
        };
        let mut removed = 0;
        let Ok(days) = fs::read_dir(&self.dir) else {
            return 0;
        };
        for day in days.flatten() {
            let Ok(files) = fs::read_dir(day.path()) else {
                continue;
            };
            for file in files.flatten() {
                let Ok(meta) = file.metadata() else { continue };
                let old = meta.modified().is_ok_and(|modified| modified < cutoff);
                let ours = file.file_name().to_string_lossy().contains(".cast");
                if meta.is_file() && old && ours && fs::remove_file(file.path()).is_ok() {
                    self.used.fetch_sub(
                        meta.len().min(self.used.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                    removed += 1;
                }
            }
            // Only if empty.
            let _ = fs::remove_dir(day.path());
        }
        removed
    }
}

/// Bytes the files under `dir` (two levels: days, recordings) hold.
fn size_of_tree(dir: &Path) -> u64 {
    let Ok(days) = fs::read_dir(dir) else {
        return 0;
    };
    days.flatten()
        .filter_map(|day| fs::read_dir(day.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|file| file.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// Bytes an unprivileged user may still write on `dir`'s file system.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kubegate-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn recordings_are_private_exclusive_and_renamed_when_whole() {
        let dir = scratch("private");
        let store = Store::open(&dir, 0, 0).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (_file, name) = store.create("2026-12-07", "abc").unwrap();
        assert_eq!(name, "2026-12-07/abc.cast");
        let part = dir.join("2026-12-07/abc.cast.part");
        assert_eq!(
            fs::metadata(&part).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let day = fs::metadata(dir.join("2026-12-07")).unwrap();
        assert_eq!(day.permissions().mode() & 0o777, 0o700);
        // Exclusively: never onto a file that is there.
        assert!(store.create("2026-12-07", "abc").is_err());
        store.complete(&name).unwrap();
        assert!(dir.join(&name).exists() && !part.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_open_is_refused_at_start() {
        let dir = scratch("open");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let error = Store::open(&dir, 0, 0).unwrap_err().to_string();
        assert!(error.contains("chmod 700"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_quota_counts_what_is_there_and_what_is_written() {
        let dir = scratch("quota");
        fs::create_dir_all(dir.join("2026-01-01")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("2026-01-01/old.cast"), vec![b'x'; 600]).unwrap();
        let store = Store::open(&dir, 1000, 0).unwrap();
        assert_eq!(store.problem(), None);
        store.wrote(400);
        assert!(store.problem().unwrap().contains("--record-quota"));
        assert_eq!(store.sweep(Duration::ZERO), 1);
        assert!(!dir.join("2026-01-01").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_free_space_floor_is_the_file_systems() {
        let dir = scratch("floor");
        let store = Store::open(&dir, 0, u64::MAX).unwrap();
        assert!(store.problem().unwrap().contains("--record-min-free"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
