//! What kubegate logs, and how.

/// Log format and level.
#[derive(Debug, Clone, clap::Args)]
pub struct LoggingFlags {
    /// kubegate: log as human-readable text or as one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        display_order = 60
    )]
    pub log_format: LogFormat,

    /// Log level as kubectl counts it: 0 start-up and warnings, 1 also one
    /// line per request, 4 debug, 6 and above trace.
    #[arg(
        short = 'v',
        long = "v",
        default_value_t = 0,
        value_name = "LEVEL",
        global = true,
        display_order = 75
    )]
    pub verbosity: u8,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}
