//! Session recordings: `--record-*`.

use std::path::PathBuf;

use super::AuditFailure;

/// Which exec and attach sessions are recorded, where, and the limits.
#[derive(Debug, Clone, clap::Args)]
pub struct RecordingFlags {
    /// Recordings: write exec and attach sessions with a terminal to this
    /// directory as asciicast v2 files (DIR/YYYY-MM-DD/AUDIT-ID.cast), linked
    /// from their audit events. Port-forward is never recorded.
    #[arg(long, value_name = "DIR", global = true, display_order = 76)]
    pub record_sessions_dir: Option<PathBuf>,

    /// Recordings: sessions without a terminal (tty=false) too.
    #[arg(long, global = true, display_order = 77)]
    pub record_non_interactive: bool,

    /// Recordings: what the client typed, as "i" events. This records
    /// passwords typed at prompts.
    #[arg(long, global = true, display_order = 78)]
    pub record_stdin: bool,

    /// Recordings: largest recording; past it the recording stops, marked
    /// truncated.
    #[arg(
        long,
        default_value_t = 64,
        value_name = "MB",
        global = true,
        display_order = 79
    )]
    pub record_maxsize: u64,

    /// Recordings: most the directory may hold (0: no quota).
    #[arg(
        long,
        default_value_t = 10240,
        value_name = "MB",
        global = true,
        display_order = 80
    )]
    pub record_quota: u64,

    /// Recordings: free space the directory's file system must keep.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "MB",
        global = true,
        display_order = 81
    )]
    pub record_min_free: u64,

    /// Recordings: delete recordings older than this many days (0: never).
    #[arg(
        long,
        default_value_t = 90,
        value_name = "DAYS",
        global = true,
        display_order = 82
    )]
    pub record_maxage: u64,

    /// Recordings: when a recording cannot be written (the writer falls
    /// behind, the size cap, the quota, a full disk), cut the session and
    /// refuse new recorded sessions with 503 while it lasts (refuse), or let
    /// the session go on unrecorded from there (continue).
    #[arg(long, default_value = "refuse", global = true, display_order = 83)]
    pub record_failure: AuditFailure,

    /// Recordings: serve the list at /kubegate/recordings and each file
    /// under it, behind the same host, origin and token checks as the API
    /// (for the browser console's player). On in `kubegate demo`.
    #[arg(long, global = true, display_order = 84)]
    pub serve_recordings: bool,
}
