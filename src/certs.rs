//! A certificate and key read from files and read again when they change
//! (cert-manager, the kubelet's certificate rotation, a renewed secret):
//! the client certificate kubegate presents upstream and the one it serves
//! with `--tls-cert-file`. Connections already open keep theirs; the next
//! handshake gets the new pair. Reading the current pair is lock-free.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{StartupError, io_reason};
use crate::lifecycle::Lifecycle;
use crate::reload;

/// A certificate and key from two files, kept current.
#[derive(Debug)]
pub struct FilePair {
    current: ArcSwap<CertifiedKey>,
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

impl ResolvesServerCert for FilePair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
