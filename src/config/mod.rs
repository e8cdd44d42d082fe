//! From the command line and the environment to a typed, validated
//! [`Config`]: the kubeconfig (or in-cluster service account) read with
//! kube-rs, every regex compiled, every duration parsed. Anything wrong here
//! is a [`StartupError`], one line that names the file or flag and the fix.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube_client::config::KubeConfigOptions;
use secrecy::SecretString;

use crate::access::AccessToken;
use crate::audit::{self, FailureMode};
use crate::cli::Args;
use crate::connection::Deadlines;
use crate::cors::OriginPolicy;
use crate::error::{StartupError, io_reason};
use crate::filters::Filters;
use crate::listen::Listen;
use crate::pattern::PatternList;
use crate::policy::Policy;
use crate::proxy::Routes;
use crate::upstream::forward_proxy::{ProxyEnvironment, ProxyRule};
use crate::upstream::settings::{self, Network, Overrides, UpstreamSettings};

/// Everything kubegate needs to run, typed and checked.
#[derive(Debug)]
pub struct Config {
    /// Where clients connect.
    pub listen: Listen,
    /// Which paths go to the apiserver and which to `--www`.
    pub(crate) routes: Routes,
    /// The request filters.
    pub(crate) filters: Filters,
    /// `--policy-file` and `--read-only`.
    pub(crate) policy: Option<Policy>,
    /// `--accept-origins`.
    pub(crate) origins: OriginPolicy,
    /// `--access-token-file` / `--generate-access-token`.
    pub(crate) access_token: Option<AccessToken>,
    /// A generated token, to print once at start.
    pub generated_access_token: Option<String>,
    /// How to reach and authenticate to each apiserver: one unnamed, or
    /// one per context with `--contexts`.
    pub(crate) upstreams: Vec<(String, UpstreamSettings)>,
    /// Whether the apiservers are served under `/clusters/<context>/`.
    pub(crate) named_clusters: bool,
    /// `--forward-client-credentials`.
    pub(crate) forward_client_credentials: bool,
    /// `--shutdown-grace`.
    pub(crate) shutdown_grace: Duration,
    /// `--max-connections`, resolved.
    pub(crate) max_connections: usize,
    /// `--port-forward-idle-timeout`, or `None` with
    /// `--port-forward-multiplex=false`.
    pub(crate) port_forward_idle: Option<Duration>,
    /// `--first-request-timeout` and `--client-idle-timeout`.
    pub(crate) client_deadlines: Deadlines,
    /// The audit settings, when any audit backend is on.
    pub(crate) audit: Option<audit::Settings>,
    /// `--admin-address`.
    pub(crate) admin: Option<SocketAddr>,
    /// `--tls-cert-file` and `--tls-private-key-file`.
    pub(crate) serve_tls: Option<(PathBuf, PathBuf)>,
    /// `--token-reload-interval`, for the serving certificate too.
    pub(crate) reload_interval: Duration,
}

/// The environment variables kubegate reads, passed in so that tests can
/// give a map instead of the process's environment.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process's environment.
    pub fn process() -> Self {
        Env(std::env::vars().collect())
    }

    /// An environment with only these variables.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The proxy variables, read as Go's `http.ProxyFromEnvironment` reads
    /// them: uppercase first; `HTTP_PROXY` ignored under CGI.
    fn proxies(&self) -> ProxyEnvironment {
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

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Reads the configuration from the command line and the environment.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] for the first thing that is wrong.
    pub async fn load(args: &Args, env: &Env) -> Result<Config, StartupError> {
        let listen = listen(args)?;
        let routes = routes(args)?;
        let filters = Filters {
            accept_hosts: PatternList::parse("accept-hosts", &args.accept_hosts)?,
            accept_paths: PatternList::parse("accept-paths", &args.accept_paths)?,
            reject_paths: PatternList::parse("reject-paths", &args.reject_paths)?,
            reject_methods: PatternList::parse("reject-methods", &args.reject_methods)?,
            disabled: args.disable_filter,
        };
        let keepalive = match go_duration("keepalive", &args.keepalive)? {
            Signed::Negative => None,
            Signed::Positive(d) if d.is_zero() => Some(Duration::from_secs(15)),
            Signed::Positive(d) => Some(d),
        };
        let network = Network {
            environment_proxy: ProxyRule::from_environment(&env.proxies()),
            keepalive,
            connect_timeout: positive_duration("connect-timeout", &args.connect_timeout)?,
            token_reload_interval: positive_duration(
                "token-reload-interval",
                &args.token_reload_interval,
            )?,
        };
        let chosen = KubeConfigOptions {
            context: args.context.clone(),
            cluster: args.cluster.clone(),
            user: args.user.clone(),
        };
        let overrides = overrides(args);
        let paths = match kubeconfig_paths(args, env) {
            // `--server` alone is enough, as for kubectl.
            Err(StartupError::NoKubeconfig) if args.server.is_some() => Some(Vec::new()),
            found => found?,
        };
        let named_clusters = args.all_contexts || !args.contexts.is_empty();
        let mut upstreams = match (paths, named_clusters) {
            (Some(paths), false) => vec![(
                String::new(),
                settings::from_kubeconfig(&paths, &chosen, &overrides, &network).await?,
            )],
            (Some(paths), true) => {
                let names = match args.all_contexts {
                    true => settings::context_names(&paths)?,
                    false => args.contexts.clone(),
                };
                let mut upstreams = Vec::with_capacity(names.len());
                for name in names {
                    let chosen = KubeConfigOptions {
                        context: Some(name.clone()),
                        ..KubeConfigOptions::default()
                    };
                    let settings =
                        settings::from_kubeconfig(&paths, &chosen, &overrides, &network).await?;
                    upstreams.push((name, settings));
                }
                upstreams
            }
            (None, false) => vec![(
                String::new(),
                in_cluster(&args.service_account_dir, env, &network)?,
            )],
            (None, true) => {
                return Err(StartupError::Flag {
                    flag: "contexts",
                    message: "needs a kubeconfig that holds the contexts; pass --kubeconfig".into(),
                });
            }
        };
        if upstreams.is_empty() {
            return Err(StartupError::Flag {
                flag: "all-contexts",
                message: "the kubeconfig has no contexts; add one or serve a single cluster".into(),
            });
        }
        for (_, upstream) in &mut upstreams {
            if !args.append_server_path {
                upstream.server_path.clear();
            }
        }
        let origins = OriginPolicy {
            accept: PatternList::parse_whole("accept-origins", &args.accept_origins)?,
        };
        let (access_token, generated_access_token) = access_token(args)?;
        let serve_tls = args
            .tls_cert_file
            .clone()
            .zip(args.tls_private_key_file.clone());
        if let Listen::Tcp(address) = &listen
            && !address.ip().is_loopback()
            && access_token.is_none()
            && !args.allow_unauthenticated_remote
        {
            return Err(StartupError::Flag {
                flag: "address",
                message: format!(
                    "{} is reachable from other machines, and without an access token anyone who can reach it acts with kubegate's credentials (TLS alone authenticates no client); add --access-token-file (or --generate-access-token) and --tls-cert-file, or pass --allow-unauthenticated-remote if that is really meant",
                    address.ip()
                ),
            });
        }
        let admin = match &args.admin_address {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| StartupError::Flag {
                flag: "admin-address",
                message: format!(
                    "{text:?} is not HOST:PORT with an IP address; use e.g. 127.0.0.1:8002"
                ),
            })?),
            None => None,
        };
        Ok(Config {
            listen,
            routes,
            filters,
            policy: Policy::load(args.policy_file.as_deref(), args.read_only)?,
            origins,
            access_token,
            generated_access_token,
            upstreams,
            named_clusters,
            forward_client_credentials: args.forward_client_credentials,
            shutdown_grace: positive_duration("shutdown-grace", &args.shutdown_grace)?,
            max_connections: max_connections(args.max_connections),
            port_forward_idle: match args.port_forward_multiplex {
                true => Some(nonzero_duration(
                    "port-forward-idle-timeout",
                    &args.port_forward_idle_timeout,
                )?),
                false => None,
            },
            client_deadlines: Deadlines {
                first_request: nonzero_duration(
                    "first-request-timeout",
                    &args.first_request_timeout,
                )?,
                idle: nonzero_duration("client-idle-timeout", &args.client_idle_timeout)?,
            },
            audit: audit(args, &network).await?,
            admin,
            serve_tls,
            reload_interval: network.token_reload_interval,
        })
    }
}

/// kubectl's global flags, as overrides of the kubeconfig; the ones that
/// mean nothing to a proxy are accepted (scripts pass them to `kubectl
/// proxy`) with a warning.
fn overrides(args: &Args) -> Overrides {
    let ignored = [
        ("namespace", args.namespace.is_some()),
        ("request-timeout", args.request_timeout.is_some()),
        ("cache-dir", args.cache_dir.is_some()),
        ("match-server-version", args.match_server_version.is_some()),
        ("warnings-as-errors", args.warnings_as_errors.is_some()),
        ("disable-compression", args.disable_compression.is_some()),
        ("log-flush-frequency", args.log_flush_frequency.is_some()),
        ("profile", args.profile.is_some()),
        ("profile-output", args.profile_output.is_some()),
        ("vmodule", args.vmodule.is_some()),
    ];
    for (flag, _) in ignored.iter().filter(|(_, given)| *given) {
        tracing::warn!("--{flag} has no effect on a proxy; ignored");
    }
    Overrides {
        server: args.server.clone(),
        certificate_authority: args.certificate_authority.clone(),
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
        tls_server_name: args.tls_server_name.clone(),
        token: args.token.clone().map(SecretString::from),
        client_certificate: args.client_certificate.clone(),
        client_key: args.client_key.clone(),
        username: args.username.clone(),
        password: args.password.clone().map(SecretString::from),
        impersonate: args.as_user.clone(),
        impersonate_groups: args.as_group.clone(),
        impersonate_uid: args.as_uid.clone(),
    }
}

/// The pod's service account, where the environment says kubegate runs in
/// a pod.
fn in_cluster(dir: &Path, env: &Env, network: &Network) -> Result<UpstreamSettings, StartupError> {
    let (Some(host), Some(port)) = (
        env.get("KUBERNETES_SERVICE_HOST"),
        env.get("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(StartupError::NoKubeconfig);
    };
    settings::in_cluster(dir, host, port, network)
}

async fn audit(args: &Args, network: &Network) -> Result<Option<audit::Settings>, StartupError> {
    use crate::audit::log::Target;
    if args.audit_log_path.is_none() && args.audit_webhook_config_file.is_none() {
        return Ok(None);
    }
    let log = args
        .audit_log_path
        .as_ref()
        .map(|path| match path.to_str() {
            Some("-") => Target::Stdout,
            _ => Target::File {
                path: path.clone(),
                max_bytes: args.audit_log_maxsize.saturating_mul(1024 * 1024),
                max_backups: args.audit_log_maxbackup,
                max_age: Duration::from_secs(args.audit_log_maxage.saturating_mul(86_400)),
            },
        });
    let policy = match &args.audit_policy_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| StartupError::File {
                what: "audit policy file",
                path: path.display().to_string(),
                message: io_reason(&e),
            })?;
            Some(
                audit::policy::Policy::parse(&text).map_err(|e| StartupError::File {
                    what: "audit policy file",
                    path: path.display().to_string(),
                    message: format!("is not an audit.k8s.io/v1 Policy: {e}"),
                })?,
            )
        }
        None => None,
    };
    let webhook = match &args.audit_webhook_config_file {
        Some(path) => {
            let paths = std::slice::from_ref(path);
            let current = KubeConfigOptions::default();
            Some(audit::webhook::Settings {
                collector: settings::from_kubeconfig(
                    paths,
                    &current,
                    &Overrides::default(),
                    network,
                )
                .await?,
                batch_max_size: args.audit_webhook_batch_max_size.max(1),
                batch_max_wait: positive_duration(
                    "audit-webhook-batch-max-wait",
                    &args.audit_webhook_batch_max_wait,
                )?,
                buffer: args.audit_webhook_buffer_size,
                initial_backoff: positive_duration(
                    "audit-webhook-initial-backoff",
                    &args.audit_webhook_initial_backoff,
                )?,
            })
        }
        None => None,
    };
    let failure = match args.audit_failure.as_str() {
        "continue" => FailureMode::Continue,
        _ => FailureMode::Refuse,
    };
    Ok(Some(audit::Settings {
        log,
        webhook,
        policy,
        failure,
        max_body_bytes: args.audit_max_body_bytes,
    }))
}

fn access_token(args: &Args) -> Result<(Option<AccessToken>, Option<String>), StartupError> {
    match (&args.access_token_file, args.generate_access_token) {
        (None, false) => Ok((None, None)),
        (Some(path), false) => Ok((Some(AccessToken::load(path)?.0), None)),
        (path, true) => {
            let token = AccessToken::generate()?;
            if let Some(path) = path {
                AccessToken::write(path, &token)?;
            }
            Ok((Some(AccessToken::new(&token)), Some(token)))
        }
    }
}

fn listen(args: &Args) -> Result<Listen, StartupError> {
    if let Some(path) = &args.unix_socket {
        // kubectl only objects when --port was changed from its default.
        if args.port != 8001 {
            return Err(StartupError::Flag {
                flag: "unix-socket",
                message: "cannot be combined with --port; choose one".into(),
            });
        }
        return Ok(Listen::Unix(path.clone()));
    }
    let ip: IpAddr = args.address.parse().map_err(|_| StartupError::Flag {
        flag: "address",
        message: format!(
            "{:?} is not an IP address; use e.g. 127.0.0.1 or ::1",
            args.address
        ),
    })?;
    Ok(Listen::Tcp(SocketAddr::new(ip, args.port)))
}

fn routes(args: &Args) -> Result<Routes, StartupError> {
    let api_prefix = with_slashes(&args.api_prefix);
    let www = match &args.www {
        Some(dir) if !dir.is_dir() => {
            return Err(StartupError::Flag {
                flag: "www",
                message: format!(
                    "{} is not a directory; give a directory of static files",
                    dir.display()
                ),
            });
        }
        Some(dir) => Some((dir.clone(), with_slashes(&args.www_prefix))),
        None => None,
    };
    Ok(Routes {
        strip_api_prefix: !api_prefix.starts_with("/api"),
        api_prefix,
        www,
    })
}

fn with_slashes(prefix: &str) -> String {
    let mut prefix = prefix.to_string();
    if !prefix.starts_with('/') {
        prefix.insert(0, '/');
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

/// The kubeconfig files to read, or `None` for the in-cluster account.
fn kubeconfig_paths(args: &Args, env: &Env) -> Result<Option<Vec<PathBuf>>, StartupError> {
    if let Some(path) = &args.kubeconfig {
        return Ok(Some(vec![path.clone()]));
    }
    if let Some(list) = env.get("KUBECONFIG") {
        // Like client-go: files in the list that don't exist are skipped.
        let paths: Vec<PathBuf> = std::env::split_paths(list).filter(|p| p.exists()).collect();
        if !paths.is_empty() {
            return Ok(Some(paths));
        }
    }
    if let Some(home) = env.get("HOME") {
        let default = Path::new(home).join(".kube").join("config");
        if default.exists() {
            return Ok(Some(vec![default]));
        }
    }
    if env.get("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(None);
    }
    Err(StartupError::NoKubeconfig)
}

enum Signed {
    Positive(Duration),
    Negative,
}

/// Parses a Go duration (`0`, `10s`, `1m30s`, `500ms`, `-1s`).
fn go_duration(flag: &'static str, text: &str) -> Result<Signed, StartupError> {
    let fail = || StartupError::Flag {
        flag,
        message: format!("{text:?} is not a duration; write it like 10s, 1m30s or 500ms"),
    };
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Signed::Positive(Duration::ZERO));
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
    Ok(if negative {
        Signed::Negative
    } else {
        Signed::Positive(total)
    })
}

fn positive_duration(flag: &'static str, text: &str) -> Result<Duration, StartupError> {
    match go_duration(flag, text)? {
        Signed::Positive(d) => Ok(d),
        Signed::Negative => Err(StartupError::Flag {
            flag,
            message: format!("{text:?} is negative; give a duration like 10s"),
        }),
    }
}

fn nonzero_duration(flag: &'static str, text: &str) -> Result<Duration, StartupError> {
    match positive_duration(flag, text)? {
        zero if zero.is_zero() => Err(StartupError::Flag {
            flag,
            message: format!(
                "{text:?} would close every connection at once; give a duration like 30s"
            ),
        }),
        duration => Ok(duration),
    }
}

/// `--max-connections`, or with 0 what the open file limit allows: half
/// of it (a relayed session holds a client and an upstream descriptor),
/// less a reserve for upstream connections, audit files and the admin port.
fn max_connections(asked: usize) -> usize {
    const RESERVE: u64 = 64;
    if asked > 0 {
        return asked;
    }
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let half = limit.saturating_sub(RESERVE) / 2;
    usize::try_from(half)
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let d = |t| match go_duration("x", t).unwrap() {
            Signed::Positive(d) => Some(d),
            Signed::Negative => None,
        };
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("10s"), Some(Duration::from_secs(10)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("-1s"), None);
        for bad in ["", "10", "s", "10x", "1m30"] {
            assert!(go_duration("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_get_their_slashes() {
        assert_eq!(with_slashes("/"), "/");
        assert_eq!(with_slashes("custom"), "/custom/");
        assert_eq!(with_slashes("/static"), "/static/");
    }
}
