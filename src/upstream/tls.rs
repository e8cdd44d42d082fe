//! The rustls client configuration for the apiserver: the CA bundle (or the
//! system's roots), the client certificate, `insecure-skip-tls-verify`, and
//! one TLS session cache shared by every connection so that reconnects
//! resume instead of doing a full handshake. ALPN is the connector's choice
//! (h2 and http/1.1 for the pool, http/1.1 alone for upgrades).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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

/// The client configuration for the apiserver.
///
/// # Errors
///
/// A [`StartupError`] when the client key does not match its certificate or
/// no trust roots can be found.
pub fn client_config(
    settings: &UpstreamSettings,
    identity: Option<&ClientIdentity>,
    lifecycle: &Lifecycle,
) -> Result<Arc<ClientConfig>, StartupError> {
    // Certificate files are watched, so that a rotated pair is presented
    // on the next connection (with a fresh session cache, since a resumed
    // session presents no certificate).
    if let Some(identity) = identity
        && let Some((cert, key)) = &identity.files
    {
        let pair = FilePair::watch(
            cert,
            key,
            settings.network.token_reload_interval,
            &provider(),
            lifecycle,
        )?;
        let mut config = build(settings, None)?;
        config.client_auth_cert_resolver = pair.clone();
        config.resumption = Resumption::store(pair);
        return Ok(Arc::new(config));
    }
    let mut config = build(settings, identity)?;
    config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(256)));
    Ok(Arc::new(config))
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
