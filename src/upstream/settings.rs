//! Where the apiserver is and who kubegate is there: read from a kubeconfig
//! (with kube-rs) or from a pod's service account, into settings that
//! [`super::Upstream`] connects with.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue, Uri};
use kube_client::config::{
    AuthInfo, Cluster, Context, ExecConfig, KubeConfigOptions, Kubeconfig, KubeconfigError,
    NamedAuthInfo, NamedCluster, NamedContext,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::forward_proxy::ProxyRule;
use crate::cli::Overrides;
use crate::error::{StartupError, io_reason};

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
    /// The forward proxy, if any: `proxy-url` or the environment's.
    pub proxy: ProxyRule,
    /// What every cluster's connections share.
    pub network: Arc<Network>,
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

/// What every upstream connection shares, one value for all clusters:
/// timings from the command line and the environment's proxies.
#[derive(Debug)]
pub struct Network {
    /// TCP keep-alive period, `None` to disable.
    pub keepalive: Option<Duration>,
    /// `--connect-timeout`.
    pub connect_timeout: Duration,
    /// `--token-reload-interval`.
    pub token_reload_interval: Duration,
    /// `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`, for a cluster without
    /// `proxy-url` and in a pod.
    pub environment_proxy: ProxyRule,
}

/// Reads the apiserver and user that `chosen` selects (the current context
/// when it names none) from the kubeconfig `paths`, merged as kubectl
/// merges them.
///
/// # Errors
///
/// A [`StartupError`] naming the kubeconfig, the entry and the fix.
pub async fn from_kubeconfig(
    paths: &[PathBuf],
    chosen: &KubeConfigOptions,
    overrides: &Overrides,
    network: &Arc<Network>,
) -> Result<UpstreamSettings, StartupError> {
    let shown = match paths {
        [] => "(none: kubectl's flags alone)".to_string(),
        paths => paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    };
    let fail = |message: String| StartupError::Kubeconfig {
        path: shown.clone(),
        message,
    };
    let mut merged = match paths {
        [] => flags_only_kubeconfig(),
        _ => Kubeconfig::default(),
    };
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
    let context_name = chosen
        .context
        .clone()
        .or_else(|| merged.current_context.clone());
    let selection = Selection::of(&merged, context_name.as_deref(), chosen);
    if let Some(user) = &chosen.user
        && !merged.auth_infos.iter().any(|u| &u.name == user)
    {
        return Err(fail(format!(
            "no user named {user:?}; list them with `kubectl config get-users` and pass --user"
        )));
    }
    apply(overrides, &mut merged, &selection);
    let loaded = kube_client::Config::from_custom_kubeconfig(merged.clone(), chosen)
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
        // The kubeconfig's own `proxy-url` only: kube-rs falls back to
        // `HTTPS_PROXY` where a cluster has none, and the environment's
        // proxies follow Go's rule instead (`NO_PROXY`, loopback direct).
        proxy: match selection.proxy_url(&merged) {
            Some(url) => ProxyRule::from_url(&url).map_err(|message| {
                fail(format!(
                    "{message} (cluster {:?})",
                    selection.cluster.clone().unwrap_or_default()
                ))
            })?,
            None => network.environment_proxy.clone(),
        },
        network: network.clone(),
    })
}

/// The names of the contexts in the kubeconfig `paths`, merged as kubectl
/// merges them, in file order (`--all-contexts`).
///
/// # Errors
///
/// A [`StartupError`] naming a file that cannot be read.
pub fn context_names(paths: &[PathBuf]) -> Result<Vec<String>, StartupError> {
    let mut names: Vec<String> = Vec::new();
    for path in paths {
        let file = Kubeconfig::read_from(path).map_err(|e| StartupError::Kubeconfig {
            path: path.display().to_string(),
            message: format!("{e}; pass --kubeconfig with a readable file"),
        })?;
        for context in file.contexts {
            if !names.contains(&context.name) {
                names.push(context.name);
            }
        }
    }
    Ok(names)
}

/// The names the flags-only kubeconfig uses.
const FLAGS: &str = "command-line";

/// An empty kubeconfig whose one context the flags fill in.
fn flags_only_kubeconfig() -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: FLAGS.into(),
            cluster: Some(Cluster::default()),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: FLAGS.into(),
            auth_info: Some(AuthInfo::default()),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: FLAGS.into(),
            context: Some(Context {
                cluster: FLAGS.into(),
                user: Some(FLAGS.into()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(FLAGS.into()),
        ..Kubeconfig::default()
    }
}

/// Writes kubectl's global flags over the selected cluster and user, as
/// client-go's `ConfigOverrides` do: a file flag replaces inline data,
/// `--token` and `--username` replace every other way of getting a
/// credential, `--insecure-skip-tls-verify` drops the certificate authority.
fn apply(flags: &Overrides, config: &mut Kubeconfig, selection: &Selection) {
    let cluster = config
        .clusters
        .iter_mut()
        .find(|c| Some(&c.name) == selection.cluster.as_ref())
        .and_then(|c| c.cluster.as_mut());
    if let Some(cluster) = cluster {
        if let Some(server) = &flags.server {
            cluster.server = Some(server.clone());
        }
        if let Some(ca) = &flags.certificate_authority {
            cluster.certificate_authority = Some(ca.clone());
            cluster.certificate_authority_data = None;
        }
        if flags.insecure_skip_tls_verify {
            cluster.insecure_skip_tls_verify = Some(true);
            cluster.certificate_authority = None;
            cluster.certificate_authority_data = None;
        }
        if let Some(name) = &flags.tls_server_name {
            cluster.tls_server_name = Some(name.clone());
        }
    }
    let user = config
        .auth_infos
        .iter_mut()
        .find(|u| Some(&u.name) == selection.user.as_ref())
        .and_then(|u| u.auth_info.as_mut());
    let Some(user) = user else {
        return;
    };
    let replace_credential = |user: &mut AuthInfo| {
        user.token = None;
        user.token_file = None;
        user.username = None;
        user.password = None;
        user.exec = None;
        user.auth_provider = None;
    };
    if let Some(token) = &flags.token {
        replace_credential(user);
        user.token = Some(token.clone());
    }
    if let (Some(name), Some(password)) = (&flags.username, &flags.password) {
        replace_credential(user);
        user.username = Some(name.clone());
        user.password = Some(password.clone());
    }
    if let Some(cert) = &flags.client_certificate {
        user.client_certificate = Some(cert.clone());
        user.client_certificate_data = None;
    }
    if let Some(key) = &flags.client_key {
        user.client_key = Some(key.clone());
        user.client_key_data = None;
    }
    if let Some(name) = &flags.as_user {
        user.impersonate = Some(name.clone());
    }
    if !flags.as_group.is_empty() {
        user.impersonate_groups = Some(flags.as_group.clone());
    }
    if let Some(uid) = &flags.as_uid {
        user.impersonate_uid = Some(uid.clone());
    }
}

/// The context, cluster and user names chosen, for messages.
struct Selection {
    context: Option<String>,
    cluster: Option<String>,
    user: Option<String>,
}

impl Selection {
    fn of(config: &Kubeconfig, context: Option<&str>, chosen: &KubeConfigOptions) -> Self {
        let found = context.and_then(|name| {
            config
                .contexts
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.context.clone())
        });
        Selection {
            context: context.map(str::to_string),
            cluster: chosen
                .cluster
                .clone()
                .or_else(|| found.as_ref().map(|c| c.cluster.clone())),
            user: chosen.user.clone().or_else(|| found.and_then(|c| c.user)),
        }
    }

    /// The chosen cluster's `proxy-url`, as the kubeconfig writes it.
    fn proxy_url(&self, config: &Kubeconfig) -> Option<String> {
        let name = self.cluster.as_ref()?;
        config
            .clusters
            .iter()
            .find(|c| &c.name == name)?
            .cluster
            .as_ref()?
            .proxy_url
            .clone()
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
/// off-cluster use); `host` and `port` are `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT`.
///
/// # Errors
///
/// A [`StartupError`] naming the missing or unusable file.
pub fn in_cluster(
    dir: &Path,
    host: &str,
    port: &str,
    network: &Arc<Network>,
) -> Result<UpstreamSettings, StartupError> {
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
        proxy: network.environment_proxy.clone(),
        network: network.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
