//! The gRPC `mxlimit.v1.Admin` service. Authentication happens before any of this
//! (see `auth`); here requests are validated, answered from the ledger and the policy,
//! and every change is logged with who made it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use metrics::counter;
use mxlimit_proto::v1::admin_server::Admin;
use mxlimit_proto::v1::{
    BlockEntry, BlockReply, BlockRequest, ExplainReply, ExplainRequest, GroupBy, LevelState,
    ListBlocksReply, ListBlocksRequest, RankBy, ReloadRulesReply, ReloadRulesRequest, RuleMatch,
    SeedTopSourcesReply, SeedTopSourcesRequest, TopSource, TopSourcesReply, TopSourcesRequest,
    UnblockReply, UnblockRequest,
};
use tonic::{Request, Response, Status};

use super::auth::Identity;
use crate::grpc::validate;
use crate::grpc::validate::shown;
use crate::metrics::ADMIN_CALLS;
use mxlimit_core::decision::Engine;
use mxlimit_core::policy::ClientRules;
use mxlimit_core::policy::access::{ConnectAction, Value};
use mxlimit_core::source::{Level, Source, canonical};
use mxlimit_core::store::ledger::{
    Buckets, HOUR_MS, Inspection, Ledger, MAX_WINDOW_MS, MINUTE_MS, Metric, Seed, SeedEntry,
    TopQuery,
};
use mxlimit_core::store::{Store, StoreError};

const DEFAULT_WINDOW_MS: u64 = 24 * HOUR_MS;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;
/// Bans in one ListBlocks reply: an attack may ban far more sources than that.
const DEFAULT_BANS_LISTED: u32 = 1000;
const MAX_BANS_LISTED: u32 = 10_000;
const DEFAULT_BLOCK_MS: u64 = HOUR_MS;
const MAX_BLOCK_MS: u64 = 365 * 24 * HOUR_MS;
/// Reasons go into SMTP replies: one short printable line.
const MAX_REASON: usize = 200;
/// Entries of one seed at most: its one store script holds Redis for a few ms only.
pub const MAX_SEED_ENTRIES: usize = 1000;
const MAX_ORIGIN: usize = 64;
/// More bad recipients from one address in one minute than any MTA refuses.
const MAX_SEED_COUNT: u64 = 1_000_000_000;

pub struct AdminService<S> {
    engine: Arc<Engine<S>>,
    /// Entries kept per top-list bucket (`--top-keep`): the most a bucket can give.
    keep: u32,
}

impl<S> AdminService<S> {
    pub fn new(engine: Arc<Engine<S>>, keep: u32) -> Self {
        AdminService { engine, keep }
    }
}

fn store_error(e: StoreError) -> Status {
    tracing::warn!(error = %e, "admin: store error");
    Status::unavailable(format!("store unavailable: {e}"))
}

fn done<T>(rpc: &'static str, r: Result<T, Status>) -> Result<Response<T>, Status> {
    let result = if r.is_ok() { "ok" } else { "error" };
    counter!(ADMIN_CALLS, "rpc" => rpc, "result" => result).increment(1);
    r.map(Response::new)
}

fn who<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Identity>()
        .map_or_else(|| "unknown".into(), |i| i.0.clone())
}

/// An address (`/32` or `/128`) or a network; host bits are cleared.
pub fn parse_target(text: &str) -> Result<IpNet, Status> {
    let t = text.trim();
    let net = if let Ok(ip) = t.parse::<IpAddr>() {
        IpNet::from(canonical(ip))
    } else {
        let net = t
            .parse::<IpNet>()
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "target {} is neither an address nor a network (1.2.3.4, 206.81.85.0/24, 2001:db8::/64)",
                    shown(t)
                ))
            })?
            .trunc();
        // Clients are matched by their IPv4 address, never the mapped IPv6 form.
        match net {
            IpNet::V6(n) if n.prefix_len() >= 96 && n.network().to_ipv4_mapped().is_some() => {
                let v4 = n
                    .network()
                    .to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net)
            }
            _ => net,
        }
    };
    let shortest = match net {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 16,
    };
    if net.prefix_len() < shortest {
        return Err(Status::invalid_argument(format!(
            "{t} is wider than /{shortest}: refusing to block that much of the Internet"
        )));
    }
    Ok(net)
}

fn block_entry(target: String, expires_in_ms: u64, reason: String, kind: &str) -> BlockEntry {
    BlockEntry {
        target,
        expires_in_ms,
        reason,
        kind: kind.into(),
    }
}

fn connect_rule(rules: &ClientRules<'_>) -> Option<RuleMatch> {
    let e = rules.connect?;
    let value = match &e.value {
        Value::Connect(ConnectAction::Exempt) => "OK (no limits)".to_string(),
        Value::Connect(ConnectAction::Refuse {
            code,
            enhanced,
            text,
        }) => format!("{code} {enhanced} {text}"),
        other => format!("{other:?}"),
    };
    Some(RuleMatch {
        kind: "Connect".into(),
        level: String::new(),
        rule: e.rule.clone(),
        value,
    })
}

fn limit_rule(kind: &str, level: Level, rule: &str, value: u32) -> RuleMatch {
    RuleMatch {
        kind: kind.into(),
        level: level.as_str().into(),
        rule: rule.into(),
        value: if value == 0 {
            "0 (unlimited)".into()
        } else {
            value.to_string()
        },
    }
}

/// The rules that apply to a source: its access entry, its four limits, its greet pause.
fn matched_rules(rules: &ClientRules<'_>) -> Vec<RuleMatch> {
    let mut matched: Vec<RuleMatch> = connect_rule(rules).into_iter().collect();
    matched.extend([
        limit_rule(
            "ClientRate",
            Level::Address,
            rules.rate.rule,
            rules.rate.value,
        ),
        limit_rule(
            "ClientRate",
            Level::Network,
            rules.net_rate.rule,
            rules.net_rate.value,
        ),
        limit_rule(
            "ClientConn",
            Level::Address,
            rules.conn.rule,
            rules.conn.value,
        ),
        limit_rule(
            "ClientConn",
            Level::Network,
            rules.net_conn.rule,
            rules.net_conn.value,
        ),
    ]);
    if rules.greet_pause_ms > 0 {
        matched.push(RuleMatch {
            kind: "GreetPause".into(),
            level: String::new(),
            rule: "GreetPause".into(),
            value: format!("{} ms", rules.greet_pause_ms),
        });
    }
    matched
}

/// One level of a source as Explain shows it: counters next to their limits (rate,
/// conn, tarpit, block), and the ban in force.
fn level_state(source: &Source, i: &Inspection, level: Level, limits: [u32; 4]) -> LevelState {
    let [rate, conn, tarpit, block] = limits;
    let ban = i.ban.at(level);
    LevelState {
        source: source.at(level),
        connections: i.connections.at(level),
        rate_limit: rate,
        sessions: i.sessions.at(level),
        conn_limit: conn,
        bad_recipients: i.bad_recipients.at(level),
        tarpit_after: tarpit,
        block_after: block,
        ban_ms_left: ban.map_or(0, |(ms, _)| ms),
        offence: ban.map_or(0, |(_, o)| o),
    }
}

impl<S: Store + Ledger> AdminService<S> {
    async fn top(&self, r: TopSourcesRequest) -> Result<TopSourcesReply, Status> {
        let window_ms = match r.window_ms {
            0 => DEFAULT_WINDOW_MS,
            w if w > MAX_WINDOW_MS => {
                return Err(Status::invalid_argument(format!(
                    "window_ms {w} is longer than the {} days kept",
                    MAX_WINDOW_MS / (24 * HOUR_MS)
                )));
            }
            w => w,
        };
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            l if l > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {l} is over {MAX_LIMIT}"
                )));
            }
            l => l,
        };
        let level = match r.group_by() {
            GroupBy::Address => Level::Address,
            GroupBy::Unspecified | GroupBy::Network => Level::Network,
        };
        let rank = match r.rank_by() {
            RankBy::Unspecified | RankBy::BadRecipients => Metric::BadRecipients,
            RankBy::RefusedConnections => Metric::RefusedConnections,
        };
        let buckets = Buckets::for_window(window_ms);
        let q = TopQuery {
            rank,
            level,
            buckets,
            limit,
            per_bucket: Buckets::per_bucket(limit, self.keep),
        };
        let rows = self.engine.store().top(&q).await.map_err(store_error)?;
        Ok(TopSourcesReply {
            sources: rows
                .into_iter()
                .map(|r| TopSource {
                    source: r.source,
                    bad_recipients: r.bad_recipients,
                    refused_connections: r.refused_connections,
                })
                .collect(),
            window_ms: buckets.window_ms(),
        })
    }

    async fn explain(&self, r: ExplainRequest) -> Result<ExplainReply, Status> {
        let ip = validate::client_ip("client_ip", &r.client_ip)?;
        let given = validate::client_name(&r.client_name)?;
        let policy = self.engine.policy().get();
        let s = &policy.settings;
        let source = policy.source(ip);
        let name = self.engine.client_name(&policy, ip, given).await;
        let rules = policy.client_rules(&source, name.as_deref());
        let i = self
            .engine
            .store()
            .inspect(
                &source,
                s.client_rate.window.as_millis(),
                s.bad_rcpt.window.as_millis(),
                s.shadow,
            )
            .await
            .map_err(store_error)?;
        let b = &s.bad_rcpt;
        Ok(ExplainReply {
            client_ip: source.ip_text.clone(),
            network: source.net.to_string(),
            client_name: name.as_deref().unwrap_or("").to_string(),
            rules: matched_rules(&rules),
            address: Some(level_state(
                &source,
                &i,
                Level::Address,
                [
                    rules.rate.value,
                    rules.conn.value,
                    b.tarpit_after,
                    b.block_after,
                ],
            )),
            net: Some(level_state(
                &source,
                &i,
                Level::Network,
                [
                    rules.net_rate.value,
                    rules.net_conn.value,
                    b.network_tarpit_after,
                    b.network_block_after,
                ],
            )),
            blocks: self.blocks_covering(source.ip),
            connect: Some(self.engine.connect_verdict_for(
                &policy,
                &rules,
                &source,
                &i.connect_counts(),
            )),
            shadow: s.shadow,
        })
    }

    /// Operators' blocks that cover `ip`, as this instance holds them.
    fn blocks_covering(&self, ip: IpAddr) -> Vec<BlockEntry> {
        self.engine
            .blocks()
            .covering(ip)
            .into_iter()
            .map(|b| {
                let left = b.until.saturating_duration_since(std::time::Instant::now());
                block_entry(
                    b.target.to_string(),
                    left.as_millis() as u64,
                    b.reason,
                    "block",
                )
            })
            .collect()
    }

    async fn block(&self, r: BlockRequest, by: &str) -> Result<BlockReply, Status> {
        let target = parse_target(&r.target)?;
        let ttl_ms = match r.ttl_ms {
            0 => DEFAULT_BLOCK_MS,
            t if t > MAX_BLOCK_MS => {
                return Err(Status::invalid_argument("ttl_ms is over 365 days"));
            }
            t => t,
        };
        let reason = r.reason.trim();
        if reason.len() > MAX_REASON || !reason.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Status::invalid_argument(format!(
                "reason must be printable ASCII of at most {MAX_REASON} characters (it goes into SMTP replies)"
            )));
        }
        self.engine
            .store()
            .put_block(target, ttl_ms, reason)
            .await
            .map_err(store_error)?;
        self.engine
            .blocks()
            .update(target, Some((Duration::from_millis(ttl_ms), reason)));
        tracing::warn!(%target, ttl_ms, reason, by, "blocked by an operator");
        Ok(BlockReply {
            block: Some(block_entry(
                target.to_string(),
                ttl_ms,
                reason.to_string(),
                "block",
            )),
        })
    }

    async fn unblock(&self, r: UnblockRequest, by: &str) -> Result<UnblockReply, Status> {
        let target = parse_target(&r.target)?;
        let store = self.engine.store();
        let block_removed = store.remove_block(target).await.map_err(store_error)?;
        self.engine.blocks().update(target, None);
        // Automatic bans exist for addresses and for the configured networks.
        let policy = self.engine.policy().get();
        let source = policy.source(target.network());
        let level = if target.prefix_len() == target.max_prefix_len() {
            Some(Level::Address)
        } else if source.net == target {
            Some(Level::Network)
        } else {
            None
        };
        let ban_removed = match level {
            Some(l) => store
                .clear_ban(&source, l, policy.settings.shadow)
                .await
                .map_err(store_error)?,
            None => false,
        };
        // This limiter at once; the others at their next ledger refresh.
        self.engine.holds().clear();
        tracing::warn!(%target, block_removed, ban_removed, by, "unblocked by an operator");
        Ok(UnblockReply {
            block_removed,
            ban_removed,
        })
    }

    async fn list(&self, max_bans: u32) -> Result<ListBlocksReply, Status> {
        let policy = self.engine.policy().get();
        let node_ttl = policy.settings.client_conn.lease_ttl.as_millis();
        let max_bans = match max_bans {
            0 => DEFAULT_BANS_LISTED,
            n => n.min(MAX_BANS_LISTED),
        };
        let st = self
            .engine
            .store()
            .standing(node_ttl, max_bans)
            .await
            .map_err(store_error)?;
        let mut blocks: Vec<BlockEntry> = st
            .blocks
            .into_iter()
            .map(|b| block_entry(b.target.to_string(), b.expires_in_ms, b.reason, "block"))
            .collect();
        blocks.extend(st.bans.into_iter().map(|b| {
            let why = format!("too many bad recipients from this {}", b.level.as_str());
            block_entry(b.source, b.expires_in_ms, why, "ban")
        }));
        blocks.sort_by_key(|b| std::cmp::Reverse(b.expires_in_ms));
        Ok(ListBlocksReply {
            blocks,
            bans_total: st.ban_count,
        })
    }

    async fn seed(
        &self,
        r: SeedTopSourcesRequest,
        by: &str,
    ) -> Result<SeedTopSourcesReply, Status> {
        if r.entries.len() > MAX_SEED_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "{} entries in one seed, at most {MAX_SEED_ENTRIES}: send more seeds",
                r.entries.len()
            )));
        }
        let origin = r.origin.as_str();
        if origin.len() > MAX_ORIGIN
            || !origin
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return Err(Status::invalid_argument(format!(
                "origin must be at most {MAX_ORIGIN} of A-Z a-z 0-9 . _ - : (a host name)"
            )));
        }
        let policy = self.engine.policy().get();
        // Entries of one address and minute add up: the ledger compares each pair
        // with what it was given before.
        let mut per_minute: HashMap<(IpAddr, u64), u64> = HashMap::with_capacity(r.entries.len());
        let mut exempt = 0;
        for (i, e) in r.entries.iter().enumerate() {
            let ip = validate::client_ip(&format!("entries[{i}].client_ip"), &e.client_ip)?;
            if e.bad_recipients > MAX_SEED_COUNT {
                return Err(Status::invalid_argument(format!(
                    "entries[{i}].bad_recipients is over {MAX_SEED_COUNT}"
                )));
            }
            if e.bad_recipients == 0 {
                continue;
            }
            // As live, exempt sources are not counted. Logs name clients, but not
            // verified names, so only address rules apply here.
            if policy.client_rules(&policy.source(ip), None).exempt() {
                exempt += e.bad_recipients;
                continue;
            }
            *per_minute
                .entry((canonical(ip), e.at_unix_ms / MINUTE_MS * MINUTE_MS))
                .or_default() += e.bad_recipients;
        }
        let mut entries: Vec<SeedEntry> = per_minute
            .into_iter()
            .map(|((ip, at_ms), count)| {
                let source = policy.source(ip);
                SeedEntry {
                    network: source.at(Level::Network),
                    address: source.ip_text,
                    at_ms,
                    count,
                }
            })
            .collect();
        // One order whatever the request's: a script's work is then reproducible.
        entries.sort_by(|a, b| (a.at_ms, &a.address).cmp(&(b.at_ms, &b.address)));
        let seed = Seed {
            metric: Metric::BadRecipients,
            origin: origin.to_string(),
            entries,
        };
        let out = self
            .engine
            .store()
            .seed(&seed, self.keep)
            .await
            .map_err(store_error)?;
        tracing::info!(
            origin,
            counted = out.counted,
            seen = out.seen,
            out_of_range = out.out_of_range,
            exempt,
            by,
            "top lists seeded from old logs"
        );
        Ok(SeedTopSourcesReply {
            counted: out.counted,
            seen: out.seen,
            out_of_range: out.out_of_range,
            exempt,
        })
    }

    fn reload(&self, by: &str) -> Result<ReloadRulesReply, Status> {
        tracing::info!(by, "rules reload asked by an operator");
        match self.engine.policy().reload() {
            Ok(p) => Ok(ReloadRulesReply {
                summary: p.to_string(),
                warnings: p.warnings.clone(),
            }),
            Err(e) => Err(Status::failed_precondition(format!(
                "rules not reloaded; the previous rules stay in force: {e}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl<S: Store + Ledger> Admin for AdminService<S> {
    async fn top_sources(
        &self,
        request: Request<TopSourcesRequest>,
    ) -> Result<Response<TopSourcesReply>, Status> {
        done("top_sources", self.top(request.into_inner()).await)
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainReply>, Status> {
        done(
            "explain",
            AdminService::explain(self, request.into_inner()).await,
        )
    }

    async fn block(&self, request: Request<BlockRequest>) -> Result<Response<BlockReply>, Status> {
        let by = who(&request);
        done(
            "block",
            AdminService::block(self, request.into_inner(), &by).await,
        )
    }

    async fn unblock(
        &self,
        request: Request<UnblockRequest>,
    ) -> Result<Response<UnblockReply>, Status> {
        let by = who(&request);
        done(
            "unblock",
            AdminService::unblock(self, request.into_inner(), &by).await,
        )
    }

    async fn list_blocks(
        &self,
        request: Request<ListBlocksRequest>,
    ) -> Result<Response<ListBlocksReply>, Status> {
        done("list_blocks", self.list(request.get_ref().max_bans).await)
    }

    async fn reload_rules(
        &self,
        request: Request<ReloadRulesRequest>,
    ) -> Result<Response<ReloadRulesReply>, Status> {
        let by = who(&request);
        done("reload_rules", self.reload(&by))
    }

    async fn seed_top_sources(
        &self,
        request: Request<SeedTopSourcesRequest>,
    ) -> Result<Response<SeedTopSourcesReply>, Status> {
        let by = who(&request);
        done(
            "seed_top_sources",
            AdminService::seed(self, request.into_inner(), &by).await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_networks_of_sane_width() {
        assert_eq!(
            parse_target("206.81.85.7").unwrap().to_string(),
            "206.81.85.7/32"
        );
        assert_eq!(
            parse_target(" 206.81.85.7/24 ").unwrap().to_string(),
            "206.81.85.0/24"
        );
        assert_eq!(
            parse_target("::ffff:192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            parse_target("2001:db8:1:2::9/64").unwrap().to_string(),
            "2001:db8:1:2::/64"
        );
        for bad in ["", "nope", "1.2.3.4/33", "0.0.0.0/0", "10.0.0.0/7", "::/8"] {
            assert_eq!(
                parse_target(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
