//! A throwaway PKI, made in memory for each run: a CA, a server certificate
//! for the loopback names, and client certificates whose CN is the user and
//! whose O fields are the groups, as Kubernetes reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that issues server and client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// rcgen fails only on invalid parameters, which are fixed here.
fn must<T>(result: Result<T, rcgen::Error>) -> T {
    result.expect("fixed certificate parameters are valid")
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = must(CertificateParams::new(Vec::<String>::new()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = must(CertifiedIssuer::self_signed(
            params,
            must(KeyPair::generate()),
        ));
        Pki { ca }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn server(&self) -> Issued {
        self.server_for(&["localhost", "127.0.0.1", "::1"])
    }

    /// A server certificate for the given DNS names and IP addresses.
    pub fn server_for(&self, names: &[&str]) -> Issued {
        let mut params = must(CertificateParams::new(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Issued {
        self.sign(client_params(user, groups))
    }

    /// A client certificate for `user` that expired long ago.
    pub fn expired_client(&self, user: &str) -> Issued {
        let mut params = client_params(user, &[]);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = must(KeyPair::generate());
        let cert = must(params.signed_by(&key, &self.ca));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn client_params(user: &str, groups: &[&str]) -> CertificateParams {
    let mut params = must(CertificateParams::new(Vec::<String>::new()));
    params.distinguished_name.push(DnType::CommonName, user);
    for group in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *group);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` (mode 0600) into `dir`.
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// Writes a file only its owner can read.
///
/// # Errors
///
/// The I/O error.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}
