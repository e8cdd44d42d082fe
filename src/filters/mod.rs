//! kubectl proxy's filters: the `Host`, path and method regexes of
//! `--accept-hosts`, `--accept-paths`, `--reject-paths` and
//! `--reject-methods`, with kubectl's meaning, applied to the request as
//! [`crate::request`] read it. Pure functions of the request head, built
//! once at start-up; nothing here does I/O.

use std::fmt;

use crate::pattern::PatternList;
use crate::request::RequestInfo;

/// The filters, as kubectl proxy's flags set them.
#[derive(Debug, Clone)]
pub struct Filters {
    /// `--accept-hosts`: the `Host` header (port removed) must match one.
    pub accept_hosts: PatternList,
    /// `--accept-paths`: the canonical path must match one.
    pub accept_paths: PatternList,
    /// `--reject-paths`: a path matching one is refused, whatever else allows it.
    pub reject_paths: PatternList,
    /// `--reject-methods`: a method matching one is refused.
    pub reject_methods: PatternList,
    /// `--disable-filter`: every check passes.
    pub disabled: bool,
}

/// A request the filters refused, and which flag refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denial {
    /// The flag whose value refused the request.
    pub flag: &'static str,
    /// What was checked: the host, path or method.
    pub subject: String,
    /// The pattern that matched, for the reject flags.
    pub pattern: Option<String>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Denial {
            flag,
            subject,
            pattern,
        } = self;
        match (*flag, pattern) {
            ("accept-hosts", _) => write!(
                f,
                "host {subject:?} matches no --accept-hosts pattern (the Host header is checked to stop DNS rebinding); add a pattern for it to --accept-hosts if you own that name"
            ),
            ("accept-origins", _) => write!(
                f,
                "origin {subject:?} may not use this kubegate: requests from other web sites are refused to stop cross-site attacks on your cluster; if you trust that site, add a pattern for it to --accept-origins"
            ),
            ("accept-paths", _) => write!(
                f,
                "path {subject:?} matches no --accept-paths pattern; add one that matches it to --accept-paths"
            ),
            (_, Some(pattern)) => write!(
                f,
                "{subject:?} is refused by the --{flag} pattern {pattern:?}; change --{flag} to allow it"
            ),
            (_, None) => write!(f, "{subject:?} is refused by --{flag}"),
        }
    }
}

impl Filters {
    /// `--accept-hosts` alone, for `--www` files: a DNS-rebinding page
    /// could read them as well as the API.
    ///
    /// # Errors
    ///
    /// A [`Denial`] naming `--accept-hosts`.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), Denial> {
        let host = host.map(host_without_port).unwrap_or("");
        if self.disabled || self.accept_hosts.is_match(host) {
            return Ok(());
        }
        Err(denial("accept-hosts", host, None))
    }

    /// Decides whether a request may go upstream.
    ///
    /// `host` is the `Host` header (or HTTP/2 `:authority`). An upgrade
    /// (exec, attach, port-forward) is a write whatever its method: the
    /// apiserver authorises a WebSocket `GET` exec as `create` since
    /// Kubernetes 1.35, so `--reject-methods` that refuses `POST` refuses
    /// upgrades too.
    ///
    /// # Errors
    ///
    /// The [`Denial`] naming the flag that refused the request.
    pub fn check(
        &self,
        method: &str,
        host: Option<&str>,
        request: &RequestInfo<'_>,
    ) -> Result<(), Denial> {
        if self.disabled {
            return Ok(());
        }
        self.check_host(host)?;
        let path = request.path().as_str();
        if let Some(pattern) = self.reject_paths.first_match(path) {
            return Err(denial("reject-paths", path, Some(pattern)));
        }
        if !self.accept_paths.is_match(path) {
            return Err(denial("accept-paths", path, None));
        }
        if let Some(pattern) = self.reject_methods.first_match(method) {
            return Err(denial("reject-methods", method, Some(pattern)));
        }
        if request.upgrade()
            && let Some(pattern) = self.reject_methods.first_match("POST")
        {
            let subject = format!("{method} upgrade (exec, attach and port-forward count as POST)");
            return Err(denial("reject-methods", &subject, Some(pattern)));
        }
        Ok(())
    }
}

fn denial(flag: &'static str, subject: &str, pattern: Option<&str>) -> Denial {
    Denial {
        flag,
        subject: subject.to_string(),
        pattern: pattern.map(str::to_string),
    }
}

/// The host part of a `Host` header, brackets kept: `[::1]:8001` is `[::1]`
/// (kubectl drops the brackets and then refuses IPv6 loopback,
/// kubernetes/kubernetes#77496).
pub fn host_without_port(host: &str) -> &str {
    // Anything but `:DIGITS` after the name leaves the value whole, so
    // that `localhost:80@evil` or `[::1]junk` match no host pattern.
    let is_port = |rest: &str| {
        rest.strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    };
    let name_end = match host.starts_with('[') {
        true => host.find(']').map(|end| end + 1),
        false => host.find(':'),
    };
    match name_end {
        Some(end) if end == host.len() || is_port(&host[end..]) => &host[..end],
        _ => host,
    }
}

#[cfg(test)]
mod tests;
