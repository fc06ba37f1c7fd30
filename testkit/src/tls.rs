//! Test certificates, made by the test: a CA, and server and client certificates it
//! signs (PEM), written to files as a server reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority of its own.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A certificate and its key, in PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/NAME`; returns its path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Pair {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with this common name.
    pub fn client(&self, name: &str) -> Pair {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Server options for a limiter on mutual TLS with `pki` (its certificate for
/// `localhost`, clients of the same CA), whose Admin API admits the client certificate
/// names `admin_names` and nothing else (no token). Writes the files into `dir`, the
/// CA as `ca.pem`.
#[cfg(feature = "limiter")]
pub fn mtls_admin_options(
    pki: &Pki,
    dir: &Path,
    admin_names: &[&str],
) -> limiter_server::server::ServeOptions {
    use limiter_server::admin::auth::{AdminAuth, AuthConfig};
    use limiter_server::tls::{ServerTls, TlsFiles};
    let (cert, key) = pki.server(&["localhost"]).write(dir, "server");
    let ca = pki.write_ca(dir, "ca.pem");
    let tls = ServerTls::open(TlsFiles {
        cert,
        key,
        client_ca: Some(ca),
    })
    .unwrap();
    let admin = AdminAuth::new(AuthConfig {
        cert_names: admin_names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    })
    .unwrap();
    limiter_server::server::ServeOptions {
        tls: Some(tls),
        admin: Some(admin),
        ..Default::default()
    }
}
