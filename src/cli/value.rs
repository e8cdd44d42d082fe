//! Flag values parsed to their final types while clap reads the command
//! line. A bad value does not stop clap (which would report only the first):
//! it is kept as a [`Checked`] value with its one error line, and
//! [`crate::config`] reports every bad flag at once.

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use secrecy::SecretString;

use crate::error::StartupError;
use crate::pattern::PatternList;

/// A flag's value, or the line that says what is wrong with it.
#[derive(Debug, Clone)]
pub struct Checked<T>(Result<T, StartupError>);

impl<T: Clone> Checked<T> {
    /// The value, or its error line.
    ///
    /// # Errors
    ///
    /// The flag's [`StartupError::Flag`] when the value was bad.
    pub fn get(&self) -> Result<T, StartupError> {
        self.0.clone()
    }
}

impl<T> Checked<T> {
    /// A value known to be good (defaults, tests).
    pub fn valid(value: T) -> Self {
        Checked(Ok(value))
    }
}

/// A clap value parser that reads a flag's text with `read` and never
/// fails, keeping a bad value's message for [`crate::config`].
#[derive(Clone, Copy)]
pub struct Check<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Check<T> {
    type Value = Checked<T>;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Checked<T>, clap::Error> {
        // Not text at all is clap's own error, as for any string flag.
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidUtf8).with_cmd(command))?;
        let flag = arg.and_then(clap::Arg::get_long).unwrap_or_default();
        Ok(Checked(
            (self.0)(text).map_err(|message| StartupError::flag(flag, message)),
        ))
    }
}

/// A Go duration that may be zero (`0`, `10s`, `1m30s`, `500ms`).
pub fn duration() -> Check<Duration> {
    Check(|text| match go_duration(text)? {
        Some(duration) => Ok(duration),
        None => Err(format!("{text:?} is negative; give a duration like 10s")),
    })
}

/// A Go duration that closes something after it: zero would close it at once.
pub fn deadline() -> Check<Duration> {
    Check(|text| match (duration().0)(text)? {
        zero if zero.is_zero() => Err(format!(
            "{text:?} would close every connection at once; give a duration like 30s"
        )),
        duration => Ok(duration),
    })
}

/// kubectl's `--keepalive`: 0 is Go's default (15 s), a negative value
/// turns keep-alive off (`None`).
pub fn keepalive() -> Check<Option<Duration>> {
    Check(|text| {
        Ok(match go_duration(text)? {
            Some(zero) if zero.is_zero() => Some(Duration::from_secs(15)),
            other => other,
        })
    })
}

/// kubectl's comma-separated regexes, matched as substring searches.
pub fn patterns() -> Check<PatternList> {
    Check(PatternList::parse)
}

/// Comma-separated regexes that must match the whole text.
pub fn whole_patterns() -> Check<PatternList> {
    Check(PatternList::parse_whole)
}

/// An IP address to listen on.
pub fn ip() -> Check<IpAddr> {
    Check(|text| {
        text.parse()
            .map_err(|_| format!("{text:?} is not an IP address; use e.g. 127.0.0.1 or ::1"))
    })
}

/// An IP address and port to listen on.
pub fn socket_address() -> Check<SocketAddr> {
    Check(|text| {
        text.parse().map_err(|_| {
            format!("{text:?} is not HOST:PORT with an IP address; use e.g. 127.0.0.1:8002")
        })
    })
}

/// A URL path prefix, with the leading and trailing `/` it is matched with.
pub fn prefix(text: &str) -> Result<String, std::convert::Infallible> {
    let mut prefix = text.to_string();
    if !prefix.starts_with('/') {
        prefix.insert(0, '/');
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok(prefix)
}

/// A credential: kept out of `Debug` output, wiped when dropped.
pub fn secret(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text))
}

/// Parses a Go duration (`0`, `10s`, `1m30s`, `500ms`, `-1s`); `None` when
/// it is negative.
fn go_duration(text: &str) -> Result<Option<Duration>, String> {
    let fail = || format!("{text:?} is not a duration; write it like 10s, 1m30s or 500ms");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(fail());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(fail)?;
        let number: f64 = rest[..digits].parse().map_err(|_| fail())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(fail()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| fail())?;
    }
    Ok((!negative).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let d = |t| go_duration(t).unwrap();
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("10s"), Some(Duration::from_secs(10)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("-1s"), None);
        for bad in ["", "10", "s", "10x", "1m30"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keepalive_zero_is_gos_default_and_negative_is_off() {
        let k = |t| (keepalive().0)(t).unwrap();
        assert_eq!(k("0"), Some(Duration::from_secs(15)));
        assert_eq!(k("30s"), Some(Duration::from_secs(30)));
        assert_eq!(k("-1s"), None);
    }

    #[test]
    fn prefixes_get_their_slashes() {
        let p = |t| prefix(t).unwrap();
        assert_eq!(p("/"), "/");
        assert_eq!(p("custom"), "/custom/");
        assert_eq!(p("/static"), "/static/");
    }
}
