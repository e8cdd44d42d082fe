//! The log backend: one JSON event per line, to a file or stdout, written by
//! one thread behind a bounded queue (a full queue makes requests wait; it
//! never drops an event), rotated as kube-apiserver rotates its audit log
//! (lumberjack: `audit-2006-01-02T15-04-05.000.log` backups, at most
//! `maxbackup` of them, none older than `maxage`).
//!
//! A write that fails (disk full, file size limit) loses nothing and tears
//! nothing: what it wrote of the batch is cut back to the last whole line,
//! and the batch is written again, to the file reopened, until it succeeds.
//! Meanwhile `refuse` mode refuses new requests and `continue` mode drops
//! what does not fit in the queue (counted as lost).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::telemetry::AuditCounters;

/// Lines queued for the writer at most.
const QUEUE: usize = 8192;

/// Lines written in one batch at most.
const BATCH: usize = 1024;

/// How long the writer lets lines gather after a batch that did not fill:
/// a request's lines reach the file within this, and a busy proxy pays a
/// wakeup and a write per few hundred lines instead of one per line.
const GATHER: Duration = Duration::from_millis(5);

/// The first pause before a failed batch is written again; it doubles up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Attempts a failed batch gets once kubegate is shutting down: exit is
/// not held up forever by a disk that stays full.
const ATTEMPTS_AT_EXIT: u32 = 3;

/// Where the log goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--audit-log-path=-`.
    Stdout,
    /// A file, rotated.
    File {
        /// The log file.
        path: PathBuf,
        /// Rotate past this many bytes; 0 never rotates.
        max_bytes: u64,
        /// Keep at most this many backups; 0 keeps all.
        max_backups: usize,
        /// Delete backups older than this; zero keeps them.
        max_age: Duration,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("-"),
            Target::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Counters and health of the backend, shared with the request path.
#[derive(Debug, Default)]
pub struct Health {
    /// Set while writes fail; cleared by the next good write.
    pub failing: AtomicBool,
    /// Lines written.
    pub written: Counter,
    /// Lines lost to write errors.
    pub lost: Counter,
    /// Lines queued and not yet written, as of the writer's last batch.
    waiting: Gauge,
    /// kubegate is exiting: a failing disk gets a few more attempts.
    closing: AtomicBool,
}

/// The running log backend.
pub struct LogBackend {
    sender: ArcSwapOption<mpsc::Sender<Vec<u8>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `continue` mode: while writes fail, a line that finds the queue
    /// full is dropped rather than waited for.
    drop_while_failing: bool,
    /// Shared counters.
    pub health: Arc<Health>,
}

impl LogBackend {
    /// Opens the target (creating its directory, mode 0700, and the file,
    /// mode 0600, as the apiserver does) and starts the writer thread.
    /// `drop_while_failing` is `continue` mode.
    ///
    /// # Errors
    ///
    /// The error opening the file.
    pub fn start(
        target: Target,
        drop_while_failing: bool,
        counters: &AuditCounters,
    ) -> io::Result<LogBackend> {
        // A file size limit (RLIMIT_FSIZE) must fail the write with EFBIG,
        // which is retried, not kill the process: SIGXFSZ gets a handler
        // (tokio's stays installed for the life of the process).
        if let Err(error) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
        {
            tracing::debug!(%error, "cannot catch SIGXFSZ");
        }
        let output = Output::open(target)?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let health = Arc::new(Health {
            written: counters.written.clone(),
            lost: counters.lost.clone(),
            waiting: counters.waiting.clone(),
            ..Health::default()
        });
        let writer_health = health.clone();
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_lines(output, receiver, &writer_health))?;
        Ok(LogBackend {
            sender: ArcSwapOption::from_pointee(sender),
            writer: std::sync::Mutex::new(Some(writer)),
            drop_while_failing,
            health,
        })
    }

    /// Queues a line, waiting while the queue is full.
    /// A request dropped while it waits (its client gone) still has its
    /// line queued, by a task.
    pub async fn send(&self, line: Vec<u8>) {
        let sender = self.sender.load_full();
        if let Some(sender) = sender
            && let Some(line) = self.try_send(&sender, line)
        {
            let mut waiting = Waiting {
                line: Some(line),
                sender,
                lost: self.health.clone(),
            };
            if let Ok(room) = waiting.sender.reserve().await
                && let Some(line) = waiting.line.take()
            {
                room.send(line);
            }
        }
    }

    /// Queues a line without waiting if there is room; otherwise a task
    /// waits for room, so the line is still never dropped.
    pub fn send_soon(&self, line: Vec<u8>) {
        let Some(sender) = self.sender.load_full() else {
            return;
        };
        if let Some(line) = self.try_send(&sender, line) {
            queue_later(sender, line, self.health.clone());
        }
    }

    /// Queues a line if there is room; returns it if it must wait for
    /// room. In `continue` mode a failing log drops it instead.
    fn try_send(&self, sender: &mpsc::Sender<Vec<u8>>, line: Vec<u8>) -> Option<Vec<u8>> {
        match sender.try_send(line) {
            Err(mpsc::error::TrySendError::Full(_))
                if self.drop_while_failing && self.health.failing.load(Ordering::Acquire) =>
            {
                self.health.lost.inc();
                None
            }
            Err(mpsc::error::TrySendError::Full(line)) => Some(line),
            _ => None,
        }
    }

    /// Stops taking lines and waits until every queued line is written.
    pub async fn close(&self) {
        self.health.closing.store(true, Ordering::Release);
        self.sender.store(None);
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// A line waiting for room in the queue; queued by a task if the wait is
/// abandoned.
struct Waiting {
    line: Option<Vec<u8>>,
    sender: Arc<mpsc::Sender<Vec<u8>>>,
    lost: Arc<Health>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            queue_later(self.sender.clone(), line, self.lost.clone());
        }
    }
}

/// Queues `line` from a task of its own, once there is room; a line the
/// writer is gone for (at exit) is counted lost.
fn queue_later(sender: Arc<mpsc::Sender<Vec<u8>>>, line: Vec<u8>, health: Arc<Health>) {
    tokio::spawn(async move {
        if sender.send(line).await.is_err() {
            health.lost.inc();
        }
    });
}

enum Output {
    Stdout(io::Stdout),
    File(RotatingFile),
}

impl Output {
    fn open(target: Target) -> io::Result<Output> {
        match target {
            Target::Stdout => Ok(Output::Stdout(io::stdout())),
            Target::File {
                path,
                max_bytes,
                max_backups,
                max_age,
            } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                }
                let file = open_append(&path)?;
                let size = file.metadata()?.len();
                Ok(Output::File(RotatingFile {
                    path,
                    file,
                    size,
                    max_bytes,
                    max_backups,
                    max_age,
                    joined: Vec::new(),
                }))
            }
        }
    }

    /// Writes `lines`; on failure, says how many of them were written
    /// whole (and nothing of the rest is left in a file).
    fn write_batch(&mut self, lines: &[Vec<u8>]) -> Result<(), Failed> {
        match self {
            Output::Stdout(out) => {
                let mut out = out.lock();
                for (done, line) in lines.iter().enumerate() {
                    out.write_all(line)
                        .map_err(|error| Failed { done, error })?;
                }
                out.flush().map_err(|error| Failed {
                    done: lines.len(),
                    error,
                })
            }
            Output::File(file) => file.write_batch(lines),
        }
    }

    /// Opens the file again before a retry: if it was moved or deleted to
    /// free space, a new one takes its place.
    fn reopen(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(_) => Ok(()),
            Output::File(file) => {
                file.file = open_append(&file.path)?;
                file.size = file.file.metadata()?.len();
                Ok(())
            }
        }
    }
}

/// A failed batch write: the lines written whole before `error`.
struct Failed {
    done: usize,
    error: io::Error,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_backups: usize,
    max_age: Duration,
    /// A batch joined for one write; kept, so that batches reuse it.
    joined: Vec<u8>,
}

impl RotatingFile {
    fn write_batch(&mut self, lines: &[Vec<u8>]) -> Result<(), Failed> {
        let mut buffer = std::mem::take(&mut self.joined);
        buffer.clear();
        let written = self.write_joined(lines, &mut buffer);
        self.joined = buffer;
        written
    }

    fn write_joined(&mut self, lines: &[Vec<u8>], buffer: &mut Vec<u8>) -> Result<(), Failed> {
        // Lines before `done` are in a file.
        let mut done = 0;
        for (index, line) in lines.iter().enumerate() {
            if self.max_bytes > 0
                && self.size + (buffer.len() + line.len()) as u64 > self.max_bytes
                && self.size + buffer.len() as u64 > 0
            {
                self.append(buffer)
                    .map_err(|error| Failed { done, error })?;
                buffer.clear();
                done = index;
                self.rotate().map_err(|error| Failed { done, error })?;
            }
            buffer.extend_from_slice(line);
        }
        self.append(buffer).map_err(|error| Failed { done, error })
    }

    /// Appends whole lines or nothing: a write that fails partway (disk
    /// full, file size limit) is cut back off, so that the file never
    /// holds a torn line for the next one to be appended to.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        let error = loop {
            if written == bytes.len() {
                self.size += written as u64;
                return Ok(());
            }
            match self.file.write(&bytes[written..]) {
                Ok(0) => break io::ErrorKind::WriteZero.into(),
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break error,
            }
        };
        if written > 0 {
            let length = self.file.metadata()?.len();
            self.file.set_len(length.saturating_sub(written as u64))?;
        }
        Err(error)
    }

    /// Renames the log to a timestamped backup and starts a new one.
    fn rotate(&mut self) -> io::Result<()> {
        let mut at = jiff::Timestamp::now();
        let backup = loop {
            let candidate = backup_name(&self.path, at);
            if !candidate.exists() {
                break candidate;
            }
            at += jiff::SignedDuration::from_millis(1);
        };
        std::fs::rename(&self.path, &backup)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.remove_old_backups();
        Ok(())
    }

    fn remove_old_backups(&self) {
        let (Some(dir), Some(stem)) = (
            self.path.parent(),
            self.path.file_stem().and_then(|s| s.to_str()),
        ) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let extension = self
            .path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let prefix = format!("{stem}-");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut backups: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stamp = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(&extension)?
                    .to_string();
                (stamp.len() == 23).then(|| (stamp, entry.path()))
            })
            .collect();
        backups.sort_by(|a, b| b.0.cmp(&a.0));
        let oldest_kept = (!self.max_age.is_zero())
            .then(|| {
                jiff::Timestamp::now()
                    - jiff::SignedDuration::try_from(self.max_age)
                        .unwrap_or(jiff::SignedDuration::MAX)
            })
            .map(stamp);
        for (index, (stamp, path)) in backups.iter().enumerate() {
            let too_many = self.max_backups > 0 && index >= self.max_backups;
            let too_old = oldest_kept.as_ref().is_some_and(|oldest| stamp < oldest);
            if too_many || too_old {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn stamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H-%M-%S.%3f").to_string()
}

/// `dir/audit.log` → `dir/audit-2006-01-02T15-04-05.000.log`.
fn backup_name(path: &Path, at: jiff::Timestamp) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(extension) => format!("{stem}-{}.{extension}", stamp(at)),
        None => format!("{stem}-{}", stamp(at)),
    };
    path.with_file_name(name)
}

/// The writer thread: takes what is queued in one batch and writes it,
/// writing a failed batch again until it is written.
fn write_lines(mut output: Output, mut lines: mpsc::Receiver<Vec<u8>>, health: &Health) {
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(256);
    let mut pause = RETRY_FIRST;
    let mut attempts_left = ATTEMPTS_AT_EXIT;
    loop {
        if batch.is_empty() {
            match lines.blocking_recv() {
                Some(first) => batch.push(first),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match lines.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        health.waiting.set(lines.len() as i64);
        let failed = match output.write_batch(&batch) {
            Ok(()) => None,
            Err(Failed { done, error }) => {
                health.written.inc_by(done as u64);
                batch.drain(..done);
                Some(error)
            }
        };
        let Some(error) = failed else {
            health.written.inc_by(batch.len() as u64);
            let full = batch.len() == BATCH;
            batch.clear();
            pause = RETRY_FIRST;
            if health.failing.swap(false, Ordering::AcqRel) {
                tracing::warn!("the audit log is being written again");
            }
            // Senders do not wake a writer that is not waiting on the
            // queue, so this pause is what saves a wakeup per line.
            if !full && !health.closing.load(Ordering::Acquire) {
                std::thread::sleep(GATHER);
            }
            continue;
        };
        if !health.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "CANNOT WRITE THE AUDIT LOG: holding events and retrying; see --audit-failure");
        }
        if health.closing.load(Ordering::Acquire) {
            attempts_left -= 1;
            if attempts_left == 0 {
                let mut lost = batch.len();
                lines.close();
                while lines.try_recv().is_ok() {
                    lost += 1;
                }
                health.lost.inc_by(lost as u64);
                tracing::error!(%error, lost, "exiting with audit events unwritten");
                return;
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RETRY_MAX);
        if let Err(error) = output.reopen() {
            tracing::debug!(%error, "cannot reopen the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_named_like_lumberjacks() {
        let at: jiff::Timestamp = "2026-11-25T14:15:16.123456Z".parse().unwrap();
        assert_eq!(
            backup_name(Path::new("/var/log/audit.log"), at),
            Path::new("/var/log/audit-2026-11-25T14-15-16.123.log")
        );
        assert_eq!(
            backup_name(Path::new("audit"), at),
            Path::new("audit-2026-11-25T14-15-16.123")
        );
    }

    #[test]
    fn rotation_keeps_every_line_and_at_most_the_backups_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut output = Output::open(Target::File {
            path: path.clone(),
            max_bytes: 100,
            max_backups: 3,
            max_age: Duration::ZERO,
        })
        .unwrap();
        let lines: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("line {i:04} ............\n").into_bytes())
            .collect();
        for chunk in lines.chunks(3) {
            assert!(output.write_batch(chunk).is_ok());
        }
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 4, "the log and three backups: {files:?}");
        for file in &files {
            assert!(std::fs::metadata(file).unwrap().len() <= 100);
        }
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with("line 0039 ............\n"));
    }
}
