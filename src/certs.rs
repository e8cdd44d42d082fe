//! A certificate and key read from files and read again when they change
//! (cert-manager, the kubelet's certificate rotation, a renewed secret):
//! the client certificate kubegate presents upstream and the one it serves
//! with `--tls-cert-file`. Connections already open keep theirs; the next
//! handshake gets the new pair. Reading the current pair is lock-free.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, client::ClientSessionMemoryCache};

use crate::error::{StartupError, io_reason};
use crate::lifecycle::Lifecycle;
use crate::reload;

/// After the pair changes, how long no session is resumed: a handshake
/// made with the old certificate and still in flight (bounded by
/// `--connect-timeout`) may store its ticket meanwhile.
const OLD_HANDSHAKES: Duration = Duration::from_secs(60);

/// A certificate and key from two files, kept current.
#[derive(Debug)]
pub struct FilePair {
    current: ArcSwap<CertifiedKey>,
    /// Cleared when the pair changes, so no session resumes with the old
    /// certificate (a resumed TLS session presents none, and keeps the
    /// identity it was made with).
    sessions: ArcSwap<ClientSessionMemoryCache>,
    /// Until when no session is resumed, after a change; then the cache is
    /// cleared once more, of tickets that old handshakes stored late.
    resume_after: std::sync::Mutex<Option<std::time::Instant>>,
}

impl FilePair {
    /// Reads the pair now, and starts watching both files every `interval`.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming the file that cannot be used.
    pub fn watch(
        cert: &Path,
        key: &Path,
        interval: Duration,
        provider: &Arc<CryptoProvider>,
        lifecycle: &Lifecycle,
    ) -> Result<Arc<FilePair>, StartupError> {
        let pair = Arc::new(FilePair {
            current: ArcSwap::from_pointee(load(cert, key, provider)?),
            sessions: ArcSwap::from_pointee(ClientSessionMemoryCache::new(256)),
            resume_after: std::sync::Mutex::new(None),
        });
        let (provider, files) = (
            provider.clone(),
            vec![cert.to_path_buf(), key.to_path_buf()],
        );
        let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
        reload::watch(
            files,
            interval,
            Arc::downgrade(&pair),
            move |pair: &FilePair| {
                // Half-written files fail here: the old pair stays.
                let fresh = load(&cert, &key, &provider)?;
                pair.current.store(Arc::new(fresh));
                pair.sessions
                    .store(Arc::new(ClientSessionMemoryCache::new(256)));
                *pair.resume_after() = Some(std::time::Instant::now() + OLD_HANDSHAKES);
                tracing::info!(cert = %cert.display(), "certificate files changed; new connections use the new pair");
                Ok::<_, StartupError>(())
            },
            lifecycle,
        );
        Ok(pair)
    }

    /// The current pair.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// The session cache for connections using this pair.
    pub fn sessions(&self) -> Arc<ClientSessionMemoryCache> {
        self.sessions.load_full()
    }

    fn resume_after(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.resume_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether sessions may be resumed now: not for a while after the pair
    /// changed, since a handshake made with the old certificate may store
    /// its ticket after the change, and a session resumed from it would
    /// keep the old identity (and its own tickets would keep it going).
    /// Once the while is over, the cache is cleared of such tickets.
    fn may_resume(&self) -> bool {
        let mut after = self.resume_after();
        match *after {
            Some(at) if std::time::Instant::now() < at => false,
            Some(_) => {
                *after = None;
                self.sessions
                    .store(Arc::new(ClientSessionMemoryCache::new(256)));
                true
            }
            None => true,
        }
    }
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, StartupError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| StartupError::File {
            what,
            path: path.display().to_string(),
            message: io_reason(&e),
        })
    };
    let fail = |what: &'static str, path: &PathBuf, message: String| StartupError::File {
        what,
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("certificate", cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                fail(
                    "certificate",
                    &cert.to_path_buf(),
                    format!("is not PEM ({e})"),
                )
            })?;
    if chain.is_empty() {
        return Err(fail(
            "certificate",
            &cert.to_path_buf(),
            "holds no PEM certificate".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&read("key", key)?)
        .map_err(|_| fail("key", &key.to_path_buf(), "holds no PEM private key".into()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "does not belong to the certificate {}; give the matching pair",
                cert.display()
            ),
            other => format!("cannot be used with {} ({other})", cert.display()),
        };
        fail("key", &key.to_path_buf(), reason)
    })
}

impl ResolvesClientCert for FilePair {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for FilePair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS sessions to the apiserver, forgotten whenever the client
/// certificate changes.
impl rustls::client::ClientSessionStore for FilePair {
    fn set_kx_hint(
        &self,
        server: rustls::pki_types::ServerName<'static>,
        group: rustls::NamedGroup,
    ) {
        self.sessions().set_kx_hint(server, group);
    }

    fn kx_hint(&self, server: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions().kx_hint(server)
    }

    fn set_tls12_session(
        &self,
        server: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions().set_tls12_session(server, value);
    }

    fn tls12_session(
        &self,
        server: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.may_resume()
            .then(|| self.sessions().tls12_session(server))
            .flatten()
    }

    fn remove_tls12_session(&self, server: &rustls::pki_types::ServerName<'static>) {
        self.sessions().remove_tls12_session(server);
    }

    fn insert_tls13_ticket(
        &self,
        server: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.sessions().insert_tls13_ticket(server, value);
    }

    fn take_tls13_ticket(
        &self,
        server: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.may_resume()
            .then(|| self.sessions().take_tls13_ticket(server))
            .flatten()
    }
}
