//! One function per subcommand: ask the limiter, print a table or JSON.

use anyhow::{Result, bail};
use mxlimit_proto::v1::{
    Action, BlockRequest, ExplainReply, ExplainRequest, GroupBy, LevelState, ListBlocksRequest,
    RankBy, ReloadRulesRequest, TopSourcesReply, TopSourcesRequest, UnblockRequest, Verdict,
};
use serde_json::{Value, json};

use crate::cli::{By, Command, Format, Rank, TopArgs};
use crate::client::{Admin, explain_status};
use crate::duration::show;
use crate::{export, table};

pub async fn run(admin: &mut Admin, command: Command, json_out: bool) -> Result<()> {
    match command {
        Command::Top(args) => top_sources(admin, &args, json_out).await,
        Command::Export {
            top: args,
            format,
            action,
            min,
        } => export(admin, &args, format, &action, min).await,
        Command::Explain { address, name } => explain(admin, address, name, json_out).await,
        Command::Block {
            target,
            duration,
            reason,
        } => block(admin, target, duration, reason, json_out).await,
        Command::Unblock { target } => unblock(admin, target, json_out).await,
        Command::Blocks { limit } => blocks(admin, limit, json_out).await,
        Command::Reload => reload(admin, json_out).await,
        Command::ImportLog { .. } => bail!("import-log reads log files; it asks no limiter"),
    }
}

/// `mxlimit top`
async fn top_sources(admin: &mut Admin, args: &TopArgs, json_out: bool) -> Result<()> {
    let reply = top(admin, args).await?;
    if json_out {
        print_json(&top_json(&reply));
    } else {
        let rows: Vec<Vec<String>> = reply
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                vec![
                    (i + 1).to_string(),
                    s.source.clone(),
                    s.bad_recipients.to_string(),
                    s.refused_connections.to_string(),
                ]
            })
            .collect();
        println!(
            "top sources of the last {} (cluster-wide)",
            show(reply.window_ms)
        );
        print!(
            "{}",
            table::render(&["#", "SOURCE", "BAD RCPTS", "REFUSED CONNS"], &rows)
        );
    }
    Ok(())
}

/// `mxlimit export`: the top list as an access table (or JSON).
async fn export(
    admin: &mut Admin,
    args: &TopArgs,
    format: Format,
    action: &str,
    min: u64,
) -> Result<()> {
    let reply = top(admin, args).await?;
    let ranked = |s: &mxlimit_proto::v1::TopSource| match args.rank {
        Rank::Bad => s.bad_recipients,
        Rank::Refused => s.refused_connections,
    };
    let kept: Vec<_> = reply.sources.iter().filter(|s| ranked(s) >= min).collect();
    if action.contains(['\n', '\r']) {
        bail!("--action must be one line");
    }
    let header = format!(
        "mxlimit export: top {} sources by {} over {} (cluster-wide)",
        kept.len(),
        match args.rank {
            Rank::Bad => "bad recipients",
            Rank::Refused => "refused connections",
        },
        show(reply.window_ms)
    );
    let sources: Vec<String> = kept.iter().map(|s| s.source.clone()).collect();
    match format {
        Format::Json => print_json(&top_json(&TopSourcesReply {
            sources: kept.into_iter().cloned().collect(),
            window_ms: reply.window_ms,
        })),
        Format::Sendmail => print!(
            "{}",
            export::table(&sources, true, action, &header).map_err(anyhow::Error::msg)?
        ),
        Format::PostfixCidr => print!(
            "{}",
            export::table(&sources, false, action, &header).map_err(anyhow::Error::msg)?
        ),
    }
    Ok(())
}

/// `mxlimit explain`
async fn explain(
    admin: &mut Admin,
    address: String,
    name: Option<String>,
    json_out: bool,
) -> Result<()> {
    let r = admin
        .explain(ExplainRequest {
            client_ip: address,
            client_name: name.unwrap_or_default(),
        })
        .await
        .map_err(explain_status)?
        .into_inner();
    let verdict = r.connect.clone().unwrap_or_default();
    if json_out {
        explain_json(&r, &verdict);
    } else {
        explain_text(&r, &verdict);
    }
    Ok(())
}

fn explain_json(r: &ExplainReply, verdict: &Verdict) {
    let level = |l: &Option<LevelState>| {
        let l = l.clone().unwrap_or_default();
        json!({
            "source": l.source, "connections": l.connections, "rate_limit": l.rate_limit,
            "sessions": l.sessions, "conn_limit": l.conn_limit,
            "bad_recipients": l.bad_recipients, "tarpit_after": l.tarpit_after,
            "block_after": l.block_after, "ban_ms_left": l.ban_ms_left, "offence": l.offence,
        })
    };
    print_json(&json!({
        "client_ip": r.client_ip,
        "network": r.network,
        "client_name": r.client_name,
        "shadow": r.shadow,
        "rules": r.rules.iter().map(|m| json!({
            "kind": m.kind, "level": m.level, "rule": m.rule, "value": m.value,
        })).collect::<Vec<_>>(),
        "address": level(&r.address),
        "network_state": level(&r.net),
        "blocks": r.blocks.iter().map(|b| json!({
            "target": b.target, "expires_in_ms": b.expires_in_ms, "reason": b.reason, "kind": b.kind,
        })).collect::<Vec<_>>(),
        "connect": verdict_json(verdict),
    }));
}

fn explain_text(r: &ExplainReply, verdict: &Verdict) {
    let name = if r.client_name.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.client_name)
    };
    println!("{}{name} in network {}", r.client_ip, r.network);
    println!("\nConnect now: {}", verdict_text(verdict));
    if r.shadow {
        println!("(shadow mode: refusals are logged and counted, not enforced)");
    }
    for b in &r.blocks {
        println!(
            "Blocked by an operator: {} for {} more{}",
            b.target,
            show(b.expires_in_ms),
            reason_suffix(&b.reason)
        );
    }
    println!("\nRules that match:");
    let rows: Vec<Vec<String>> = r
        .rules
        .iter()
        .map(|m| {
            vec![
                m.kind.clone(),
                m.level.clone(),
                m.rule.clone(),
                m.value.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["KIND", "LEVEL", "RULE", "VALUE"], &rows)
    );
    println!("\nCounters:");
    let row = |what: &str, l: &Option<LevelState>| {
        let l = l.clone().unwrap_or_default();
        let limit = |n: u32, max: u32| {
            if max == 0 {
                n.to_string()
            } else {
                format!("{n}/{max}")
            }
        };
        vec![
            what.to_string(),
            l.source,
            limit(l.connections, l.rate_limit),
            limit(l.sessions, l.conn_limit),
            limit(l.bad_recipients, l.block_after),
            if l.ban_ms_left > 0 {
                format!("{} left (offence {})", show(l.ban_ms_left), l.offence)
            } else {
                "-".into()
            },
        ]
    };
    print!(
        "{}",
        table::render(
            &[
                "LEVEL",
                "SOURCE",
                "CONNECTIONS",
                "SESSIONS",
                "BAD RCPTS",
                "BAN"
            ],
            &[row("address", &r.address), row("network", &r.net)],
        )
    );
}

/// `mxlimit block`
async fn block(
    admin: &mut Admin,
    target: String,
    duration: std::time::Duration,
    reason: String,
    json_out: bool,
) -> Result<()> {
    let r = admin
        .block(BlockRequest {
            target,
            ttl_ms: duration.as_millis() as u64,
            reason,
        })
        .await
        .map_err(explain_status)?
        .into_inner();
    let b = r.block.unwrap_or_default();
    if json_out {
        print_json(
            &json!({"target": b.target, "expires_in_ms": b.expires_in_ms, "reason": b.reason}),
        );
    } else {
        println!(
            "blocked {} on every MX for {}{}",
            b.target,
            show(b.expires_in_ms),
            reason_suffix(&b.reason)
        );
    }
    Ok(())
}

/// `mxlimit unblock`
async fn unblock(admin: &mut Admin, target: String, json_out: bool) -> Result<()> {
    let r = admin
        .unblock(UnblockRequest {
            target: target.clone(),
        })
        .await
        .map_err(explain_status)?
        .into_inner();
    if json_out {
        print_json(
            &json!({"target": target, "block_removed": r.block_removed, "ban_removed": r.ban_removed}),
        );
    } else {
        match (r.block_removed, r.ban_removed) {
            (false, false) => println!("nothing to lift on {target}"),
            (b, a) => println!(
                "{target}: {}{}{}",
                if b { "operator block lifted" } else { "" },
                if a && b { ", " } else { "" },
                if a { "automatic ban lifted" } else { "" }
            ),
        }
    }
    Ok(())
}

/// `mxlimit blocks`
async fn blocks(admin: &mut Admin, limit: u32, json_out: bool) -> Result<()> {
    let r = admin
        .list_blocks(ListBlocksRequest { max_bans: limit })
        .await
        .map_err(explain_status)?
        .into_inner();
    let listed = r.blocks.iter().filter(|b| b.kind == "ban").count() as u64;
    if listed < r.bans_total {
        // On stderr, so that --json stays one document for scripts.
        eprintln!(
            "mxlimit: {listed} of {} automatic bans listed, those with the most time left (--limit for more)",
            r.bans_total
        );
    }
    if json_out {
        print_json(&Value::Array(
            r.blocks
                .iter()
                .map(|b| json!({"target": b.target, "kind": b.kind, "expires_in_ms": b.expires_in_ms, "reason": b.reason}))
                .collect(),
        ));
    } else if r.blocks.is_empty() {
        println!("no blocks or bans in force");
    } else {
        let rows: Vec<Vec<String>> = r
            .blocks
            .iter()
            .map(|b| {
                vec![
                    b.target.clone(),
                    b.kind.clone(),
                    show(b.expires_in_ms),
                    b.reason.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["TARGET", "KIND", "EXPIRES IN", "REASON"], &rows)
        );
    }
    Ok(())
}

/// `mxlimit reload`
async fn reload(admin: &mut Admin, json_out: bool) -> Result<()> {
    let r = admin
        .reload_rules(ReloadRulesRequest {})
        .await
        .map_err(explain_status)?
        .into_inner();
    if json_out {
        print_json(&json!({"summary": r.summary, "warnings": r.warnings}));
    } else {
        println!("rules reloaded: {}", r.summary);
        for w in &r.warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}

async fn top(admin: &mut Admin, args: &TopArgs) -> Result<TopSourcesReply> {
    Ok(admin
        .top_sources(TopSourcesRequest {
            window_ms: args.window.as_millis() as u64,
            group_by: match args.by {
                By::Net => GroupBy::Network,
                By::Addr => GroupBy::Address,
            } as i32,
            rank_by: match args.rank {
                Rank::Bad => RankBy::BadRecipients,
                Rank::Refused => RankBy::RefusedConnections,
            } as i32,
            limit: args.limit,
        })
        .await
        .map_err(explain_status)?
        .into_inner())
}

fn top_json(r: &TopSourcesReply) -> Value {
    json!({
        "window_ms": r.window_ms,
        "sources": r.sources.iter().map(|s| json!({
            "source": s.source,
            "bad_recipients": s.bad_recipients,
            "refused_connections": s.refused_connections,
        })).collect::<Vec<_>>(),
    })
}

fn verdict_json(v: &Verdict) -> Value {
    json!({
        "action": v.action().as_str_name(),
        "smtp_code": v.smtp_code,
        "enhanced_code": v.enhanced_code,
        "text": v.text,
        "rule": v.rule,
        "reason": v.reason,
        "shadow": v.shadow,
    })
}

fn verdict_text(v: &Verdict) -> String {
    let what = match v.action() {
        Action::Accept if v.shadow => "ACCEPT (shadow: would refuse)",
        Action::Accept => "ACCEPT",
        Action::Delay => "DELAY",
        Action::Tempfail => "TEMPFAIL",
        Action::Reject => "REJECT",
        Action::Disconnect => "DISCONNECT",
        Action::Unspecified => "?",
    };
    let reply = if v.smtp_code > 0 {
        format!(" {} {} {}", v.smtp_code, v.enhanced_code, v.text)
    } else {
        String::new()
    };
    format!("{what}{reply} [reason {}, rule {}]", v.reason, v.rule)
}

fn reason_suffix(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" ({r})")
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
