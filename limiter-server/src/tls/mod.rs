//! TLS and mutual TLS for the gRPC port, with the certificate files reloaded when they
//! change (cert-manager and Kubernetes Secrets rotate them under a running server).
//!
//! Each accepted connection takes the configuration in force at that moment; a broken
//! or half-written set of files is refused and the previous one stays.

mod incoming;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use mxlimit_core::policy::reload::{FileStamp, file_stamp};

pub use incoming::incoming;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA {path}: {what}")]
    ClientCa { path: PathBuf, what: String },
}

/// Where the server's certificate material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when given, clients must present a certificate they signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files and builds a server configuration that speaks HTTP/2 (gRPC).
    pub fn load(&self) -> Result<rustls::ServerConfig, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            what: format!("no private key: {e}"),
        })?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c).map_err(|e| TlsError::ClientCa {
                        path: ca.clone(),
                        what: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: ca.clone(),
                        what: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// What identifies the files' current contents cheaply: their modification times
    /// and sizes (a Secret update replaces them through a symlink swap).
    fn stamp(&self) -> Vec<FileStamp> {
        self.paths().map(file_stamp).collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The configuration in force, replaced when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
    stamp: std::sync::Mutex<Vec<FileStamp>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads the files once; an error here stops the start.
    pub fn open(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let stamp = files.stamp();
        let config = files.load()?;
        Ok(Arc::new(ServerTls {
            files,
            current: ArcSwap::from_pointee(config),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Loads the files again if they changed. Returns whether a new configuration is
    /// in force; on an error the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = self.files.stamp();
        {
            let seen = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
        }
        let result = self.files.load();
        // Remember this state either way: a broken set is reported once, not every tick.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
        self.current.store(Arc::new(result?));
        Ok(true)
    }

    /// Checks the files every `every` until `stop` resolves.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        let run = async {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.reload_if_changed() {
                    Ok(true) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok")
                            .increment(1);
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "error")
                            .increment(1);
                        tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the certificate in force")
                    }
                }
            }
        };
        tokio::select! {
            _ = run => {}
            _ = stop => {}
        }
    }
}
