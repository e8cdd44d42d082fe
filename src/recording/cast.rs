//! asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>): one
//! JSON header line, then one JSON array per event. What the session's
//! channels carried becomes `o`, `i`, `r`, `m` and a final `x` event.
//!
//! The header waits for the session's first event: a terminal's first
//! resize gives its size; output before any resize gets 80×24 and any
//! later size an `r` event.

use std::borrow::Cow;
use std::io::{self, Write};

use serde::Serialize;

/// The `kubegate` object in the header: what the session was.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Session {
    /// The audit ID (also the file's name).
    pub audit_id: String,
    /// Who ran it, as the audit log names them.
    pub user: Option<String>,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    /// `exec` or `attach`.
    pub subresource: String,
    /// The `command` query parameters, in order.
    pub argv: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    /// The negotiated subprotocol.
    pub protocol: String,
}

#[derive(Serialize)]
struct Header<'a> {
    version: u8,
    width: u16,
    height: u16,
    timestamp: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    command: &'a str,
    title: &'a str,
    kubegate: &'a Session,
}

/// The terminal size assumed until the client sends one.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Which output stream bytes came from: each has its own UTF-8 decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A recording being written to `out`.
pub struct Cast<W: Write> {
    out: W,
    session: Session,
    /// Unix seconds when the session began.
    timestamp: i64,
    header_written: bool,
    /// Seconds since the session began of the last event: times never go
    /// backwards.
    last: f64,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
    stdin: Utf8Stream,
    line: Vec<u8>,
}

impl<W: Write> Cast<W> {
    /// A recording of `session`, which began at `timestamp` (Unix
    /// seconds).
    pub fn new(out: W, session: Session, timestamp: i64) -> Self {
        Cast {
            out,
            session,
            timestamp,
            header_written: false,
            last: 0.0,
            stdout: Utf8Stream::default(),
            stderr: Utf8Stream::default(),
            stdin: Utf8Stream::default(),
            line: Vec::with_capacity(256),
        }
    }

    /// Bytes the pod wrote to stdout or stderr, `at` seconds in.
    pub fn output(&mut self, at: f64, stream: Output, bytes: &[u8]) -> io::Result<()> {
        let decoder = match stream {
            Output::Stdout => &mut self.stdout,
            Output::Stderr => &mut self.stderr,
        };
        let mut text = decoder.decode(bytes);
        if !self.session.tty {
            text = crlf(text);
        }
        self.event(at, "o", &text)
    }

    /// Bytes the client typed.
    pub fn input(&mut self, at: f64, bytes: &[u8]) -> io::Result<()> {
        let text = self.stdin.decode(bytes);
        self.event(at, "i", &text)
    }

    /// The client's terminal is now `cols` wide and `rows` high.
    pub fn resize(&mut self, at: f64, cols: u16, rows: u16) -> io::Result<()> {
        if !self.header_written {
            return self.header((cols, rows));
        }
        self.event(at, "r", &format!("{cols}x{rows}"))
    }

    /// A note in the timeline (asciicast's marker).
    pub fn marker(&mut self, at: f64, label: &str) -> io::Result<()> {
        self.event(at, "m", label)
    }

    /// The command's exit code, the last event.
    pub fn exit(&mut self, at: f64, code: i32) -> io::Result<()> {
        self.flush_decoders(at)?;
        self.event(at, "x", &code.to_string())
    }

    /// Writes what the decoders still hold (an incomplete character ends
    /// as U+FFFD) and the header if nothing came; returns the writer.
    pub fn finish(mut self, at: f64) -> io::Result<W> {
        self.flush_decoders(at)?;
        if !self.header_written {
            self.header(DEFAULT_SIZE)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// The characters the streams ended inside of, as U+FFFD.
    fn flush_decoders(&mut self, at: f64) -> io::Result<()> {
        for stream in [Output::Stdout, Output::Stderr] {
            let decoder = match stream {
                Output::Stdout => &mut self.stdout,
                Output::Stderr => &mut self.stderr,
            };
            if decoder.pending() {
                let text = decoder.flush();
                self.event(at, "o", &text)?;
            }
        }
        if self.stdin.pending() {
            let text = self.stdin.flush();
            self.event(at, "i", &text)?;
        }
        Ok(())
    }

    /// Hands what is buffered to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer, for what it has counted.
    pub fn writer(&self) -> &W {
        &self.out
    }

    fn header(&mut self, (width, height): (u16, u16)) -> io::Result<()> {
        let command = self.session.argv.join(" ");
        let title = format!(
            "{}/{}{} {}",
            self.session.namespace,
            self.session.pod,
            self.session
                .container
                .as_deref()
                .map(|c| format!("/{c}"))
                .unwrap_or_default(),
            self.session.subresource
        );
        let header = Header {
            version: 2,
            width,
            height,
            timestamp: self.timestamp,
            command: &command,
            title: &title,
            kubegate: &self.session,
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &header)?;
        self.line.push(b'\n');
        self.header_written = true;
        self.out.write_all(&self.line)
    }

    fn event(&mut self, at: f64, code: &str, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if !self.header_written {
            self.header(DEFAULT_SIZE)?;
        }
        self.last = self.last.max(at);
        self.line.clear();
        write!(self.line, "[{:.6}, \"{code}\", ", self.last)?;
        serde_json::to_writer(&mut self.line, text)?;
        self.line.extend_from_slice(b"]\n");
        self.out.write_all(&self.line)
    }
}

/// `\n` not after `\r` becomes `\r\n`: without a terminal nothing turns
/// one into the other, and a player would draw a staircase.
fn crlf(text: Cow<'_, str>) -> Cow<'_, str> {
    let lone = |line: &str| line.ends_with('\n') && !line.ends_with("\r\n");
    if !text.split_inclusive('\n').any(lone) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(body) if lone(line) => {
                out.push_str(body);
                out.push_str("\r\n");
            }
            _ => out.push_str(line),
        }
    }
    Cow::Owned(out)
}

/// Decodes a byte stream as UTF-8 across reads: a character split between
/// two reads is kept whole, invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character the last read ended inside (≤ 3 bytes).
    partial: Vec<u8>,
}

impl Utf8Stream {
    /// The text `bytes` complete.
    pub fn decode<'a>(&mut self, bytes: &'a [u8]) -> Cow<'a, str> {
        if self.partial.is_empty()
            && let Ok(text) = std::str::from_utf8(bytes)
        {
            return Cow::Borrowed(text);
        }
        let joined;
        let mut input = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut text = String::with_capacity(input.len());
        loop {
            match std::str::from_utf8(input) {
                Ok(valid) => {
                    text.push_str(valid);
                    return Cow::Owned(text);
                }
                Err(error) => {
                    let (valid, rest) = input.split_at(error.valid_up_to());
                    // Checked just now by from_utf8.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            input = &rest[bad..];
                        }
                        None => {
                            // The input ends inside a character.
                            self.partial.extend_from_slice(rest);
                            return Cow::Owned(text);
                        }
                    }
                }
            }
        }
    }

    /// Whether a character is waiting for its last bytes.
    pub fn pending(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The stream ended: a character cut short is U+FFFD.
    pub fn flush(&mut self) -> String {
        if self.partial.is_empty() {
            return String::new();
        }
        self.partial.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }
}

/// The exit code in what the error channel carried (protocols v4 and v5:
/// a `metav1.Status`): `Success` is 0, `NonZeroExitCode` carries its code
/// in an `ExitCode` cause; anything else says no code.
pub fn exit_code(status: &[u8]) -> Option<i32> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: Option<String>,
        reason: Option<String>,
        details: Option<Details>,
    }
    #[derive(serde::Deserialize)]
    struct Details {
        #[serde(default)]
        causes: Vec<Cause>,
    }
    #[derive(serde::Deserialize)]
    struct Cause {
        reason: Option<String>,
        message: Option<String>,
    }
    let status: Status = serde_json::from_slice(status).ok()?;
    if status.status.as_deref() == Some("Success") {
        return Some(0);
    }
    if status.reason.as_deref() != Some("NonZeroExitCode") {
        return None;
    }
    status
        .details?
        .causes
        .iter()
        .find(|cause| cause.reason.as_deref() == Some("ExitCode"))?
        .message
        .as_deref()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(tty: bool) -> Session {
        Session {
            audit_id: "id".into(),
            namespace: "default".into(),
            pod: "web".into(),
            container: Some("app".into()),
            subresource: "exec".into(),
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            tty,
            stdin: true,
            protocol: "v5.channel.k8s.io".into(),
            ..Session::default()
        }
    }

    fn lines(cast: Cast<Vec<u8>>) -> Vec<serde_json::Value> {
        let bytes = cast.finish(99.0).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|line| {
                assert!(!line.is_empty(), "no blank lines");
                serde_json::from_str(line).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_character_split_across_reads_is_kept_whole_in_each_stream() {
        let snowman = "☃".as_bytes(); // 3 bytes
        let clef = "𝄞".as_bytes(); // 4 bytes
        for split in 1..4 {
            let mut cast = Cast::new(Vec::new(), session(true), 0);
            cast.output(0.1, Output::Stdout, &clef[..split]).unwrap();
            // stderr's decoder is its own: this does not complete stdout's.
            cast.output(0.2, Output::Stderr, &snowman[..1]).unwrap();
            cast.output(0.3, Output::Stdout, &clef[split..]).unwrap();
            cast.output(0.4, Output::Stderr, &snowman[1..]).unwrap();
            let lines = lines(cast);
            let text: Vec<&str> = lines[1..].iter().map(|e| e[2].as_str().unwrap()).collect();
            assert_eq!(text, ["𝄞", "☃"], "split {split}+{}", 4 - split);
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_a_cut_character_too() {
        let mut decoder = Utf8Stream::default();
        assert_eq!(decoder.decode(b"a\xffb\xe2\x98"), "a\u{fffd}b");
        assert!(decoder.pending());
        assert_eq!(decoder.flush(), "\u{fffd}");
        assert_eq!(decoder.decode(b"\x80ok"), "\u{fffd}ok");
    }

    #[test]
    fn every_line_is_json_and_times_never_go_back() {
        let mut cast = Cast::new(Vec::new(), session(true), 1_700_000_000);
        cast.resize(0.0, 120, 40).unwrap();
        cast.output(0.5, Output::Stdout, b"$ ").unwrap();
        cast.input(0.4, b"ls\r").unwrap();
        cast.resize(0.7, 100, 30).unwrap();
        cast.marker(0.8, "note").unwrap();
        cast.exit(0.9, 3).unwrap();
        let lines = lines(cast);
        let header = &lines[0];
        assert_eq!(header["version"], 2);
        assert_eq!(
            (header["width"].as_u64(), header["height"].as_u64()),
            (Some(120), Some(40))
        );
        assert_eq!(header["timestamp"], 1_700_000_000);
        assert_eq!(header["command"], "sh -c echo hi");
        assert_eq!(header["title"], "default/web/app exec");
        assert_eq!(header["kubegate"]["argv"][2], "echo hi");
        let events: Vec<(f64, &str, &str)> = lines[1..]
            .iter()
            .map(|e| {
                (
                    e[0].as_f64().unwrap(),
                    e[1].as_str().unwrap(),
                    e[2].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                (0.5, "o", "$ "),
                (0.5, "i", "ls\r"),
                (0.7, "r", "100x30"),
                (0.8, "m", "note"),
                (0.9, "x", "3")
            ]
        );
    }

    #[test]
    fn output_before_any_size_gets_80_by_24_and_the_size_comes_later() {
        let mut cast = Cast::new(Vec::new(), session(true), 0);
        cast.output(0.1, Output::Stdout, b"hi").unwrap();
        cast.resize(0.2, 132, 43).unwrap();
        let lines = lines(cast);
        assert_eq!(
            (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert_eq!(lines[2][2], "132x43");
    }

    #[test]
    fn without_a_terminal_newlines_return_the_carriage() {
        let mut cast = Cast::new(Vec::new(), session(false), 0);
        cast.output(0.1, Output::Stdout, b"a\nb\r\n").unwrap();
        let lines = lines(cast);
        assert_eq!(lines[1][2], "a\r\nb\r\n");
    }

    #[test]
    fn a_session_with_no_events_still_has_its_header() {
        let lines = lines(Cast::new(Vec::new(), session(false), 0));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["width"], 80);
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#), Some(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 42], exit code 42","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        assert_eq!(exit_code(failed), Some(42));
        let other = br#"{"metadata":{},"status":"Failure","message":"container not found","reason":"InternalError"}"#;
        assert_eq!(exit_code(other), None);
        assert_eq!(exit_code(b"plain text error (v1)"), None);
    }
}
