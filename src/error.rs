//! Start-up errors: a misconfiguration is one line that names the file or
//! flag and the fix. A leaf: every module that reads configuration uses it,
//! and it uses none of them.

/// A misconfiguration found at start-up: one line naming the file or flag
/// and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartupError {
    /// A flag value is wrong.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag, without dashes.
        flag: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Something this build or platform cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// No kubeconfig and no in-cluster service account.
    #[error(
        "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a service account; `kubegate demo` tries kubegate without a cluster"
    )]
    NoKubeconfig,
    /// The kubeconfig (or a file it names) is unusable.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The kubeconfig file(s).
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file named by the configuration cannot be used.
    #[error("{what} {path}: {message}")]
    File {
        /// What the file is for ("client key", "certificate authority").
        what: &'static str,
        /// The path.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The listening socket cannot be made.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address or socket path.
        address: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The credential plugin or token cannot be used.
    #[error("{0}")]
    Credential(String),
    /// Several misconfigurations, found together: every bad flag is
    /// reported at once, one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<StartupError>),
}

impl StartupError {
    /// A flag's error line.
    pub fn flag(flag: &str, message: impl Into<String>) -> StartupError {
        StartupError::Flag {
            flag: flag.to_string(),
            message: message.into(),
        }
    }

    /// Each misconfiguration, one per line to print.
    pub fn each(&self) -> Vec<&StartupError> {
        match self {
            StartupError::Several(all) => all.iter().flat_map(StartupError::each).collect(),
            one => vec![one],
        }
    }
}

/// An I/O error in words a user can act on (no OS error codes).
pub fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}
