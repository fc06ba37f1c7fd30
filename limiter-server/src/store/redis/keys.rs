//! Store key names. All keys of one network share its hash tag, so that one script
//! sees the address and the network together and Redis Cluster spreads networks over
//! its shards; a node's own keys share the node's tag.

use mxlimit_core::offence::OffenceKind;
use mxlimit_core::source::Source;

/// Key names of one source: `<prefix>:{n4:206.81.85.0/24}:<kind>[:<address>]`.
pub struct NetKeys {
    base: String,
    ip: String,
}

impl NetKeys {
    pub fn new(prefix: &str, source: &Source) -> NetKeys {
        NetKeys {
            base: net_base(prefix, &source.tag),
            ip: source.ip_text.clone(),
        }
    }

    /// A key of the address level.
    pub fn addr(&self, kind: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + kind.len() + 1 + self.ip.len());
        k.push_str(&self.base);
        k.push_str(kind);
        k.push(':');
        k.push_str(&self.ip);
        k
    }

    /// A key of the network level.
    pub fn net(&self, kind: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + kind.len());
        k.push_str(&self.base);
        k.push_str(kind);
        k
    }
}

/// `<prefix>:{<tag>}:`
pub fn net_base(prefix: &str, tag: &str) -> String {
    format!("{prefix}:{{{tag}}}:")
}

/// The node's epoch and its registry of networks.
pub fn node_keys(prefix: &str, node: &str) -> (String, String) {
    (
        format!("{prefix}:{{node:{node}}}:epoch"),
        format!("{prefix}:{{node:{node}}}:nets"),
    )
}

/// The node's epoch sweeps in the current window.
pub fn node_sweep_key(prefix: &str, node: &str) -> String {
    format!("{prefix}:{{node:{node}}}:swept")
}

/// The node's session index entry of one session admitted without an epoch: its
/// network tag and address, for a heartbeat that names it alone.
pub fn node_session_key(prefix: &str, node: &str, session: &str) -> String {
    format!("{prefix}:{{node:{node}}}:s:{session}")
}

// Kinds of keys. Admitted connections exist at both levels; leases only at network
// level (an address's leases are a lexical range of the index).
pub const RATE: &str = "r";
pub const LEASES: &str = "c";
pub const INDEX: &str = "l";

/// Bans, ban counts for escalation (`offences`), bad-RCPT logs and the logs of each
/// offence kind, at both levels. Shadow mode keeps its own, so that would-be bans never
/// bite when shadow mode is switched off.
pub struct PenaltyKinds {
    pub ban: &'static str,
    pub offences: &'static str,
    pub bad: &'static str,
    /// By [`OffenceKind`], in its order.
    misconduct: [&'static str; 3],
}

impl PenaltyKinds {
    /// The log of one offence kind.
    pub fn misconduct(&self, kind: OffenceKind) -> &'static str {
        self.misconduct[kind as usize]
    }

    /// Every log of this level, which an operator's unban starts afresh (a ban
    /// clears only the log that led to it).
    pub fn logs(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.bad).chain(self.misconduct.iter().copied())
    }
}

pub const PENALTIES: PenaltyKinds = PenaltyKinds {
    ban: "x",
    offences: "o",
    bad: "b",
    misconduct: ["fp", "fr", "fa"],
};
pub const SHADOW_PENALTIES: PenaltyKinds = PenaltyKinds {
    ban: "xs",
    offences: "os",
    bad: "bs",
    misconduct: ["fps", "frs", "fas"],
};

pub fn penalties(shadow: bool) -> &'static PenaltyKinds {
    if shadow {
        &SHADOW_PENALTIES
    } else {
        &PENALTIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxlimit_core::source::Aggregation;

    #[test]
    fn keys_share_the_network_hash_tag() {
        let s = Source::new("206.81.85.12".parse().unwrap(), Aggregation::default());
        let k = NetKeys::new("mxl", &s);
        assert_eq!(k.addr(RATE), "mxl:{n4:206.81.85.0/24}:r:206.81.85.12");
        assert_eq!(
            k.addr(penalties(true).ban),
            "mxl:{n4:206.81.85.0/24}:xs:206.81.85.12"
        );
        assert_eq!(k.net(LEASES), "mxl:{n4:206.81.85.0/24}:c");
        assert_eq!(
            k.net(penalties(false).misconduct(OffenceKind::Pregreet)),
            "mxl:{n4:206.81.85.0/24}:fp"
        );
        // Every kind has its own log, and shadow mode its own of each.
        let mut all: Vec<&str> = penalties(false)
            .logs()
            .chain(penalties(true).logs())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2 * (1 + OffenceKind::ALL.len()));
        assert_eq!(node_keys("mxl", "mx1").1, "mxl:{node:mx1}:nets");
    }
}
