//! `kubegate recordings list DIR` and `kubegate recordings play FILE`.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::store::PART;

/// One recording, from its header and its events.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    /// Unix seconds.
    pub timestamp: i64,
    pub user: String,
    /// `NAMESPACE/POD/CONTAINER`.
    pub target: String,
    pub command: String,
    /// complete, truncated, incomplete, or in progress (still `.part`).
    pub status: &'static str,
    pub bytes: u64,
}

/// The recordings under `dir` (`DAY/ID.cast`), oldest first.
///
/// # Errors
///
/// When `dir` cannot be read.
pub fn list(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut found = Vec::new();
    for day in std::fs::read_dir(dir)? {
        let day = day?;
        if !day.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(day.path())? {
            let path = file?.path();
            let name = path.to_string_lossy();
            let ours = name.ends_with(".cast") || name.ends_with(&format!(".cast{PART}"));
            if ours && let Ok(listed) = read(&path) {
                found.push(listed);
            }
        }
    }
    found.sort_by(|a, b| (a.timestamp, &a.path).cmp(&(b.timestamp, &b.path)));
    Ok(found)
}

/// How much of a recording's end is read for a stop marker: after one,
/// only what the decoders held is written.
const TAIL: u64 = 64 * 1024;

fn read(path: &Path) -> io::Result<Listed> {
    let bytes = std::fs::metadata(path)?.len();
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let header: Value = serde_json::from_str(&first).map_err(io::Error::other)?;
    let meta = &header["kubegate"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let target = [&meta["namespace"], &meta["pod"], &meta["container"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join("/");
    let mut status = if path.to_string_lossy().ends_with(PART) {
        "in progress"
    } else {
        "complete"
    };
    reader.seek(SeekFrom::Start(
        bytes.saturating_sub(TAIL).max(first.len() as u64),
    ))?;
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail)?;
    let tail = String::from_utf8_lossy(&tail);
    if tail.contains("\"m\", \"kubegate: recording stopped: the session passed --record-maxsize") {
        status = "truncated";
    } else if tail.contains("\"m\", \"kubegate: recording stopped") {
        status = "incomplete";
    }
    Ok(Listed {
        path: path.to_path_buf(),
        timestamp: header["timestamp"].as_i64().unwrap_or_default(),
        user: meta["user"].as_str().unwrap_or("-").to_string(),
        target,
        command: text(&header["command"]),
        status,
        bytes,
    })
}

/// Prints `recordings` as a table.
///
/// # Errors
///
/// When `out` cannot be written.
pub fn print_list(recordings: &[Listed], dir: &Path, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "TIME\tUSER\tPOD\tCOMMAND\tSTATUS\tSIZE\tFILE")?;
    for r in recordings {
        let time = jiff::Timestamp::from_second(r.timestamp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let file = r.path.strip_prefix(dir).unwrap_or(&r.path);
        writeln!(
            out,
            "{time}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.user,
            r.target,
            r.command,
            r.status,
            size(r.bytes),
            file.display()
        )?;
    }
    Ok(())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// Plays the output of the recording at `path` to `out` in its own time,
/// `speed` times faster, no pause longer than `idle_limit`.
///
/// # Errors
///
/// When the file cannot be read or is not asciicast v2.
pub fn play(path: &Path, speed: f64, idle_limit: Duration, out: &mut impl Write) -> io::Result<()> {
    let reader = BufReader::new(std::fs::File::open(path)?);
    let mut lines = reader.lines();
    let header: Value = serde_json::from_str(&lines.next().transpose()?.unwrap_or_default())
        .map_err(|error| {
            io::Error::other(format!("{}: not asciicast v2: {error}", path.display()))
        })?;
    if header["version"] != 2 {
        return Err(io::Error::other(format!(
            "{}: not asciicast v2",
            path.display()
        )));
    }
    let mut last = 0.0;
    for line in lines {
        let line = line?;
        let Ok((time, code, text)) = serde_json::from_str::<(f64, String, String)>(&line) else {
            continue;
        };
        if code != "o" {
            continue;
        }
        let pause = Duration::try_from_secs_f64(((time - last) / speed).max(0.0))
            .unwrap_or(idle_limit)
            .min(idle_limit);
        last = time;
        if !pause.is_zero() {
            out.flush()?;
            std::thread::sleep(pause);
        }
        out.write_all(text.as_bytes())?;
    }
    out.flush()
}
