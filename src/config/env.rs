//! What kubegate reads from its surroundings besides the command line: the
//! environment variables and the open-file limit, passed in so that tests
//! can give their own.

use std::collections::HashMap;

use crate::upstream::forward_proxy::ProxyEnvironment;

/// The environment variables kubegate reads, and the open-file limit.
#[derive(Debug, Clone)]
pub struct Env {
    variables: HashMap<String, String>,
    /// The soft limit on open files, which `--max-connections` defaults from.
    pub open_file_limit: u64,
}

impl Default for Env {
    /// No variables, and the process's open-file limit.
    fn default() -> Self {
        Env {
            variables: HashMap::new(),
            open_file_limit: current_open_file_limit(),
        }
    }
}

impl Env {
    /// The process's environment and open-file limit (read now: raise the
    /// limit first).
    pub fn process() -> Self {
        Env {
            variables: std::env::vars().collect(),
            ..Env::default()
        }
    }

    /// An environment with only these variables.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env {
            variables: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Env::default()
        }
    }

    /// The proxy variables, read as Go's `http.ProxyFromEnvironment` reads
    /// them: uppercase first; `HTTP_PROXY` ignored under CGI.
    pub(super) fn proxies(&self) -> ProxyEnvironment {
        let first = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| self.get(name))
                .unwrap_or_default()
                .to_string()
        };
        let cgi = self.get("REQUEST_METHOD").is_some();
        ProxyEnvironment {
            https: first(["HTTPS_PROXY", "https_proxy"]),
            http: match cgi {
                true => String::new(),
                false => first(["HTTP_PROXY", "http_proxy"]),
            },
            no: first(["NO_PROXY", "no_proxy"]),
        }
    }

    /// A variable that is set and not empty.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.variables
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

fn current_open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}
