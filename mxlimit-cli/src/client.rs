//! The connection to one limiter's Admin API, with the caller's credentials.

use anyhow::{Context, Result, bail};
use mxlimit_proto::v1::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::cli::Cli;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

fn token(cli: &Cli) -> Result<Option<String>> {
    if let Some(path) = &cli.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        return match first {
            Some(t) => Ok(Some(t.to_string())),
            None => bail!("the token file {} holds no token", path.display()),
        };
    }
    Ok(std::env::var("MXLIMIT_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn connect(cli: &Cli) -> Result<Admin> {
    let url = if cli.server.contains("://") {
        cli.server.clone()
    } else {
        format!("http://{}", cli.server)
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{:?} is not a limiter URL", cli.server))?
        .connect_timeout(cli.timeout)
        .timeout(cli.timeout);
    let tls_files = cli.tls_ca.is_some() || cli.tls_cert.is_some() || cli.tls_domain.is_some();
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &cli.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(c), Some(k)) = (&cli.tls_cert, &cli.tls_key) {
            tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
        }
        if let Some(d) = &cli.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("cannot set up TLS to the limiter")?;
    } else if tls_files {
        bail!("TLS files are given but the server URL {url} is not https://");
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the limiter at {url}"))?;
    let bearer = match token(cli)? {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the admin token holds characters a header cannot carry")?,
        ),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

/// A gRPC error as an operator should read it.
pub fn explain_status(s: Status) -> anyhow::Error {
    use tonic::Code;
    let msg = s.message();
    match s.code() {
        Code::Unauthenticated => anyhow::anyhow!(
            "not authorized: {msg}\n(give --token-file FILE or MXLIMIT_ADMIN_TOKEN, or an admin client certificate)"
        ),
        Code::InvalidArgument => anyhow::anyhow!("refused: {msg}"),
        Code::Unavailable => anyhow::anyhow!("the limiter cannot answer now: {msg}"),
        Code::FailedPrecondition => anyhow::anyhow!("{msg}"),
        Code::Unimplemented => {
            anyhow::anyhow!("this limiter has no Admin API (an older version?): {msg}")
        }
        Code::DeadlineExceeded => anyhow::anyhow!("no answer in time (raise --timeout): {msg}"),
        // What a server that refuses our TLS handshake looks like from here.
        Code::Cancelled => anyhow::anyhow!(
            "the limiter closed the connection ({msg}); over mutual TLS it takes only a client certificate of its CA (--tls-cert, --tls-key)"
        ),
        c => anyhow::anyhow!("{c:?}: {msg}"),
    }
}
