//! Who may call `Admin`: a bearer token (from a file, reloaded when it changes, or the
//! environment), or a client certificate (verified by mutual TLS) valid for one of the
//! admin names. Everything else is refused, on every port, before the service runs;
//! with no credential configured at all the service is off.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::counter;
use rustls::pki_types::{CertificateDer, ServerName};
use thiserror::Error;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::metrics::ADMIN_CALLS;
use mxlimit_core::policy::reload::{FileStamp, file_stamp};

/// Who made an admin call, for the logs: `token` or `cert:<name>`.
#[derive(Debug, Clone)]
pub struct Identity(pub String);

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin token file {0} holds no token")]
    Empty(PathBuf),
    #[error("admin tokens must be at least {MIN_TOKEN} characters ({0})")]
    Short(String),
    #[error("{0:?} is not a DNS name for --admin-cert-name")]
    Name(String),
}

/// Shorter tokens are refused: they can be guessed.
pub const MIN_TOKEN: usize = 16;

/// Settings of admin authentication.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// One token per line (several: for rotation); `#` comments and blank lines skipped.
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    /// DNS names (SAN) of admin client certificates.
    pub cert_names: Vec<String>,
}

pub struct AdminAuth {
    config: AuthConfig,
    tokens: ArcSwap<Vec<String>>,
    stamp: std::sync::Mutex<FileStamp>,
    names: Vec<ServerName<'static>>,
}

/// The tokens of the file and the environment. At start (`strict`) any problem is an
/// error. On a reload a file that is gone, empty or unreadable revokes its tokens,
/// and a line too short is left out: taking a token out of the file must always
/// revoke it, whatever else is wrong with the file. Returns the tokens and the
/// problems met.
fn read_tokens(
    config: &AuthConfig,
    strict: bool,
) -> Result<(Vec<String>, Vec<AuthError>), AuthError> {
    let mut tokens = Vec::new();
    let mut problems = Vec::new();
    if let Some(path) = &config.token_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect();
                if lines.is_empty() {
                    problems.push(AuthError::Empty(path.clone()));
                }
                for l in lines {
                    if l.len() < MIN_TOKEN {
                        problems.push(AuthError::Short(format!("in {}", path.display())));
                    } else {
                        tokens.push(l.to_string());
                    }
                }
            }
            Err(source) => problems.push(AuthError::Read {
                path: path.clone(),
                source,
            }),
        }
    }
    if let Some(t) = &config.token {
        let t = t.trim();
        if t.len() < MIN_TOKEN {
            problems.push(AuthError::Short("MXLIMIT_ADMIN_TOKEN".into()));
        } else {
            tokens.push(t.to_string());
        }
    }
    if strict && let Some(first) = problems.pop() {
        return Err(first);
    }
    Ok((tokens, problems))
}

/// Equal in time whatever the contents, so that timing tells nothing about a token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminAuth {
    pub fn new(config: AuthConfig) -> Result<Arc<AdminAuth>, AuthError> {
        let (tokens, _) = read_tokens(&config, true)?;
        let names = config
            .cert_names
            .iter()
            .map(|n| {
                ServerName::try_from(n.clone())
                    .ok()
                    .filter(|s| matches!(s, ServerName::DnsName(_)))
                    .ok_or_else(|| AuthError::Name(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        let stamp = config
            .token_file
            .as_deref()
            .map(file_stamp)
            .unwrap_or_default();
        Ok(Arc::new(AdminAuth {
            config,
            tokens: ArcSwap::from_pointee(tokens),
            stamp: std::sync::Mutex::new(stamp),
            names,
        }))
    }

    /// Whether any credential can succeed.
    pub fn enabled(&self) -> bool {
        !self.tokens.load().is_empty() || !self.names.is_empty()
    }

    pub fn uses_tokens(&self) -> bool {
        !self.tokens.load().is_empty()
    }

    /// Reads the token file again if it changed. Problems are reported; the tokens
    /// that remain valid are the ones now in the file (and the environment's).
    pub fn reload_if_changed(&self) -> Result<bool, Vec<AuthError>> {
        let Some(path) = &self.config.token_file else {
            return Ok(false);
        };
        let now = file_stamp(path);
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *stamp == now {
            return Ok(false);
        }
        *stamp = now;
        let (tokens, problems) = read_tokens(&self.config, false).map_err(|e| vec![e])?;
        self.tokens.store(Arc::new(tokens));
        if problems.is_empty() {
            Ok(true)
        } else {
            Err(problems)
        }
    }

    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.reload_if_changed() {
                    Ok(true) => tracing::info!("admin tokens reloaded"),
                    Ok(false) => {}
                    Err(problems) => {
                        for e in problems {
                            tracing::error!(error = %e, "admin token file: bad entries are not accepted");
                        }
                    }
                },
                _ = &mut stop => return,
            }
        }
    }

    fn token_ok(&self, presented: &str) -> bool {
        // Every token is compared, so that the time taken does not tell which matched.
        self.tokens
            .load()
            .iter()
            .fold(false, |ok, t| same(t.as_bytes(), presented.as_bytes()) | ok)
    }

    /// The admin name the client certificate (already verified against the client
    /// CA by the TLS handshake) carries as a subjectAltName, exactly: a wildcard
    /// certificate never stands for an admin.
    fn cert_name(&self, certs: &[CertificateDer<'_>]) -> Option<&ServerName<'static>> {
        let leaf = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
        let presented: Vec<&str> = leaf
            .valid_dns_names()
            .filter(|n| !n.starts_with('*'))
            .collect();
        self.names.iter().find(|n| {
            presented.iter().any(|p| {
                p.trim_end_matches('.')
                    .eq_ignore_ascii_case(n.to_str().trim_end_matches('.'))
            })
        })
    }

    /// Who this is, or why not.
    pub fn check<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        if !self.enabled() {
            return Err(Status::unauthenticated(
                "the admin API is off: start the limiter with --admin-token-file, MXLIMIT_ADMIN_TOKEN or --admin-cert-name",
            ));
        }
        if let Some(v) = req.metadata().get("authorization") {
            let presented = v.to_str().ok().and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
            return match presented {
                Some(t) if self.token_ok(t.trim()) => Ok(Identity("token".into())),
                _ => Err(Status::unauthenticated("admin token not accepted")),
            };
        }
        if let Some(certs) = req.peer_certs()
            && let Some(name) = self.cert_name(&certs)
        {
            return Ok(Identity(format!("cert:{}", name.to_str())));
        }
        Err(Status::unauthenticated(
            "admin calls need a bearer token (authorization: Bearer ...) or an admin client certificate",
        ))
    }
}

// Tokens never reach a log line.
impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens.load().len())
            .field("cert_names", &self.config.cert_names)
            .finish()
    }
}

/// The interceptor in front of the `Admin` service.
#[derive(Clone)]
pub struct RequireAdmin(pub Arc<AdminAuth>);

impl Interceptor for RequireAdmin {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.0.check(&req) {
            Ok(id) => {
                req.extensions_mut().insert(id);
                Ok(req)
            }
            Err(status) => {
                counter!(ADMIN_CALLS, "rpc" => "any", "result" => "unauthenticated").increment(1);
                tracing::warn!(
                    peer = ?req.remote_addr(),
                    why = status.message(),
                    "admin call refused"
                );
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: &str) -> Arc<AdminAuth> {
        AdminAuth::new(AuthConfig {
            token: Some(token.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn with_header(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("authorization", v.parse().unwrap());
        r
    }

    #[test]
    fn only_the_configured_token_passes() {
        let a = auth("0123456789abcdef-secret");
        assert!(
            a.check(&with_header("Bearer 0123456789abcdef-secret"))
                .is_ok()
        );
        for bad in [
            "Bearer 0123456789abcdef-secreT",
            "Bearer ",
            "Basic x",
            "0123456789abcdef-secret",
        ] {
            assert_eq!(
                a.check(&with_header(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            a.check(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn emptying_or_removing_the_token_file_revokes_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "old-token-0123456789\n").unwrap();
        let a = AdminAuth::new(AuthConfig {
            token_file: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        let ok = |t: &str| a.check(&with_header(&format!("Bearer {t}"))).is_ok();
        assert!(ok("old-token-0123456789"));
        // A new token next to a line too short: the short one is refused, the new one
        // works, the old one is gone.
        std::fs::write(&file, "new-token-0123456789\nshort\n").unwrap();
        assert!(a.reload_if_changed().is_err());
        assert!(ok("new-token-0123456789") && !ok("old-token-0123456789"));
        std::fs::remove_file(&file).unwrap();
        assert!(a.reload_if_changed().is_err());
        assert!(!ok("new-token-0123456789"));
    }

    #[test]
    fn no_credential_configured_means_off() {
        let a = AdminAuth::new(AuthConfig::default()).unwrap();
        let e = a
            .check(&with_header("Bearer anything-at-all-here"))
            .unwrap_err();
        assert!(e.message().contains("admin API is off"), "{e}");
    }

    #[test]
    fn short_tokens_and_bad_names_are_refused() {
        assert!(matches!(
            AdminAuth::new(AuthConfig {
                token: Some("short".into()),
                ..Default::default()
            }),
            Err(AuthError::Short(_))
        ));
        assert!(matches!(
            AdminAuth::new(AuthConfig {
                cert_names: vec!["1.2.3.4".into()],
                ..Default::default()
            }),
            Err(AuthError::Name(_))
        ));
    }
}
