//! The rustls client configuration for the apiserver: the CA bundle (or the
//! system's roots), the client certificate, `insecure-skip-tls-verify`, and
//! a TLS session cache shared by every connection so that reconnects
//! resume instead of doing a full handshake. ALPN is the connector's choice
//! (h2 and http/1.1 for the pool, http/1.1 alone for upgrades).
//!
//! With client certificate files, which are read again when they change,
//! there is one configuration per certificate generation, each with its
//! own session cache. A resumed TLS session presents no certificate and
//! keeps the identity it was made with, so a ticket from a handshake made
//! with the old certificate (even one that finishes after the change) goes
//! to the old generation's cache, which no new connection reads.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::settings::{ClientIdentity, UpstreamSettings};
use crate::certs::FilePair;
use crate::error::StartupError;
use crate::lifecycle::Lifecycle;

/// The one crypto provider kubegate uses, everywhere: ring's, with the
/// AES-128-GCM suites offered first. Go's crypto/tls (the apiserver's)
/// prefers them and picks by its own order, so this is what a real
/// cluster negotiates anyway; AES-128 is as safe for TLS and costs fewer
/// rounds per byte than AES-256, which rustls would offer first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

/// Sessions remembered per generation, per apiserver name.
const SESSIONS: usize = 256;

/// The client TLS configuration for one apiserver, current for the
/// client certificate files when there are any.
#[derive(Debug)]
pub struct ClientTls {
    /// Trust, and the fixed identity if there is one.
    base: ClientConfig,
    /// Client certificate files, read again when they change.
    files: Option<Arc<FilePair>>,
    generation: ArcSwap<Generation>,
}

/// The configuration for one client certificate, with its session cache.
#[derive(Debug)]
struct Generation {
    presented: Option<Arc<CertifiedKey>>,
    config: Arc<ClientConfig>,
}

impl Generation {
    fn new(base: &ClientConfig, presented: Option<Arc<CertifiedKey>>) -> Self {
        let mut config = base.clone();
        if let Some(key) = &presented {
            config.client_auth_cert_resolver = Arc::new(Presents(key.clone()));
        }
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        Generation {
            presented,
            config: Arc::new(config),
        }
    }
}

impl ClientTls {
    /// The configuration for the apiserver.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] when the client key does not match its
    /// certificate or no trust roots can be found.
    pub fn new(
        settings: &UpstreamSettings,
        identity: Option<&ClientIdentity>,
        lifecycle: &Lifecycle,
    ) -> Result<Arc<Self>, StartupError> {
        let files = identity.and_then(|identity| identity.files.as_ref());
        let files = match files {
            Some((cert, key)) => Some(FilePair::watch(
                cert,
                key,
                settings.network.token_reload_interval,
                &provider(),
                lifecycle,
            )?),
            None => None,
        };
        // The files' pair is presented by each generation, not the base.
        let base = build(settings, identity.filter(|_| files.is_none()))?;
        let presented = files.as_ref().map(|files| files.current());
        let generation = ArcSwap::from_pointee(Generation::new(&base, presented));
        Ok(Arc::new(ClientTls {
            base,
            files,
            generation,
        }))
    }

    /// The configuration a new connection uses: the current certificate
    /// generation's.
    pub fn current(&self) -> Arc<ClientConfig> {
        let generation = self.generation.load();
        let Some(files) = &self.files else {
            return generation.config.clone();
        };
        let presented = files.current();
        if generation
            .presented
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &presented))
        {
            return generation.config.clone();
        }
        // Two connections racing here may each make one; the one not kept
        // only loses its ticket.
        let fresh = Generation::new(&self.base, Some(presented));
        let config = fresh.config.clone();
        self.generation.store(Arc::new(fresh));
        config
    }
}

/// Presents one certificate generation's pair.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl ResolvesClientCert for Presents {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn build(
    settings: &UpstreamSettings,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, StartupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Credential(format!("TLS setup failed: {e}")))?;
    let builder = if settings.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(
                provider.signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(root_store(settings)?)
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| {
                let reason = match e {
                    rustls::Error::InconsistentKeys(_) => "the key does not belong to the certificate".to_string(),
                    other => other.to_string(),
                };
                StartupError::Credential(format!(
                    "client certificate and key ({}) cannot be used: {reason}; give the matching pair",
                    identity.origin
                ))
            }),
    }
}

fn root_store(settings: &UpstreamSettings) -> Result<RootCertStore, StartupError> {
    let mut roots = RootCertStore::empty();
    match &settings.root_certs {
        Some(certs) => {
            // Already validated one by one in config; a failure here is a bug.
            roots.add_parsable_certificates(certs.iter().cloned());
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(StartupError::Credential(format!(
                    "{} names no certificate-authority and the system has no trusted CA certificates; set certificate-authority in the kubeconfig",
                    settings.origin
                )));
            }
        }
    }
    Ok(roots)
}

/// `insecure-skip-tls-verify`: any server certificate is accepted, but the
/// handshake signatures are still checked so the connection is well formed.
#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{CipherSuite, SupportedCipherSuite};

    #[test]
    fn aes_128_gcm_is_offered_first_in_each_tls_version() {
        let suites = super::provider().cipher_suites.clone();
        let first_13 = suites
            .iter()
            .find(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .map(SupportedCipherSuite::suite);
        let first_12 = suites
            .iter()
            .find(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(SupportedCipherSuite::suite);
        assert_eq!(first_13, Some(CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert_eq!(
            first_12,
            Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
        // Nothing is dropped, only reordered.
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }
}
