//! Session recordings (`--record-sessions-dir`): exec and attach sessions
//! written as asciicast v2 files that `asciinema play` and
//! asciinema-player replay, linked from the session's audit event.
//!
//! The relay hands a copy of each chunk it moves to the session's
//! [`Tap`], which queues it without waiting; a thread per recorded
//! session reads the channels out of the chunks ([`channels`]), writes the
//! events ([`cast`]) and hashes what it writes. The queue is bounded in
//! bytes: a writer that falls behind, like a size cap, a quota or a full
//! disk ([`store`]), ends the recording (`--record-failure=continue`) or
//! the session (`refuse`), never slows the relay. A session that is not
//! recorded has no tap and pays nothing.

pub mod cast;
pub(crate) mod channels;
pub mod replay;
mod served;
mod store;

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http::header;
use ring::digest::{Context, SHA256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use channels::Direction;
use channels::{Channel, Demux, Framing, Sizes};
pub use served::PREFIX as SERVED;
use store::Store;

use crate::audit::{FailureMode, Record};
use crate::error::StartupError;
use crate::lifecycle::Lifecycle;
use crate::request::{Resource, query_pairs};
use crate::status::ProxyError;
use crate::telemetry::Telemetry;

/// Bytes queued for a session's writer at most; past this the writer has
/// fallen behind.
const QUEUE_LIMIT: usize = 32 * 1024 * 1024;
/// How long the end of a session waits for its recording to be closed
/// (draining a full queue, then `fsync`).
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// What a queued chunk costs beyond its bytes, so that many small reads
/// count too.
const CHUNK_OVERHEAD: usize = 64;
/// Bytes of the error channel kept, for the exit status.
const MAX_STATUS: usize = 64 * 1024;
/// Written bytes between checks of the quota and the free space.
const CHECK_EVERY: u64 = 1024 * 1024;
/// How often recordings past `--record-maxage` are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What to record and the limits, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--record-sessions-dir`.
    pub dir: PathBuf,
    /// `--record-non-interactive`: sessions without a terminal too.
    pub non_interactive: bool,
    /// `--record-stdin`: what the client typed.
    pub stdin: bool,
    /// `--record-maxsize`, bytes per recording.
    pub max_bytes: u64,
    /// `--record-quota`, bytes for the directory (0: none).
    pub quota: u64,
    /// `--record-min-free`, bytes the file system keeps free.
    pub min_free: u64,
    /// `--record-maxage` (zero: kept for ever).
    pub max_age: Duration,
    /// `--record-failure`.
    pub failure: FailureMode,
    /// `--serve-recordings`.
    pub serve: bool,
}

/// Records the exec and attach sessions the settings say to.
pub struct Recorder {
    settings: Settings,
    store: Store,
    metrics: Arc<Telemetry>,
}

/// How a recording ended, for the audit event and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte of the session is in it.
    Complete,
    /// It stopped at `--record-maxsize`.
    Truncated,
    /// It stopped early, and why.
    Incomplete(String),
    /// The session was not recorded, and why.
    Off(String),
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Truncated => "truncated",
            Outcome::Incomplete(_) => "incomplete",
            Outcome::Off(_) => "off",
        }
    }

    /// The `kubegate.io/recording-status` annotation.
    pub fn annotation(&self) -> String {
        match self {
            Outcome::Incomplete(why) | Outcome::Off(why) => format!("{}: {why}", self.label()),
            _ => self.label().to_string(),
        }
    }
}

impl Recorder {
    /// Opens the directory and deletes what is past `--record-maxage`, now
    /// and every hour.
    ///
    /// # Errors
    ///
    /// [`StartupError`] naming the directory if it cannot be used.
    pub fn start(
        settings: Settings,
        metrics: Arc<Telemetry>,
        lifecycle: &Lifecycle,
    ) -> Result<Arc<Recorder>, StartupError> {
        let store = Store::open(&settings.dir, settings.quota, settings.min_free)?;
        let recorder = Arc::new(Recorder {
            settings,
            store,
            metrics,
        });
        if !recorder.settings.max_age.is_zero() {
            let sweeping = recorder.clone();
            lifecycle.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                loop {
                    every.tick().await;
                    let sweeper = sweeping.clone();
                    let removed = tokio::task::spawn_blocking(move || {
                        sweeper.store.sweep(sweeper.settings.max_age)
                    })
                    .await
                    .unwrap_or_default();
                    if removed > 0 {
                        tracing::info!(removed, "deleted recordings past --record-maxage");
                    }
                }
            });
        }
        Ok(recorder)
    }

    /// Whether `--serve-recordings` serves the directory.
    pub fn serves(&self) -> bool {
        self.settings.serve
    }

    /// `GET /kubegate/recordings` and the files under it (`path` is what
    /// follows).
    pub async fn serve(
        &self,
        path: &str,
        method: &http::Method,
    ) -> http::Response<crate::body::ProxyBody> {
        served::answer(self.store.dir(), path, method).await
    }

    /// What to do with an upgrade request to `resource` with `query`,
    /// before it goes upstream: `None` for what is never recorded
    /// (port-forward, anything but exec and attach).
    ///
    /// # Errors
    ///
    /// [`ProxyError::RecordingUnavailable`] with `--record-failure=refuse`
    /// while a limit is reached or the file cannot be made.
    pub fn plan(
        self: &Arc<Self>,
        resource: &Resource<'_>,
        query: &str,
        audit_id: Option<&str>,
    ) -> Result<Option<Plan>, ProxyError> {
        if !resource.group.is_empty()
            || resource.resource != "pods"
            || !matches!(resource.subresource, "exec" | "attach")
        {
            return Ok(None);
        }
        let mut session = cast::Session {
            namespace: resource.namespace.to_string(),
            pod: resource.name.to_string(),
            subresource: resource.subresource.to_string(),
            ..cast::Session::default()
        };
        // As the apiserver reads the query: every `command`, the first of
        // anything else.
        let (mut tty, mut stdin) = (None, None);
        for (key, value) in query_pairs(Some(query)) {
            match key.as_ref() {
                "command" => session.argv.push(value.into_owned()),
                "container" if session.container.is_none() => {
                    session.container = Some(value.into_owned());
                }
                "tty" if tty.is_none() => tty = Some(query_bool(&value)),
                "stdin" if stdin.is_none() => stdin = Some(query_bool(&value)),
                _ => {}
            }
        }
        session.tty = tty.unwrap_or(false);
        session.stdin = stdin.unwrap_or(false);
        if !session.tty && !self.settings.non_interactive {
            return Ok(Some(Plan::Off(Outcome::Off(
                "no terminal (--record-non-interactive records these)".into(),
            ))));
        }
        let refuse = self.settings.failure == FailureMode::Refuse;
        let problem = match self.store.problem() {
            Some(problem) => Some(problem),
            None => {
                session.audit_id = audit_id.map_or_else(random_id, str::to_string);
                let day = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
                match self.store.create(&day, &session.audit_id) {
                    Ok((file, name)) => {
                        return Ok(Some(Plan::Record(Box::new(Pending {
                            recorder: self.clone(),
                            session,
                            file: Some(file),
                            name,
                        }))));
                    }
                    Err(error) => Some(format!("cannot create the recording: {error}")),
                }
            }
        };
        let problem = problem.unwrap_or_default();
        if refuse {
            self.metrics.recording("off", 0);
            return Err(ProxyError::RecordingUnavailable(problem));
        }
        Ok(Some(Plan::Off(Outcome::Off(problem))))
    }
}

/// A query flag as the apiserver reads it (apimachinery's
/// `Convert_Slice_string_To_bool`): false only for `0` and `false` in any
/// case; anything else, the empty string too, is true. Read any other way,
/// a client could open a terminal kubegate thinks has none.
fn query_bool(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// A fresh version 4 UUID, for a recording with no audit ID.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// What happens to an exec or attach session's recording.
pub enum Plan {
    /// Not recorded, and why.
    Off(Outcome),
    /// Recorded once the apiserver accepts the upgrade.
    Record(Box<Pending>),
}

impl Plan {
    /// The session has begun: `answer` is the apiserver's 101. `user` is
    /// who runs it, as the audit log names them.
    pub fn begin(self, answer: &HeaderMap, user: Option<String>) -> Recording {
        match self {
            Plan::Off(outcome) => Recording::off(outcome),
            Plan::Record(pending) => pending.begin(answer, user),
        }
    }
}

/// A recording's file, made before the session goes upstream.
pub struct Pending {
    recorder: Arc<Recorder>,
    session: cast::Session,
    file: Option<std::fs::File>,
    name: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Never begun (the apiserver refused the upgrade): no file left.
        if self.file.is_some() {
            self.recorder.store.discard(&self.name);
        }
    }
}

impl Pending {
    fn begin(mut self, answer: &HeaderMap, user: Option<String>) -> Recording {
        let text = |name| {
            answer
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .unwrap_or_default()
        };
        let upgrade = text(header::UPGRADE);
        let protocol = match text(header::SEC_WEBSOCKET_PROTOCOL) {
            "" => text(http::HeaderName::from_static("x-stream-protocol-version")),
            protocol => protocol,
        };
        let Some(framing) = Framing::of(upgrade, protocol) else {
            return Recording::off(Outcome::Off(format!(
                "kubegate cannot read the {upgrade} upgrade"
            )));
        };
        self.session.protocol = protocol.to_string();
        self.session.user = user;
        let Some(file) = self.file.take() else {
            return Recording::off(Outcome::Off("no file".into()));
        };
        let recorder = self.recorder.clone();
        let refuse = recorder.settings.failure == FailureMode::Refuse;
        let (queue, chunks) = mpsc::unbounded_channel();
        let cut = CancellationToken::new();
        let control = Arc::new(Control {
            queued: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            refuse,
            cut: cut.clone(),
        });
        let tap = Tap(Arc::new(TapInner {
            queue,
            began: Instant::now(),
            control: control.clone(),
        }));
        let (done, summary) = oneshot::channel();
        // The writer holds no sender: its queue closes when the relay's
        // taps are gone.
        let writer = Writer {
            recorder,
            name: std::mem::take(&mut self.name),
            framing,
            control,
        };
        let session = std::mem::take(&mut self.session);
        let name = writer.name.clone();
        let began = jiff::Timestamp::now().as_second();
        // A thread of its own for as long as the session lasts: not one of
        // the runtime's blocking threads, which others need for moments.
        let spawned = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let _ = done.send(writer.run(file, session, began, chunks));
            });
        if let Err(error) = spawned {
            return Recording::off(Outcome::Incomplete(format!(
                "cannot start the recorder: {error}"
            )));
        }
        Recording {
            tap: Some(tap),
            cut,
            summary: Some(summary),
            name: Some(name),
            outcome: None,
        }
    }
}

/// One chunk the relay moved, with when.
enum Chunk {
    Moved {
        at: f64,
        direction: Direction,
        bytes: Bytes,
    },
    /// The recording stops here, and why.
    Stop(String),
}

/// Where the relay hands its copies: cheap to clone, never waits.
#[derive(Clone)]
pub struct Tap(Arc<TapInner>);

struct TapInner {
    queue: mpsc::UnboundedSender<Chunk>,
    began: Instant,
    control: Arc<Control>,
}

/// What the relay's taps and the writer share.
struct Control {
    /// Bytes in the queue.
    queued: AtomicUsize,
    /// Nothing more is recorded.
    stopped: AtomicBool,
    /// `--record-failure=refuse`: a recording that stops ends its session.
    refuse: bool,
    /// Ends the session.
    cut: CancellationToken,
}

impl Tap {
    /// A copy of `bytes`, which moved `direction`, for the recording.
    pub fn copy(&self, direction: Direction, bytes: &[u8]) {
        let inner = &*self.0;
        let control = &*inner.control;
        if bytes.is_empty() || control.stopped.load(Ordering::Relaxed) {
            return;
        }
        let cost = bytes.len() + CHUNK_OVERHEAD;
        let queued = control.queued.fetch_add(cost, Ordering::AcqRel);
        if queued + cost > QUEUE_LIMIT {
            let why = format!(
                "the recorder fell {} MiB behind the session",
                QUEUE_LIMIT >> 20
            );
            if control.stop(&why) {
                let _ = inner.queue.send(Chunk::Stop(why));
            }
            return;
        }
        let at = inner.began.elapsed().as_secs_f64();
        let bytes = Bytes::copy_from_slice(bytes);
        let _ = inner.queue.send(Chunk::Moved {
            at,
            direction,
            bytes,
        });
    }
}

impl Control {
    /// Stops the recording for good; with `refuse`, the session too.
    /// `false` if it had stopped already.
    fn stop(&self, why: &str) -> bool {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.refuse {
            tracing::warn!(%why, "recording failed: the session is cut (--record-failure=refuse)");
            self.cut.cancel();
        } else {
            tracing::warn!(%why, "recording stopped; the session goes on (--record-failure=continue)");
        }
        true
    }
}

/// A session's recording, from the relay's side.
pub struct Recording {
    tap: Option<Tap>,
    cut: CancellationToken,
    summary: Option<oneshot::Receiver<Summary>>,
    /// The file's name under the directory.
    name: Option<String>,
    /// Set when it was never begun.
    outcome: Option<Outcome>,
}

/// A recording as its session ends.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Its name under the directory; `None` when there is no file.
    pub name: Option<String>,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of what was written, hex.
    pub sha256: String,
    pub outcome: Outcome,
    /// The command's exit code, when the apiserver said.
    pub exit_code: Option<i32>,
}

impl Recording {
    fn off(outcome: Outcome) -> Recording {
        Recording {
            tap: None,
            cut: CancellationToken::new(),
            summary: None,
            name: None,
            outcome: Some(outcome),
        }
    }

    /// Where the relay copies what it moves; `None` when not recording.
    pub fn tap(&self) -> Option<Tap> {
        self.tap.clone()
    }

    /// Cancelled when the recording has failed with
    /// `--record-failure=refuse`: the session must end.
    pub fn cut(&self) -> CancellationToken {
        self.cut.clone()
    }

    /// Waits for the file to be closed (a while at most) and says how it
    /// ended. The relay must have dropped its taps.
    pub async fn finish(mut self, metrics: &Telemetry) -> Summary {
        drop(self.tap.take());
        let summary = match (self.summary.take(), self.outcome.take()) {
            (Some(summary), _) => match tokio::time::timeout(CLOSE_WAIT, summary).await {
                Ok(Ok(summary)) => summary,
                _ => Summary {
                    name: self.name.take(),
                    ..Summary::off(Outcome::Incomplete(format!(
                        "still being written {} s after the session ended",
                        CLOSE_WAIT.as_secs()
                    )))
                },
            },
            (None, outcome) => Summary::off(outcome.unwrap_or(Outcome::Off(String::new()))),
        };
        metrics.recording(summary.outcome.label(), summary.bytes);
        summary
    }
}

impl Summary {
    /// Annotates `record` with how the recording ended.
    pub fn annotate(&self, record: &Record) {
        record.annotate("kubegate.io/recording-status", self.outcome.annotation());
        if let Some(name) = &self.name {
            record.annotate("kubegate.io/recording", name.clone());
        }
        if !self.sha256.is_empty() {
            record.annotate("kubegate.io/recording-bytes", self.bytes.to_string());
            record.annotate("kubegate.io/recording-sha256", self.sha256.clone());
        }
        if let Some(code) = self.exit_code {
            record.annotate("kubegate.io/exit-code", code.to_string());
        }
    }

    fn off(outcome: Outcome) -> Summary {
        Summary {
            name: None,
            bytes: 0,
            sha256: String::new(),
            outcome,
            exit_code: None,
        }
    }
}

/// The thread that writes one recording.
struct Writer {
    recorder: Arc<Recorder>,
    name: String,
    framing: Framing,
    control: Arc<Control>,
}

impl Writer {
    fn run(
        self,
        file: std::fs::File,
        session: cast::Session,
        timestamp: i64,
        mut chunks: mpsc::UnboundedReceiver<Chunk>,
    ) -> Summary {
        let store = &self.recorder.store;
        let settings = &self.recorder.settings;
        let sink = Hashed {
            out: BufWriter::with_capacity(64 * 1024, file),
            digest: Context::new(&SHA256),
            bytes: 0,
        };
        let mut cast = cast::Cast::new(sink, session, timestamp);
        let mut events = Events::new(self.framing, settings.stdin);
        let mut outcome = Outcome::Complete;
        let mut at = 0.0;
        let mut checked = 0;
        while let Some(chunk) = chunks.blocking_recv() {
            let (moved_at, direction, bytes) = match chunk {
                Chunk::Moved {
                    at,
                    direction,
                    bytes,
                } => (at, direction, bytes),
                Chunk::Stop(why) => {
                    self.halt(&mut cast, &mut outcome, at, Outcome::Incomplete(why));
                    continue;
                }
            };
            let cost = bytes.len() + CHUNK_OVERHEAD;
            self.control.queued.fetch_sub(cost, Ordering::AcqRel);
            if outcome != Outcome::Complete {
                continue;
            }
            at = moved_at;
            let before = cast.writer().bytes;
            let fed = events.feed(&mut cast, at, direction, &bytes);
            let written = cast.writer().bytes;
            store.wrote(written - before);
            if let Err(why) = fed {
                self.halt(&mut cast, &mut outcome, at, Outcome::Incomplete(why));
            } else if written > settings.max_bytes {
                self.halt(&mut cast, &mut outcome, at, Outcome::Truncated);
            } else if written - checked >= CHECK_EVERY {
                checked = written;
                if let Some(why) = store.problem() {
                    self.halt(&mut cast, &mut outcome, at, Outcome::Incomplete(why));
                }
            }
            if chunks.is_empty()
                && let Err(error) = cast.flush()
            {
                let why = format!("cannot write the recording: {error}");
                self.halt(&mut cast, &mut outcome, at, Outcome::Incomplete(why));
            }
        }
        if outcome == Outcome::Complete
            && let Some(code) = cast::exit_code(&events.status)
        {
            let _ = cast.exit(at, code);
        }
        let exit_code = cast::exit_code(&events.status);
        let before = cast.writer().bytes;
        let finished = cast.finish(at).and_then(|sink| {
            store.wrote(sink.bytes - before);
            let (file, digest, bytes) = sink.into_parts()?;
            file.sync_all()?;
            Ok((digest, bytes))
        });
        let (sha256, bytes) = match finished {
            Ok(done) => done,
            Err(error) => {
                outcome = Outcome::Incomplete(format!("cannot write the recording: {error}"));
                (String::new(), 0)
            }
        };
        if let Err(error) = store.complete(&self.name) {
            outcome = Outcome::Incomplete(format!("cannot rename the recording: {error}"));
        }
        Summary {
            name: Some(self.name),
            bytes,
            sha256,
            outcome,
            exit_code,
        }
    }
}

impl Writer {
    /// Ends the recording `to`, with a marker saying why, unless it has
    /// ended already.
    fn halt<W: Write>(
        &self,
        cast: &mut cast::Cast<W>,
        outcome: &mut Outcome,
        at: f64,
        to: Outcome,
    ) {
        if *outcome != Outcome::Complete {
            return;
        }
        let why = match &to {
            Outcome::Incomplete(why) => why.clone(),
            _ => format!(
                "the session passed --record-maxsize ({} MiB)",
                self.recorder.settings.max_bytes >> 20
            ),
        };
        let _ = cast.marker(at, &format!("kubegate: recording stopped: {why}"));
        self.control.stop(&why);
        *outcome = to;
    }
}

/// Turns channel data into events.
pub(crate) struct Events {
    demux: Demux,
    sizes: Sizes,
    /// The error channel so far.
    status: Vec<u8>,
    stdin: bool,
}

impl Events {
    /// Nothing read yet; `stdin` records what the client types.
    pub(crate) fn new(framing: Framing, stdin: bool) -> Self {
        Events {
            demux: Demux::new(framing, stdin),
            sizes: Sizes::default(),
            status: Vec::new(),
            stdin,
        }
    }

    /// Writes the events `bytes`, which moved `direction` at `at`, make.
    pub(crate) fn feed<W: Write>(
        &mut self,
        cast: &mut cast::Cast<W>,
        at: f64,
        direction: Direction,
        bytes: &[u8],
    ) -> Result<(), String> {
        let mut failed = None;
        let (sizes, status, stdin) = (&mut self.sizes, &mut self.status, self.stdin);
        self.demux
            .feed(direction, bytes, &mut |channel, data| {
                let written = match channel {
                    Channel::Stdout => cast.output(at, cast::Output::Stdout, data),
                    Channel::Stderr => cast.output(at, cast::Output::Stderr, data),
                    Channel::Stdin if stdin => cast.input(at, data),
                    Channel::Stdin => Ok(()),
                    Channel::Resize => sizes
                        .feed(data)
                        .into_iter()
                        .try_for_each(|size| cast.resize(at, size.width, size.height)),
                    Channel::Error => {
                        let room = MAX_STATUS.saturating_sub(status.len());
                        status.extend_from_slice(&data[..data.len().min(room)]);
                        Ok(())
                    }
                };
                if let Err(error) = written
                    && failed.is_none()
                {
                    failed = Some(format!("cannot write the recording: {error}"));
                }
            })
            .map_err(|error| format!("kubegate cannot read the session: {error}"))?;
        failed.map_or(Ok(()), Err)
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashed<W: Write> {
    out: BufWriter<W>,
    digest: Context,
    bytes: u64,
}

impl Hashed<std::fs::File> {
    fn into_parts(self) -> io::Result<(std::fs::File, String, u64)> {
        let file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        let digest = self.digest.finish();
        let hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok((file, hex, self.bytes))
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = self.out.write(data)?;
        self.digest.update(&data[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(name: &str, non_interactive: bool) -> Arc<Recorder> {
        let dir =
            std::env::temp_dir().join(format!("kubegate-recorder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = Settings {
            dir: dir.clone(),
            non_interactive,
            stdin: false,
            max_bytes: 1 << 20,
            quota: 0,
            min_free: 0,
            max_age: Duration::ZERO,
            failure: FailureMode::Continue,
            serve: false,
        };
        Arc::new(Recorder {
            store: Store::open(&dir, 0, 0).unwrap(),
            settings,
            metrics: Arc::default(),
        })
    }

    fn resource(subresource: &'static str) -> Resource<'static> {
        Resource {
            group: "",
            version: "v1",
            namespace: "default",
            resource: "pods",
            subresource,
            name: "web",
        }
    }

    fn plan(recorder: &Arc<Recorder>, subresource: &'static str, query: &str) -> Option<Plan> {
        recorder.plan(&resource(subresource), query, None).unwrap()
    }

    #[test]
    fn tty_is_read_as_the_apiserver_reads_it() {
        let recorder = recorder("tty", false);
        for (query, tty) in [
            ("command=sh", false),
            ("command=sh&tty=1", true),
            ("command=sh&tty=true", true),
            ("command=sh&tty=True", true),
            ("command=sh&tty=yes", true),
            ("command=sh&tty=", true),
            ("command=sh&tty=false", false),
            ("command=sh&tty=FALSE", false),
            ("command=sh&tty=0", false),
            // The first value counts.
            ("command=sh&tty=1&tty=0", true),
            ("command=sh&tty=0&tty=1", false),
        ] {
            let recorded = matches!(plan(&recorder, "exec", query), Some(Plan::Record(_)));
            assert_eq!(recorded, tty, "{query}");
        }
    }

    #[test]
    fn a_repeated_command_keeps_its_order_and_the_rest_is_read() {
        let recorder = recorder("argv", true);
        let query = "command=sh&container=app&command=-c&stdin=1&command=echo%20a%26b&container=x";
        let Some(Plan::Record(pending)) = plan(&recorder, "attach", query) else {
            panic!("recorded");
        };
        assert_eq!(pending.session.argv, ["sh", "-c", "echo a&b"]);
        assert_eq!(pending.session.container.as_deref(), Some("app"));
        assert_eq!(pending.session.subresource, "attach");
        assert!(pending.session.stdin && !pending.session.tty);
    }

    #[test]
    fn port_forward_and_anything_but_pods_exec_and_attach_are_never_recorded() {
        let recorder = recorder("never", true);
        assert!(plan(&recorder, "portforward", "ports=80").is_none());
        assert!(plan(&recorder, "log", "").is_none());
        let other = Resource {
            resource: "nodes",
            ..resource("proxy")
        };
        assert!(recorder.plan(&other, "", None).unwrap().is_none());
    }

    /// A tap whose writer never reads: the queue that would grow without
    /// bound.
    fn unread_tap(refuse: bool) -> (Tap, mpsc::UnboundedReceiver<Chunk>, Arc<Control>) {
        let (queue, unread) = mpsc::unbounded_channel();
        let control = Arc::new(Control {
            queued: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            refuse,
            cut: CancellationToken::new(),
        });
        let tap = Tap(Arc::new(TapInner {
            queue,
            began: Instant::now(),
            control: control.clone(),
        }));
        (tap, unread, control)
    }

    #[test]
    fn a_writer_that_never_reads_stops_the_recording_never_the_relay() {
        for refuse in [false, true] {
            let (tap, mut unread, control) = unread_tap(refuse);
            let chunk = vec![b'x'; 64 * 1024];
            // 50 MiB: every copy returns at once (nothing here can wait).
            for _ in 0..800 {
                tap.copy(Direction::ToClient, &chunk);
            }
            assert!(control.stopped.load(Ordering::Acquire));
            assert!(control.queued.load(Ordering::Acquire) <= QUEUE_LIMIT + chunk.len());
            assert_eq!(control.cut.is_cancelled(), refuse, "cut only with refuse");
            let mut queued = 0;
            let mut stops = Vec::new();
            while let Ok(chunk) = unread.try_recv() {
                match chunk {
                    Chunk::Moved { bytes, .. } => queued += bytes.len(),
                    Chunk::Stop(why) => stops.push(why),
                }
            }
            assert!(queued <= QUEUE_LIMIT, "bounded: {queued}");
            assert_eq!(stops.len(), 1);
            assert!(stops[0].contains("fell 32 MiB behind"), "{stops:?}");
        }
    }
}
