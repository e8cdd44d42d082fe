//! From the command line and the environment to a typed, validated
//! [`Config`]: the kubeconfig (or in-cluster service account) read with
//! kube-rs, every regex compiled, every duration parsed. Anything wrong here
//! is a [`StartupError`], one line that names the file or flag and the fix.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue, Uri};
use kube_client::config::{AuthInfo, ExecConfig, KubeConfigOptions, Kubeconfig, KubeconfigError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use crate::access::AccessToken;
use crate::cli::Args;
use crate::cors::OriginPolicy;
use crate::policy::{PatternError, PatternList, Policy};

/// Everything kubegate needs to run, typed and checked.
#[derive(Debug)]
pub struct Config {
    /// Where clients connect.
    pub listen: Listen,
    /// Which paths go to the apiserver and which to `--www`.
    pub routes: Routes,
    /// The request filters.
    pub policy: Policy,
    /// `--accept-origins`.
    pub origins: OriginPolicy,
    /// `--access-token-file` / `--generate-access-token`.
    pub access_token: Option<AccessToken>,
    /// A generated token, to print once at start.
    pub generated_access_token: Option<String>,
    /// How to reach and authenticate to the apiserver.
    pub upstream: UpstreamSettings,
    /// `--forward-client-credentials`.
    pub forward_client_credentials: bool,
    /// `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// The audit settings, when any audit backend is on.
    pub audit: Option<AuditConfig>,
    /// `--admin-address`.
    pub admin: Option<SocketAddr>,
    /// `--tls-cert-file` and `--tls-private-key-file`.
    pub serve_tls: Option<(PathBuf, PathBuf)>,
    /// `--token-reload-interval`, for the serving certificate too.
    pub reload_interval: Duration,
}

/// What to audit and where to send it.
#[derive(Debug)]
pub struct AuditConfig {
    /// The log backend.
    pub log: Option<crate::audit::log::Target>,
    /// The webhook collector and its batching.
    pub webhook: Option<WebhookConfig>,
    /// The policy; none means `Metadata` for everything.
    pub policy: Option<crate::audit::policy::Policy>,
    /// `--audit-failure`.
    pub failure: crate::audit::FailureMode,
    /// `--audit-max-body-bytes`.
    pub max_body_bytes: usize,
}

/// The webhook backend's collector and batching.
#[derive(Debug)]
pub struct WebhookConfig {
    /// The collector, from the kubeconfig-format file.
    pub collector: UpstreamSettings,
    /// `--audit-webhook-batch-max-size`.
    pub batch_max_size: usize,
    /// `--audit-webhook-batch-max-wait`.
    pub batch_max_wait: Duration,
    /// `--audit-webhook-buffer-size`.
    pub buffer: usize,
    /// `--audit-webhook-initial-backoff`.
    pub initial_backoff: Duration,
}

/// Where kubegate listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `--address` and `--port`.
    Tcp(SocketAddr),
    /// `--unix-socket`.
    Unix(PathBuf),
}

/// How request paths are split between the API and static files.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `--api-prefix`, always ending in `/`.
    pub api_prefix: String,
    /// Whether the prefix is removed before filtering and forwarding; kubectl
    /// keeps prefixes that start with `/api`.
    pub strip_api_prefix: bool,
    /// `--www` and `--www-prefix` (ending in `/`).
    pub www: Option<(PathBuf, String)>,
}

/// The apiserver and the identity kubegate uses there.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// `scheme://host:port` of the apiserver.
    pub server: Uri,
    /// Path prepended to every request (`--append-server-path`), no trailing `/`.
    pub server_path: String,
    /// Where the settings came from, for messages: a kubeconfig and context.
    pub origin: String,
    /// CA certificates (DER) to trust instead of the system's.
    pub root_certs: Option<Vec<CertificateDer<'static>>>,
    /// `insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: bool,
    /// `tls-server-name`.
    pub tls_server_name: Option<String>,
    /// A client certificate chain and key, from files or inline data.
    pub client_identity: Option<ClientIdentity>,
    /// Where the bearer token (or basic credential) comes from.
    pub credential: CredentialSource,
    /// `Impersonate-*` headers from the kubeconfig user's `as` fields.
    pub impersonate: Vec<(HeaderName, HeaderValue)>,
    /// TCP keep-alive period, `None` to disable.
    pub keepalive: Option<Duration>,
    /// `--connect-timeout`.
    pub connect_timeout: Duration,
    /// `--token-reload-interval`.
    pub token_reload_interval: Duration,
}

/// A client certificate chain and its private key.
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key; never printed.
    pub key: PrivateKeyDer<'static>,
    /// Where it came from, for messages.
    pub origin: String,
    /// The certificate and key files, when it came from files (then it is
    /// re-read when they change).
    pub files: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Where the `Authorization` header kubegate sends comes from.
#[derive(Debug)]
pub enum CredentialSource {
    /// None: the client certificate (or nothing) identifies kubegate.
    None,
    /// A fixed bearer token.
    Bearer(SecretString),
    /// A fixed user name and password.
    Basic(String, SecretString),
    /// A file holding the token, re-read when it changes.
    TokenFile(PathBuf),
    /// An exec credential plugin, re-run before its token expires.
    Exec(Box<ExecConfig>),
}

/// A misconfiguration found at start-up: one line naming the file or flag
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A flag value is wrong.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A filter regex does not compile.
    #[error(transparent)]
    Pattern(#[from] PatternError),
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
        let policy = Policy {
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
        let timing = Timing {
            keepalive,
            connect_timeout: positive_duration("connect-timeout", &args.connect_timeout)?,
            token_reload_interval: positive_duration(
                "token-reload-interval",
                &args.token_reload_interval,
            )?,
        };
        let mut upstream = match kubeconfig_paths(args, env)? {
            Some(paths) => from_kubeconfig(args, &paths, timing).await?,
            None => in_cluster(&args.service_account_dir, env, timing)?,
        };
        if !args.append_server_path {
            upstream.server_path.clear();
        }
        let origins = OriginPolicy {
            accept: PatternList::parse("accept-origins", &args.accept_origins)?,
        };
        let (access_token, generated_access_token) = access_token(args)?;
        let serve_tls = args
            .tls_cert_file
            .clone()
            .zip(args.tls_private_key_file.clone());
        if let Listen::Tcp(address) = &listen
            && !address.ip().is_loopback()
            && access_token.is_none()
            && serve_tls.is_none()
            && !args.allow_unauthenticated_remote
        {
            return Err(StartupError::Flag {
                flag: "address",
                message: format!(
                    "{} is reachable from other machines, and without TLS or an access token anyone who can reach it acts with kubegate's credentials; add --access-token-file (or --generate-access-token) and --tls-cert-file, or pass --allow-unauthenticated-remote if that is really meant",
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
            policy,
            origins,
            access_token,
            generated_access_token,
            upstream,
            forward_client_credentials: args.forward_client_credentials,
            shutdown_grace: positive_duration("shutdown-grace", &args.shutdown_grace)?,
            audit: audit(args, timing).await?,
            admin,
            serve_tls,
            reload_interval: timing.token_reload_interval,
        })
    }
}

async fn audit(args: &Args, timing: Timing) -> Result<Option<AuditConfig>, StartupError> {
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
                crate::audit::policy::Policy::parse(&text).map_err(|e| StartupError::File {
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
            let mut file_args = args.clone();
            file_args.context = None;
            file_args.cluster = None;
            file_args.user = None;
            Some(WebhookConfig {
                collector: from_kubeconfig(&file_args, std::slice::from_ref(path), timing).await?,
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
    Ok(Some(AuditConfig {
        log,
        webhook,
        policy,
        failure: args.audit_failure,
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
                crate::demo::pki::write_private(path, format!("{token}\n").as_bytes()).map_err(
                    |e| StartupError::File {
                        what: "access token file",
                        path: path.display().to_string(),
                        message: format!("{}; give a writable path", io_reason(&e)),
                    },
                )?;
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

#[derive(Clone, Copy)]
struct Timing {
    keepalive: Option<Duration>,
    connect_timeout: Duration,
    token_reload_interval: Duration,
}

async fn from_kubeconfig(
    args: &Args,
    paths: &[PathBuf],
    timing: Timing,
) -> Result<UpstreamSettings, StartupError> {
    let shown = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let fail = |message: String| StartupError::Kubeconfig {
        path: shown.clone(),
        message,
    };
    let mut merged = Kubeconfig::default();
    for path in paths {
        let file = Kubeconfig::read_from(path).map_err(|e| match e {
            KubeconfigError::ReadConfig(io, _) => StartupError::Kubeconfig {
                path: path.display().to_string(),
                message: format!("{}; pass --kubeconfig with a readable file", io_reason(&io)),
            },
            other => StartupError::Kubeconfig {
                path: path.display().to_string(),
                message: format!("{other}; fix the file's YAML"),
            },
        })?;
        merged = merged.merge(file).map_err(|e| fail(e.to_string()))?;
    }
    let context_name = args
        .context
        .clone()
        .or_else(|| merged.current_context.clone());
    let selection = Selection::of(&merged, context_name.as_deref(), args);
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: args.cluster.clone(),
        user: args.user.clone(),
    };
    if let Some(user) = &args.user
        && !merged.auth_infos.iter().any(|u| &u.name == user)
    {
        return Err(fail(format!(
            "no user named {user:?}; list them with `kubectl config get-users` and pass --user"
        )));
    }
    let loaded = kube_client::Config::from_custom_kubeconfig(merged.clone(), &options)
        .await
        .map_err(|e| fail(kubeconfig_hint(&e, &selection)))?;

    let auth = &loaded.auth_info;
    let user_label = format!("user {:?}", selection.user.clone().unwrap_or_default());
    let (server, server_path) = split_server(&loaded.cluster_url).map_err(fail)?;
    let root_certs = match &loaded.root_cert {
        Some(ders) => Some(parse_root_certs(ders, &selection.ca_label(&merged))?),
        None => None,
    };
    Ok(UpstreamSettings {
        origin: format!(
            "kubeconfig {shown}, context {:?}",
            context_name.unwrap_or_default()
        ),
        server,
        server_path,
        root_certs,
        insecure_skip_tls_verify: loaded.accept_invalid_certs,
        tls_server_name: loaded.tls_server_name.clone(),
        client_identity: client_identity(auth, &user_label)?,
        credential: credential_source(auth, &user_label)?,
        impersonate: impersonation(auth, &user_label)?,
        keepalive: timing.keepalive,
        connect_timeout: timing.connect_timeout,
        token_reload_interval: timing.token_reload_interval,
    })
}

/// The context, cluster and user names chosen, for messages.
struct Selection {
    context: Option<String>,
    cluster: Option<String>,
    user: Option<String>,
}

impl Selection {
    fn of(config: &Kubeconfig, context: Option<&str>, args: &Args) -> Self {
        let found = context.and_then(|name| {
            config
                .contexts
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.context.clone())
        });
        Selection {
            context: context.map(str::to_string),
            cluster: args
                .cluster
                .clone()
                .or_else(|| found.as_ref().map(|c| c.cluster.clone())),
            user: args.user.clone().or_else(|| found.and_then(|c| c.user)),
        }
    }

    fn ca_label(&self, config: &Kubeconfig) -> String {
        let name = self.cluster.clone().unwrap_or_default();
        let file = config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.certificate_authority.clone());
        match file {
            Some(file) => format!("{file} (cluster {name:?})"),
            None => format!("certificate-authority-data of cluster {name:?}"),
        }
    }
}

fn kubeconfig_hint(error: &KubeconfigError, selection: &Selection) -> String {
    match error {
        KubeconfigError::CurrentContextNotSet => {
            "no current-context is set; pass --context or run `kubectl config use-context NAME`"
                .into()
        }
        KubeconfigError::LoadContext(_) => format!(
            "no context named {:?}; list them with `kubectl config get-contexts` and pass --context",
            selection.context.clone().unwrap_or_default()
        ),
        KubeconfigError::LoadClusterOfContext(_) => format!(
            "no cluster named {:?}; list them with `kubectl config get-clusters` and pass --cluster",
            selection.cluster.clone().unwrap_or_default()
        ),
        KubeconfigError::MissingClusterUrl => format!(
            "cluster {:?} has no server address; set clusters[].cluster.server",
            selection.cluster.clone().unwrap_or_default()
        ),
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            format!(
                "{message}; fix the kubeconfig entry for cluster {:?}",
                selection.cluster.clone().unwrap_or_default()
            )
        }
    }
}

/// Splits `https://host:port/some/path` into the address and the path.
fn split_server(url: &Uri) -> Result<(Uri, String), String> {
    let scheme = url.scheme_str().unwrap_or("https");
    if scheme != "https" && scheme != "http" {
        return Err(format!("server {url} is not an http(s) URL"));
    }
    let authority = url
        .authority()
        .ok_or_else(|| format!("server {url} has no host"))?;
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let server = Uri::builder()
        .scheme(scheme)
        .authority(format!("{}:{port}", authority.host()))
        .path_and_query("/")
        .build()
        .map_err(|e| format!("server {url}: {e}"))?;
    let path = url.path().trim_end_matches('/').to_string();
    Ok((server, path))
}

fn parse_root_certs(
    ders: &[Vec<u8>],
    label: &str,
) -> Result<Vec<CertificateDer<'static>>, StartupError> {
    let fail = |message: &str| StartupError::File {
        what: "certificate authority",
        path: label.to_string(),
        message: message.to_string(),
    };
    if ders.is_empty() {
        return Err(fail(
            "holds no PEM certificate; give the apiserver's CA certificate in PEM",
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in ders {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| {
            fail(&format!(
                "is not a usable CA certificate ({e}); give the apiserver's CA in PEM"
            ))
        })?;
    }
    Ok(ders
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect())
}

fn client_identity(auth: &AuthInfo, user: &str) -> Result<Option<ClientIdentity>, StartupError> {
    let cert = read_data_or_file(
        "client certificate",
        auth.client_certificate_data.as_deref(),
        auth.client_certificate.as_deref(),
        user,
    )?;
    let key_data = auth
        .client_key_data
        .as_ref()
        .map(|k| k.expose_secret().to_string());
    let key = read_data_or_file(
        "client key",
        key_data.as_deref(),
        auth.client_key.as_deref(),
        user,
    )?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some((_, origin)), None) => {
            return Err(StartupError::Credential(format!(
                "{origin} has a client certificate but no client key; set client-key or client-key-data"
            )));
        }
        (None, Some((_, origin))) => {
            return Err(StartupError::Credential(format!(
                "{origin} has a client key but no client certificate; set client-certificate or client-certificate-data"
            )));
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let mut identity = parse_identity(&cert.0, &cert.1, &key.0, &key.1)?;
    let no_data = |data: &Option<String>| data.as_deref().is_none_or(str::is_empty);
    if no_data(&auth.client_certificate_data)
        && auth
            .client_key_data
            .as_ref()
            .is_none_or(|k| k.expose_secret().is_empty())
        && let (Some(cert), Some(key)) = (&auth.client_certificate, &auth.client_key)
    {
        identity.files = Some((PathBuf::from(cert), PathBuf::from(key)));
    }
    Ok(Some(identity))
}

/// Parses a PEM certificate chain and PEM private key.
///
/// # Errors
///
/// A [`StartupError::File`] naming whichever does not parse.
pub fn parse_identity(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
) -> Result<ClientIdentity, StartupError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| StartupError::File {
            what: "client certificate",
            path: cert_origin.to_string(),
            message: format!("is not PEM ({e}); give a PEM certificate"),
        })?;
    if chain.is_empty() {
        return Err(StartupError::File {
            what: "client certificate",
            path: cert_origin.to_string(),
            message: "holds no PEM certificate; give a PEM certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| StartupError::File {
        what: "client key",
        path: key_origin.to_string(),
        message: "holds no PEM private key (PKCS#1, PKCS#8 or SEC1); give the key that belongs to the client certificate".into(),
    })?;
    Ok(ClientIdentity {
        chain,
        key,
        origin: format!("{cert_origin} and {key_origin}"),
        files: None,
    })
}

/// Inline base64 data, else the named file; with a label for messages.
fn read_data_or_file(
    what: &'static str,
    data: Option<&str>,
    file: Option<&str>,
    user: &str,
) -> Result<Option<(Vec<u8>, String)>, StartupError> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        let origin = format!("{what} data of {user}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| {
                StartupError::Credential(format!(
                    "{origin} is not base64; encode the PEM with base64 -w0"
                ))
            })?;
        return Ok(Some((bytes, origin)));
    }
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let bytes = std::fs::read(file).map_err(|e| StartupError::File {
        what,
        path: file.to_string(),
        message: format!("{} (see {user})", io_reason(&e)),
    })?;
    Ok(Some((bytes, format!("{what} {file}"))))
}

fn credential_source(auth: &AuthInfo, user: &str) -> Result<CredentialSource, StartupError> {
    if auth.auth_provider.is_some() {
        return Err(StartupError::Credential(format!(
            "{user} uses an auth-provider, which Kubernetes removed; switch it to an exec credential plugin (e.g. gke-gcloud-auth-plugin, kubelogin)"
        )));
    }
    if let Some(exec) = &auth.exec {
        return Ok(CredentialSource::Exec(Box::new(exec.clone())));
    }
    if let Some(file) = auth.token_file.as_deref().filter(|f| !f.is_empty()) {
        return Ok(CredentialSource::TokenFile(PathBuf::from(file)));
    }
    if let Some(token) = auth
        .token
        .as_ref()
        .filter(|t| !t.expose_secret().is_empty())
    {
        return Ok(CredentialSource::Bearer(token.clone()));
    }
    if let (Some(name), Some(password)) = (&auth.username, &auth.password) {
        return Ok(CredentialSource::Basic(name.clone(), password.clone()));
    }
    Ok(CredentialSource::None)
}

fn impersonation(
    auth: &AuthInfo,
    user: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, StartupError> {
    let mut headers = Vec::new();
    let mut add = |name: &str, value: &str| -> Result<(), StartupError> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            StartupError::Credential(format!(
                "{user}: impersonation value {value:?} is not a valid header value"
            ))
        })?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            StartupError::Credential(format!(
                "{user}: impersonation key {name:?} is not a valid header name"
            ))
        })?;
        headers.push((name, value));
        Ok(())
    };
    if let Some(name) = &auth.impersonate {
        add("impersonate-user", name)?;
    }
    if let Some(uid) = &auth.impersonate_uid {
        add("impersonate-uid", uid)?;
    }
    for group in auth.impersonate_groups.iter().flatten() {
        add("impersonate-group", group)?;
    }
    for (key, values) in auth.impersonate_user_extra.iter().flatten() {
        for value in values {
            add(&format!("impersonate-extra-{}", key.to_lowercase()), value)?;
        }
    }
    Ok(headers)
}

/// The pod's service account, read from `dir` (as client-go's
/// `InClusterConfig`, with the directory configurable for tests and
/// off-cluster use).
fn in_cluster(dir: &Path, env: &Env, timing: Timing) -> Result<UpstreamSettings, StartupError> {
    let (Some(host), Some(port)) = (
        env.get("KUBERNETES_SERVICE_HOST"),
        env.get("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(StartupError::NoKubeconfig);
    };
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let server = Uri::builder()
        .scheme("https")
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|_| StartupError::Credential(format!(
            "KUBERNETES_SERVICE_HOST/PORT ({authority}) do not form an address; check the pod's environment"
        )))?;
    let token_file = dir.join("token");
    std::fs::metadata(&token_file).map_err(|e| StartupError::File {
        what: "service-account token",
        path: token_file.display().to_string(),
        message: format!(
            "{}; mount the service account token or pass --service-account-dir",
            io_reason(&e)
        ),
    })?;
    let ca_file = dir.join("ca.crt");
    let ca = std::fs::read(&ca_file).map_err(|e| StartupError::File {
        what: "certificate authority",
        path: ca_file.display().to_string(),
        message: format!(
            "{}; mount the service account's ca.crt or pass --service-account-dir",
            io_reason(&e)
        ),
    })?;
    let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&ca)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    Ok(UpstreamSettings {
        origin: format!("in-cluster service account {}", dir.display()),
        server,
        server_path: String::new(),
        root_certs: Some(parse_root_certs(&ders, &ca_file.display().to_string())?),
        insecure_skip_tls_verify: false,
        tls_server_name: None,
        client_identity: None,
        credential: CredentialSource::TokenFile(token_file),
        impersonate: Vec::new(),
        keepalive: timing.keepalive,
        connect_timeout: timing.connect_timeout,
        token_reload_interval: timing.token_reload_interval,
    })
}

/// An I/O error in words a user can act on (no OS error codes).
pub fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
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
    fn server_urls_split_into_address_and_path() {
        let (server, path) = split_server(&"https://10.0.0.1:6443".parse().unwrap()).unwrap();
        assert_eq!(server.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(path, "");
        let (server, path) =
            split_server(&"https://[::1]/k8s/clusters/c-1/".parse().unwrap()).unwrap();
        assert_eq!(server.to_string(), "https://[::1]:443/");
        assert_eq!(path, "/k8s/clusters/c-1");
    }

    #[test]
    fn prefixes_get_their_slashes() {
        assert_eq!(with_slashes("/"), "/");
        assert_eq!(with_slashes("custom"), "/custom/");
        assert_eq!(with_slashes("/static"), "/static/");
    }
}
