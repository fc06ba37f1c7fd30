//! The `limiter-server` binary as an operator runs it: flags, the embedded default,
//! health, reloads, a broken file, SIGTERM.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mxlimit_proto::v1::Action;
use support::*;
use testkit::prom::{sample, scrape};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_limiter-server");

struct Server {
    child: Child,
    addr: String,
    stderr_path: std::path::PathBuf,
}

impl Server {
    fn start(args: &[&str], dir: &Path) -> Server {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        Server::start_at(&addr, args, dir, true)
    }

    fn start_at(addr: &str, args: &[&str], dir: &Path, with_listen: bool) -> Server {
        let stderr_path = dir.join(format!("stderr-{}.log", addr.replace(':', "_")));
        let mut cmd = Command::new(BIN);
        if with_listen {
            cmd.args(["--listen", addr]);
        }
        let child = cmd
            .args(args)
            .env_remove("MXLIMIT_REDIS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            addr: addr.to_string(),
            stderr_path,
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let mut h = HealthClient::new(ch);
                if let Ok(r) = h
                    .check(HealthCheckRequest {
                        service: "mxlimit.v1.Limiter".into(),
                    })
                    .await
                    && r.into_inner().status == ServingStatus::Serving as i32
                {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("limiter-server exited with {st}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "limiter-server not ready: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn client(
        &self,
    ) -> mxlimit_proto::v1::limiter_client::LimiterClient<tonic::transport::Channel> {
        mxlimit_proto::v1::limiter_client::LimiterClient::new(
            channel(self.addr.parse().unwrap()).await,
        )
    }

    /// One Connect from `ip` is answered, and admitted (so the store behind works).
    async fn assert_admits(&self, ip: &str) {
        let reply = self
            .client()
            .await
            .connect(connect_req("mx1", "s1", ip))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            action(&reply.verdict.unwrap()),
            Action::Accept,
            "{}",
            self.stderr()
        );
    }

    /// Waits without blocking the runtime, so that dropped clients really hang up.
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "limiter-server did not exit: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--listen", "MXLIMIT_LISTEN"),
        ("--redis", "MXLIMIT_REDIS"),
        ("--redis-prefix", "MXLIMIT_REDIS_PREFIX"),
        ("--redis-timeout", "MXLIMIT_REDIS_TIMEOUT"),
        ("--redis-username", "MXLIMIT_REDIS_USERNAME"),
        ("--redis-password ", "MXLIMIT_REDIS_PASSWORD"),
        ("--redis-password-file", "MXLIMIT_REDIS_PASSWORD_FILE"),
        ("--redis-tls-ca", "MXLIMIT_REDIS_TLS_CA"),
        ("--redis-tls-cert", "MXLIMIT_REDIS_TLS_CERT"),
        ("--redis-tls-key", "MXLIMIT_REDIS_TLS_KEY"),
        ("--policy", "MXLIMIT_POLICY"),
        ("--access", "MXLIMIT_ACCESS"),
        ("--reload-interval", "MXLIMIT_RELOAD_INTERVAL"),
        ("--request-timeout", "MXLIMIT_REQUEST_TIMEOUT"),
        ("--memory-max-entries", "MXLIMIT_MEMORY_MAX_ENTRIES"),
        ("--shutdown-grace", "MXLIMIT_SHUTDOWN_GRACE"),
        ("--log-format", "MXLIMIT_LOG_FORMAT"),
        ("--log ", "MXLIMIT_LOG"),
        ("--check", ""),
        ("--health-check", ""),
        ("--tls-cert", "MXLIMIT_TLS_CERT"),
        ("--tls-key", "MXLIMIT_TLS_KEY"),
        ("--tls-client-ca", "MXLIMIT_TLS_CLIENT_CA"),
        ("--health-listen", "MXLIMIT_HEALTH_LISTEN"),
        ("--metrics-listen", "MXLIMIT_METRICS_LISTEN"),
        ("--admin-token-file", "MXLIMIT_ADMIN_TOKEN_FILE"),
        ("--admin-cert-name", "MXLIMIT_ADMIN_CERT_NAME"),
        ("--ledger-interval", "MXLIMIT_LEDGER_INTERVAL"),
        ("--top-keep", "MXLIMIT_TOP_KEEP"),
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
        assert!(help.contains(env), "--help does not mention {env}");
    }
    assert!(help.contains("127.0.0.1:7525"));
    // A secret in the environment never shows in --help.
    let out = Command::new(BIN)
        .arg("--help")
        .env("MXLIMIT_REDIS", "redis://:s3cret@db:6379")
        .env("MXLIMIT_REDIS_PASSWORD", "s3cret")
        .env("MXLIMIT_ADMIN_TOKEN", "s3cret-admin-token")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

#[tokio::test]
async fn with_no_flags_it_serves_the_default_policy_in_memory_on_the_documented_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_at(limiter_server::DEFAULT_LISTEN, &[], dir.path(), false);
    s.wait_ready().await;
    let mut c = s.client().await;
    let reply = c
        .connect(connect_req("mx1", "s1", "192.0.2.7"))
        .await
        .unwrap()
        .into_inner();
    let v = reply.verdict.unwrap();
    assert_eq!(
        (action(&v), v.rule.as_str()),
        (Action::Accept, "policy:client_rate.address")
    );
    assert_eq!(reply.lease_ttl_ms, 30_000);
    assert!(
        s.stderr().contains("store=\"memory\"") || s.stderr().contains("store=memory"),
        "{}",
        s.stderr()
    );
    // Reflection lists the services, for grpcurl and friends.
    let services = list_services(&s.addr).await;
    for want in ["mxlimit.v1.Limiter", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|x| x == want), "{services:?}");
    }
    // SIGTERM: a graceful stop, exit status 0, even with a client that stays connected.
    s.signal("-TERM");
    let st = s.wait_exit().await;
    assert!(st.success(), "exit {st}: {}", s.stderr());
    assert!(s.stderr().contains("shutting down"), "{}", s.stderr());
}

async fn list_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(channel(addr.parse().unwrap()).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = c
        .server_reflection_info(futures_util::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    match reply.message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rules_reload_on_change_and_on_sighup_and_a_broken_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&access, "Connect:198.51.100\tOK\n").unwrap();
    std::fs::write(&policy, "[client_rate]\naddress = 0\n").unwrap();
    let mut s = Server::start(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--access",
            access.to_str().unwrap(),
            "--reload-interval",
            "100ms",
        ],
        dir.path(),
    );
    s.wait_ready().await;
    let mut c = s.client().await;
    let reason = |v: mxlimit_proto::v1::Verdict| v.reason;
    assert_eq!(
        reason(connect(&mut c, "mx1", "a", "198.51.100.1").await),
        "exempt"
    );

    // A changed file is picked up.
    std::fs::write(&access, "# now refused\nConnect:198.51.100\tREJECT\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reason(connect(&mut c, "mx1", "b", "198.51.100.1").await) != "access" {
        assert!(
            Instant::now() < deadline,
            "the change was never loaded: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file is refused with file, line and reason; the rules in force stay.
    std::fs::write(&access, "Connect:198.51.100\tOK\nClientRate:10.0.0\tlots\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = format!(
        "{}:2: ClientRate value \\\"lots\\\" is not a whole number",
        access.display()
    );
    let want_plain = format!(
        "{}:2: ClientRate value \"lots\" is not a whole number",
        access.display()
    );
    while !(s.stderr().contains(&want) || s.stderr().contains(&want_plain)) {
        assert!(
            Instant::now() < deadline,
            "no error for the broken file: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.stderr().contains("previous rules stay in force"));
    assert_eq!(
        reason(connect(&mut c, "mx1", "c", "198.51.100.1").await),
        "access"
    );
    // With the client gone, SIGTERM stops the server at once.
    drop(c);
    s.signal("-TERM");
    let stopped = Instant::now();
    assert!(s.wait_exit().await.success());
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "a clean stop waited for the shutdown grace"
    );
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(&access, "Connect:198.51.100\tREJECT\n").unwrap();
    let mut s = Server::start(
        &[
            "--access",
            access.to_str().unwrap(),
            "--reload-interval",
            "1h",
        ],
        dir.path(),
    );
    s.wait_ready().await;
    let mut c = s.client().await;
    assert_eq!(
        connect(&mut c, "mx1", "a", "198.51.100.1").await.reason,
        "access"
    );
    std::fs::write(&access, "Connect:198.51.100\tOK\n").unwrap();
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(&mut c, "mx1", "b", "198.51.100.1").await.reason != "exempt" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.stderr().contains("SIGHUP"));
}

#[test]
fn check_reports_every_broken_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        "ClientRate:1.2.3\tmany\nConnect:1.2.3.4\tPERHAPS\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--access", access.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.to_lowercase().contains("backtrace"),
        "an operator's error with a stack trace: {err}"
    );
    assert!(
        err.contains(&format!(
            "{}:1: ClientRate value \"many\"",
            access.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:2: \"PERHAPS\" is not a connect action",
            access.display()
        )),
        "{err}"
    );
    // sendmail access files are bytes, often Latin-1: a comment in it is no error.
    std::fs::write(
        &access,
        b"# Zugriff f\xfcr Spammer verweigert\nConnect:192.0.2.1\tREJECT\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--access", access.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["--check", "--policy", "../examples/policy.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 10 access entries"));
}

#[test]
fn an_unreachable_redis_stops_the_start_with_a_clear_error_and_no_password() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &format!("redis://:hunter2@127.0.0.1:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!st.success());
    assert!(
        err.contains(&format!("cannot use Redis at redis://***@127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// Redis 6+ ACL users: the default user is off, so only the named user's password
/// gets in; a wrong user name is refused without showing the password.
#[tokio::test]
async fn a_redis_acl_user_is_used_and_a_wrong_user_is_refused() {
    let redis = testkit::redis::RedisServer::start_with(&[
        "--user",
        "default",
        "off",
        "--user",
        "mxlimit",
        "on",
        ">acl-s3cret",
        "~*",
        "&*",
        "+@all",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "acl-s3cret\n").unwrap();
    let mut s = Server::start(
        &[
            "--redis",
            &redis.url(),
            "--redis-username",
            "mxlimit",
            "--redis-password-file",
            file.to_str().unwrap(),
        ],
        dir.path(),
    );
    s.wait_ready().await;
    s.assert_admits("192.0.2.7").await;
    assert!(!s.stderr().contains("acl-s3cret"), "{}", s.stderr());

    for user in ["default", "someone-else"] {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
            .args(["--redis-username", user])
            .args(["--redis-password-file", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{user}");
        assert!(err.contains("cannot use Redis at"), "{user}: {err}");
        assert!(!err.contains("acl-s3cret"), "{user}: {err}");
    }
}

#[tokio::test]
async fn a_redis_password_from_a_file_is_used_and_a_wrong_one_is_refused_without_showing_it() {
    let redis = testkit::redis::RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    let dir = tempfile::tempdir().unwrap();
    // As a mounted Kubernetes Secret: the file ends with a newline.
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    let mut s = Server::start(
        &[
            "--redis",
            &redis.url(),
            "--redis-password-file",
            file.to_str().unwrap(),
        ],
        dir.path(),
    );
    s.wait_ready().await;
    s.assert_admits("192.0.2.7").await;
    assert!(
        s.stderr().contains("store=\"redis\"") || s.stderr().contains("store=redis"),
        "{}",
        s.stderr()
    );

    // A wrong password (here from the environment) stops the start with a clear error.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
        .env("MXLIMIT_REDIS_PASSWORD", "wrong-pw")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot use Redis at"), "{err}");
    assert!(err.contains("Password authentication failed"), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");

    // An empty password file is an error of its own, before Redis is tried.
    std::fs::write(&file, "\n").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
        .args(["--redis-password-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is empty"), "{err}");
}

#[tokio::test]
async fn health_check_exits_zero_while_serving_and_non_zero_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&[], dir.path());
    s.wait_ready().await;
    let out = Command::new(BIN)
        .args(["--health-check", &s.addr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: SERVING", s.addr)
    );
    // Without an address: the configuration's own port, on loopback.
    let port = s.addr.rsplit_once(':').unwrap().1;
    let out = Command::new(BIN)
        .arg("--health-check")
        .env("MXLIMIT_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("127.0.0.1:{port}: SERVING")
    );
    // Under TLS the own port needs --health-listen: said, not a failed plaintext probe.
    let out = Command::new(BIN)
        .arg("--health-check")
        .env("MXLIMIT_TLS_CERT", "/nonexistent/tls.crt")
        .env("MXLIMIT_TLS_KEY", "/nonexistent/tls.key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS is on: give --health-listen"),
        "{out:?}"
    );
    let free = format!("127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["--health-check", &free])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("cannot reach the limiter at {free}")),
        "{out:?}"
    );
}

/// A Limiter client over TLS, trusting `ca`, presenting `identity` if given.
async fn tls_client(
    addr: &str,
    ca: &str,
    identity: Option<&testkit::tls::Pair>,
) -> Result<
    mxlimit_proto::v1::limiter_client::LimiterClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(mxlimit_proto::v1::limiter_client::LimiterClient::new(ch))
}

/// Whether one Connect call over TLS with this trust and identity is answered.
async fn tls_call_works(addr: &str, ca: &str, identity: Option<&testkit::tls::Pair>) -> bool {
    match tls_client(addr, ca, identity).await {
        Ok(mut c) => c
            .connect(connect_req("mx1", "s1", "192.0.2.7"))
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_ca_and_health_stays_plaintext_on_its_port() {
    use testkit::tls::Pki;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("mxlimit test CA");
    let (cert, key) = pki.server(&["localhost"]).write(dir.path(), "server");
    let client_ca = pki.write_ca(dir.path(), "clients.pem");
    let health_port = free_port();
    let health_addr = format!("127.0.0.1:{health_port}");
    let s = Server::start(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
            "--health-listen",
            &health_addr,
        ],
        dir.path(),
    );
    // Ready: the plaintext health port answers SERVING (the main port needs a client
    // certificate, which the health check does not have).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(BIN)
            .args(["--health-check", &health_addr])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {}", s.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.stderr().contains("tls=\"mutual\"") || s.stderr().contains("tls=mutual"),
        "{}",
        s.stderr()
    );

    let agent = pki.client("mx1.example");
    assert!(
        tls_call_works(&s.addr, pki.ca_pem(), Some(&agent)).await,
        "{}",
        s.stderr()
    );
    // No client certificate, one from another CA, or no TLS at all: refused.
    assert!(!tls_call_works(&s.addr, pki.ca_pem(), None).await);
    let stranger = Pki::new("another CA").client("mx1.example");
    assert!(!tls_call_works(&s.addr, pki.ca_pem(), Some(&stranger)).await);
    let mut plain = LimiterClientPlain::new(channel(s.addr.parse().unwrap()).await);
    assert!(
        plain
            .connect(connect_req("mx1", "s2", "192.0.2.7"))
            .await
            .is_err()
    );
    // The health port serves health only.
    let mut on_health = LimiterClientPlain::new(channel(health_addr.parse().unwrap()).await);
    let err = on_health
        .connect(connect_req("mx1", "s3", "192.0.2.7"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

type LimiterClientPlain<T> = mxlimit_proto::v1::limiter_client::LimiterClient<T>;

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    use testkit::tls::Pki;
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Pki::new("old CA");
    let metrics = format!("127.0.0.1:{}", free_port());
    let (cert, key) = old_ca.server(&["localhost"]).write(dir.path(), "server");
    let mut s = Server::start(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--reload-interval",
            "100ms",
            "--metrics-listen",
            &metrics,
        ],
        dir.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tls_call_works(&s.addr, old_ca.ca_pem(), None).await {
        assert!(Instant::now() < deadline, "not serving TLS: {}", s.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The certificate is renewed by another CA (as a rotation would): new connections
    // get the new one.
    let new_ca = Pki::new("new CA");
    new_ca.server(&["localhost"]).write(dir.path(), "server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tls_call_works(&s.addr, new_ca.ca_pem(), None).await {
        assert!(
            Instant::now() < deadline,
            "new certificate not served: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.stderr().contains("TLS certificate reloaded"),
        "{}",
        s.stderr()
    );
    let ok = sample(
        &scrape(&metrics),
        "mxlimit_tls_reloads_total",
        &[r#"result="ok""#],
    );
    assert!(ok >= Some(1.0), "{ok:?}");
    assert!(!tls_call_works(&s.addr, old_ca.ca_pem(), None).await);

    // A broken key is refused with a message; the certificate in force stays.
    std::fs::write(&key, "not a key\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s
        .stderr()
        .contains("cannot be used; keeping the certificate in force")
    {
        assert!(
            Instant::now() < deadline,
            "broken key not reported: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tls_call_works(&s.addr, new_ca.ca_pem(), None).await);
    let failed = sample(
        &scrape(&metrics),
        "mxlimit_tls_reloads_total",
        &[r#"result="error""#],
    );
    assert!(failed >= Some(1.0), "{failed:?}");
    s.signal("-TERM");
    assert!(s.wait_exit().await.success());
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = testkit::tls::Pki::new("CA");
    let (cert, key) = pki.server(&["localhost"]).write(dir.path(), "server");
    let missing = dir.path().join("missing.key");
    for (c, k, want) in [
        (
            cert.clone(),
            missing.clone(),
            format!("cannot read {}", missing.display()),
        ),
        (
            key.clone(),
            key.clone(),
            format!("{}: no certificate in the file", key.display()),
        ),
    ] {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--tls-cert", c.to_str().unwrap()])
            .args(["--tls-key", k.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("cannot set up TLS") && err.contains(&want),
            "{err}"
        );
    }
    // --tls-cert alone is a usage error.
    let out = Command::new(BIN)
        .args(["--tls-cert", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// The limiter's flags for Redis over mutual TLS.
fn redis_tls_flags<'a>(url: &'a str, ca: &'a Path, cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    let path = |p: &'a Path| p.to_str().unwrap();
    vec![
        "--redis",
        url,
        "--redis-tls-ca",
        path(ca),
        "--redis-tls-cert",
        path(cert),
        "--redis-tls-key",
        path(key),
    ]
}

#[tokio::test]
async fn redis_over_mutual_tls_with_a_private_ca_and_a_clear_error_for_the_wrong_ca() {
    use testkit::tls::Pki;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("redis CA");
    let (rcert, rkey) = pki.server(&["127.0.0.1"]).write(dir.path(), "redis");
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let tls_port = free_port();
    // The plaintext port stays for the harness's own checks; the limiter uses TLS, and
    // Redis requires a client certificate of its CA there.
    let _redis = testkit::redis::RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        rcert.to_str().unwrap(),
        "--tls-key-file",
        rkey.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "yes",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let (ccert, ckey) = pki.client("limiter").write(dir.path(), "client");
    let mut s = Server::start(&redis_tls_flags(&url, &ca, &ccert, &ckey), dir.path());
    s.wait_ready().await;
    s.assert_admits("192.0.2.7").await;

    // Another CA's trust: the start fails and says it is about Redis.
    let other = Pki::new("other CA").write_ca(dir.path(), "other.pem");
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--redis", &url])
        .args(["--redis-tls-ca", other.to_str().unwrap()])
        .args(["--redis-tls-cert", ccert.to_str().unwrap()])
        .args(["--redis-tls-key", ckey.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot use Redis at {url}")), "{err}");
    // TLS files with a plaintext URL are a configuration error, not a silent downgrade.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1"])
        .args(["--redis-tls-ca", ca.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not every URL is rediss://"), "{err}");
}

/// A Redis Cluster that speaks only TLS to clients (and on its bus), reached from one
/// rediss:// seed: the limiter must find the other primaries and reach them over TLS
/// with the same CA and client certificate, or their keys would never be written.
#[tokio::test]
async fn redis_cluster_over_mutual_tls_from_one_seed() {
    use testkit::redis::{ClusterTls, RedisCluster};
    use testkit::tls::Pki;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("cluster CA");
    let (cert, key) = pki.server(&["127.0.0.1"]).write(dir.path(), "node");
    let (bus_cert, bus_key) = pki.client("redis-bus").write(dir.path(), "bus");
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let tls = ClusterTls {
        cert,
        key,
        bus_cert,
        bus_key,
        ca,
    };
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_tls(3, &tls))
        .await
        .unwrap();
    let (ccert, ckey) = pki.client("limiter").write(dir.path(), "client");
    let ca = dir.path().join("ca.pem");
    let seed = &cluster.tls_urls()[0];
    let mut s = Server::start(&redis_tls_flags(seed, &ca, &ccert, &ckey), dir.path());
    s.wait_ready().await;
    let mut c = s.client().await;
    // Sources in many networks: their keys hash to slots on every primary.
    for i in 0..48u8 {
        let ip = format!("10.{i}.0.1");
        let reply = c
            .connect(connect_req("mx1", &format!("s{i}"), &ip))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(action(&reply.verdict.unwrap()), Action::Accept, "{ip}");
    }
    for (node, port) in cluster.nodes.iter().zip(&cluster.tls_ports) {
        let size = node.cmd(&["DBSIZE"]);
        assert!(
            size.trim_start_matches(':').parse::<u64>().unwrap() > 0,
            "no keys on the primary at TLS port {port}: {size}\n{}",
            s.stderr()
        );
    }
    // The nodes demand a client certificate: without one the limiter cannot start, so
    // the run above presented its own.
    let plain = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--redis", &cluster.tls_urls()[1]])
        .args(["--redis-tls-ca", ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.contains("cannot use Redis at"), "{err}");
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test]
async fn metrics_count_decisions_errors_store_round_trips_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(&access, "Connect:198.51.100\tREJECT\n").unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut s = Server::start(
        &[
            "--access",
            access.to_str().unwrap(),
            "--metrics-listen",
            &metrics_addr,
        ],
        dir.path(),
    );
    s.wait_ready().await;
    let mut c = s.client().await;
    for (sess, ip) in [
        ("s1", "192.0.2.1"),
        ("s2", "192.0.2.2"),
        ("s3", "198.51.100.9"),
    ] {
        c.connect(connect_req("mx1", sess, ip)).await.unwrap();
    }
    let bad = c.connect(connect_req("mx1", "s4", "not-an-address")).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    c.disconnect(mxlimit_proto::v1::DisconnectRequest {
        node: "mx1".into(),
        session_id: "s1".into(),
        client_ip: "192.0.2.1".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let m = scrape(&metrics_addr);
    let d = "mxlimit_decisions_total";
    let accept = [
        r#"rpc="connect""#,
        r#"action="accept""#,
        r#"reason="ok""#,
        r#"shadow="false""#,
    ];
    assert_eq!(sample(&m, d, &accept), Some(2.0), "{m}");
    let reject = [
        r#"rpc="connect""#,
        r#"action="reject""#,
        r#"reason="access""#,
    ];
    assert_eq!(sample(&m, d, &reject), Some(1.0), "{m}");
    let invalid = [r#"rpc="connect""#, r#"code="invalid_argument""#];
    assert_eq!(
        sample(&m, "mxlimit_request_errors_total", &invalid),
        Some(1.0)
    );
    // Every call is timed, the invalid one too; the store saw the admitted two only
    // (the access file decides the refusal alone).
    let connect = [r#"rpc="connect""#];
    assert_eq!(
        sample(&m, "mxlimit_request_duration_seconds_count", &connect),
        Some(4.0)
    );
    let store_connect = [r#"op="connect""#];
    assert_eq!(
        sample(&m, "mxlimit_store_duration_seconds_count", &store_connect),
        Some(2.0)
    );
    assert!(
        m.contains(r#"mxlimit_store_duration_seconds_bucket{op="connect",le="0.0001"}"#),
        "{m}"
    );
    assert_eq!(sample(&m, "mxlimit_leases_taken_total", &[]), Some(2.0));
    assert_eq!(sample(&m, "mxlimit_leases_released_total", &[]), Some(1.0));
    let build = [
        r#"store="memory""#,
        &format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")),
    ];
    assert_eq!(sample(&m, "mxlimit_build_info", &build), Some(1.0));
    assert!(
        m.contains("# HELP mxlimit_decisions_total Verdicts given"),
        "{m}"
    );

    // A broken rule file counts as a failed reload.
    std::fs::write(&access, "Connect:198.51.100\tNOT-AN-ACTION\n").unwrap();
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(
        &scrape(&metrics_addr),
        "mxlimit_rule_reloads_total",
        &[r#"result="error""#],
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "{}", scrape(&metrics_addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis going away shows where an operator's alert looks: store errors by operation,
/// and the calls answered UNAVAILABLE (on which the agents fall back).
#[tokio::test]
async fn a_redis_that_goes_away_is_counted_as_store_and_request_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = testkit::redis::RedisServer::start();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut s = Server::start(
        &[
            "--redis",
            &redis.url(),
            "--redis-timeout",
            "200ms",
            "--metrics-listen",
            &metrics_addr,
        ],
        dir.path(),
    );
    s.wait_ready().await;
    s.assert_admits("192.0.2.1").await;
    redis.kill();
    let err = s
        .client()
        .await
        .connect(connect_req("mx1", "s2", "192.0.2.2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let m = scrape(&metrics_addr);
    assert_eq!(
        sample(&m, "mxlimit_store_errors_total", &[r#"op="connect""#]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "mxlimit_request_errors_total",
            &[r#"rpc="connect""#, r#"code="unavailable""#]
        ),
        Some(1.0),
        "{m}"
    );
    let ok = [r#"rpc="connect""#, r#"action="accept""#];
    assert_eq!(sample(&m, "mxlimit_decisions_total", &ok), Some(1.0), "{m}");
}

fn admin_req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Polls a gauge until it has the value.
async fn gauge_becomes(metrics: &str, name: &str, labels: &[&str], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape(metrics), name, labels) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never {want}: {}",
            scrape(metrics)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Long on purpose: one scenario whose steps build on each other, read top to bottom.
#[tokio::test]
async fn admin_tokens_from_a_file_rotate_and_the_gauges_follow_bans_blocks_and_leases() {
    use mxlimit_proto::v1::admin_client::AdminClient;
    use mxlimit_proto::v1::{BlockRequest, HeartbeatRequest, Lease, ListBlocksRequest};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# the operators' token\nfirst-token-0123456789\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[bad_rcpt]\nblock_after = 1\nnetwork_block_after = 0\n",
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut s = Server::start(
        &[
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--metrics-listen",
            &metrics,
            "--ledger-interval",
            "100ms",
            "--reload-interval",
            "100ms",
        ],
        dir.path(),
    );
    s.wait_ready().await;
    let mut admin = AdminClient::new(channel(s.addr.parse().unwrap()).await);
    admin
        .block(admin_req(
            BlockRequest {
                target: "198.51.100.0/24".into(),
                ttl_ms: 60_000,
                reason: "test".into(),
            },
            "first-token-0123456789",
        ))
        .await
        .unwrap();
    let mut c = s.client().await;
    for i in 0..2 {
        c.connect(connect_req(
            "mx1",
            &format!("s{i}"),
            &format!("192.0.2.{}", i + 1),
        ))
        .await
        .unwrap();
    }
    c.heartbeat(HeartbeatRequest {
        node: "mx1".into(),
        epoch: "e1".into(),
        leases: (0..2)
            .map(|i| Lease {
                session_id: format!("s{i}"),
                client_ip: format!("192.0.2.{}", i + 1),
            })
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    bad_rcpt(&mut c, "mx1", "s0", "203.0.113.5", "a@x").await;
    bad_rcpt(&mut c, "mx1", "s0", "203.0.113.5", "b@x").await;
    gauge_becomes(&metrics, "mxlimit_leases_live", &[], 2.0).await;
    gauge_becomes(&metrics, "mxlimit_bans_in_force", &[r#"kind="block""#], 1.0).await;
    gauge_becomes(&metrics, "mxlimit_bans_in_force", &[r#"kind="ban""#], 1.0).await;

    // A new token file: the old token stops working, the new one works.
    std::fs::write(&tokens, "second-token-0123456789\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin
        .list_blocks(admin_req(
            ListBlocksRequest::default(),
            "first-token-0123456789",
        ))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the old token still works: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = admin
        .list_blocks(admin_req(
            ListBlocksRequest::default(),
            "second-token-0123456789",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.blocks.len(), 2);
    let m = scrape(&metrics);
    assert!(
        sample(
            &m,
            "mxlimit_admin_calls_total",
            &[r#"result="unauthenticated""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "mxlimit_admin_calls_total",
            &[r#"rpc="block""#, r#"result="ok""#]
        ),
        Some(1.0)
    );
    // The refused and blocked are logged one line each, with what the operator needs.
    let log = s.stderr();
    assert!(
        log.contains("blocked by an operator") && log.contains(r#"by="token""#),
        "{log}"
    );
    assert!(
        !log.contains("first-token-0123456789") && !log.contains("second-token"),
        "a token leaked into the log"
    );
}

/// A limiter that refuses 198.51.100.0/24 by its access file and logs JSON, ready.
async fn refusing_json_logger(dir: &Path) -> Server {
    let access = dir.join("access");
    std::fs::write(&access, "Connect:198.51.100\tREJECT\n").unwrap();
    let mut s = Server::start(
        &["--access", access.to_str().unwrap(), "--log-format", "json"],
        dir,
    );
    s.wait_ready().await;
    s
}

/// The JSON lines a stopped server logged.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))
        })
        .collect()
}

#[tokio::test]
async fn every_refusal_is_one_json_log_line_with_source_rule_reason_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = refusing_json_logger(dir.path()).await;
    let mut c = s.client().await;
    c.connect(connect_req("mx7", "s1", "198.51.100.9"))
        .await
        .unwrap();
    c.connect(connect_req("mx7", "s2", "192.0.2.1"))
        .await
        .unwrap();
    s.signal("-TERM");
    s.wait_exit().await;
    let log = s.stderr();
    let refusals: Vec<serde_json::Value> = json_lines(&log)
        .into_iter()
        .filter(|v| v["message"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    let r = &refusals[0];
    assert_eq!(r["source"], "198.51.100.9");
    assert_eq!(r["network"], "198.51.100.0/24");
    assert_eq!(r["rule"], "Connect:198.51.100");
    assert_eq!(r["reason"], "access");
    assert_eq!(r["node"], "mx7");
    assert_eq!(r["rpc"], "connect");
    assert_eq!(r["code"], 550);
}

/// Under a flood, refusals are logged within a budget (50 lines a second); the rest
/// are summed up in one line when the next second's first refusal comes, so that
/// every refusal is accounted for and the log stays readable.
#[tokio::test]
async fn a_flood_of_refusals_is_logged_within_the_budget_and_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = refusing_json_logger(dir.path()).await;
    let mut c = s.client().await;
    const FLOOD: usize = 300;
    let start = std::time::Instant::now();
    for i in 0..FLOOD {
        c.connect(connect_req("mx7", &format!("s{i}"), "198.51.100.9"))
            .await
            .unwrap();
    }
    let seconds = start.elapsed().as_secs() + 1;
    // The next second's first refusal reports what the last one left out.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.connect(connect_req("mx7", "last", "198.51.100.9"))
        .await
        .unwrap();
    s.signal("-TERM");
    s.wait_exit().await;
    let log = s.stderr();
    let lines = json_lines(&log);
    let written = lines.iter().filter(|v| v["message"] == "refused").count() as u64;
    let suppressed: u64 = lines.iter().filter_map(|v| v["suppressed"].as_u64()).sum();
    assert!(
        written <= 50 * (seconds + 1),
        "{written} lines in {seconds} s"
    );
    assert_eq!(written + suppressed, FLOOD as u64 + 1, "{log}");
}
