//! TLS to the limiters: the trust and identity files, loaded into tonic's client
//! configuration, and a cheap stamp to notice when they change.

use std::path::Path;

use mxlimit_core::policy::reload::{FileStamp, file_stamp};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ClientTlsSettings;

/// The files of `[limiter.tls]` and the name to expect when none is set.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub settings: ClientTlsSettings,
    /// For DNS discovery the endpoints are addresses: the certificate is checked
    /// against the DNS name.
    pub default_domain: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("limiter.tls: cannot read {}: {e}", path.display()))
}

/// The file's text, if it holds at least one PEM certificate (tonic would take a file
/// without any and fail only at the handshake).
fn read_certs(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path)?;
    let n = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("limiter.tls: {}: {e}", path.display()))?
        .len();
    if n == 0 {
        return Err(format!(
            "limiter.tls: {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(pem)
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("limiter.tls: {}: no private key: {e}", path.display()))?;
    Ok(pem)
}

impl ClientTls {
    /// Reads and checks the files now.
    pub fn load(&self) -> Result<ClientTlsConfig, String> {
        let s = &self.settings;
        let mut tls = ClientTlsConfig::new();
        tls = match &s.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_certs(ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&s.cert, &s.key) {
            tls = tls.identity(Identity::from_pem(read_certs(cert)?, read_key(key)?));
        }
        if let Some(d) = s.domain.as_ref().or(self.default_domain.as_ref()) {
            tls = tls.domain_name(d.clone());
        }
        // Let tonic build its connector now, so that what it refuses is said here.
        tonic::transport::Endpoint::from_static("https://limiter.invalid")
            .tls_config(tls.clone())
            .map_err(|e| format!("limiter.tls: {e}"))?;
        Ok(tls)
    }

    /// Modification times and sizes of the files (a Secret update swaps them).
    pub fn stamp(&self) -> Vec<FileStamp> {
        let s = &self.settings;
        [&s.ca, &s.cert, &s.key]
            .into_iter()
            .flatten()
            .map(|p| file_stamp(p))
            .collect()
    }
}
