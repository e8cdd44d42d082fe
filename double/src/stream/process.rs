//! The real process behind an exec or attach, and the `metav1.Status` the
//! error channel carries when it ends (what kubectl turns into an exit code).

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// What the client asked for, from the query string.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Whether stdin is streamed.
    pub stdin: bool,
    /// Whether stdout is streamed.
    pub stdout: bool,
    /// Whether stderr is streamed (merged into stdout with a TTY).
    pub stderr: bool,
    /// Whether a terminal was asked for (resize messages are then accepted).
    pub tty: bool,
}

impl ExecSpec {
    /// Reads `command`, `stdin`, `stdout`, `stderr` and `tty` query parameters.
    pub fn from_query(query: Option<&str>, default_command: &[&str]) -> Self {
        let mut spec = ExecSpec {
            command: Vec::new(),
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            let on = matches!(value.as_str(), "true" | "1");
            match key.as_ref() {
                "command" => spec.command.push(value),
                "stdin" => spec.stdin = on,
                "stdout" => spec.stdout = on,
                "stderr" => spec.stderr = on,
                "tty" => spec.tty = on,
                _ => {}
            }
        }
        if spec.command.is_empty() {
            spec.command = default_command.iter().map(|s| s.to_string()).collect();
        }
        spec
    }

    /// Starts the process with pipes for the streams that were asked for.
    ///
    /// # Errors
    ///
    /// The spawn error (e.g. no such command), for the error channel.
    pub fn spawn(&self) -> std::io::Result<Child> {
        let (program, args) = self.command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given")
        })?;
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        Command::new(program)
            .args(args)
            .stdin(pipe(self.stdin))
            .stdout(pipe(self.stdout))
            .stderr(pipe(self.stderr || (self.tty && self.stdout)))
            .kill_on_drop(true)
            .spawn()
    }
}

/// A process on a terminal: its output and input are the terminal's.
pub struct OnTerminal {
    /// The process.
    pub child: Child,
    /// What the process writes to its terminal.
    pub output: pty_process::OwnedReadPty,
    /// The keyboard side, which can also resize the terminal.
    pub input: pty_process::OwnedWritePty,
}

impl ExecSpec {
    /// Starts the process on a new pseudo-terminal, 80 × 24 until the
    /// client resizes it, as the kubelet's runtime does for `tty=true`.
    ///
    /// # Errors
    ///
    /// The spawn error, for the error channel.
    pub fn spawn_on_terminal(&self) -> std::io::Result<OnTerminal> {
        let (program, args) = self.command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given")
        })?;
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(24, 80))
            .map_err(std::io::Error::other)?;
        let child = pty_process::Command::new(program)
            .args(args)
            .env("TERM", "xterm-256color")
            .kill_on_drop(true)
            .spawn(pts)
            .map_err(std::io::Error::other)?;
        let (output, input) = pty.into_split();
        Ok(OnTerminal {
            child,
            output,
            input,
        })
    }
}

/// The v4+ error-channel payload for an exit code: `Success`, or a
/// `NonZeroExitCode` failure whose `ExitCode` cause kubectl exits with.
pub fn exit_status(command: &[String], code: Option<i32>) -> Value {
    match code {
        Some(0) => json!({ "metadata": {}, "status": "Success" }),
        Some(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        }),
        None => failure("command terminated by a signal"),
    }
}

/// A failure before or around the process (no such command, …).
pub fn failure(message: &str) -> Value {
    json!({ "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError" })
}
