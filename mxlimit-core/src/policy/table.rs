//! Most-specific-match lookup of access entries, as sendmail orders them: the verified
//! host name and its parent domains first, then the address and ever shorter prefixes,
//! then the wildcard.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::access::{Entry, Key};

/// The entries of one tag.
#[derive(Debug, Default)]
pub struct RuleTable {
    any: Option<Entry>,
    names: HashMap<String, Entry>,
    /// Per prefix length, longest first; few distinct lengths occur, so a lookup is a
    /// handful of hash probes.
    v4: Vec<(u8, HashMap<IpNet, Entry>)>,
    v6: Vec<(u8, HashMap<IpNet, Entry>)>,
    has_nets: bool,
}

/// What `insert` did with an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The entry replaced one of the same key, which is returned.
    Replaced(Box<Entry>),
    /// The entry is untagged and a tagged one of the same key wins.
    Shadowed,
}

impl RuleTable {
    /// Adds an entry; a later entry of the same key replaces an earlier one, except
    /// that an untagged entry never replaces a tagged one.
    pub fn insert(&mut self, e: Entry) -> Inserted {
        match e.key.clone() {
            Key::Any => match &self.any {
                Some(old) if e.untagged && !old.untagged => Inserted::Shadowed,
                _ => match self.any.replace(e) {
                    Some(old) => Inserted::Replaced(Box::new(old)),
                    None => Inserted::New,
                },
            },
            Key::Name(n) => put(&mut self.names, n, e),
            Key::Net(net) => {
                self.has_nets = true;
                let list = match net {
                    IpNet::V4(_) => &mut self.v4,
                    IpNet::V6(_) => &mut self.v6,
                };
                let len = net.prefix_len();
                let pos = match list.iter().position(|(l, _)| *l <= len) {
                    Some(p) if list[p].0 == len => p,
                    Some(p) => {
                        list.insert(p, (len, HashMap::new()));
                        p
                    }
                    None => {
                        list.push((len, HashMap::new()));
                        list.len() - 1
                    }
                };
                put(&mut list[pos].1, net, e)
            }
        }
    }

    /// The most specific entry for a client.
    pub fn lookup(&self, ip: IpAddr, name: Option<&str>) -> Option<&Entry> {
        if let Some(name) = name
            && !self.names.is_empty()
            && let Some(e) = self.lookup_name(name)
        {
            return Some(e);
        }
        self.lookup_addr(ip).or(self.any.as_ref())
    }

    fn lookup_name(&self, name: &str) -> Option<&Entry> {
        let mut n = name.trim_end_matches('.');
        loop {
            if let Some(e) = self.names.get(n) {
                return Some(e);
            }
            n = n.split_once('.')?.1;
        }
    }

    fn lookup_addr(&self, ip: IpAddr) -> Option<&Entry> {
        if !self.has_nets {
            return None;
        }
        let list = match ip {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        list.iter().find_map(|(len, map)| {
            let net = IpNet::new_assert(ip, *len).trunc();
            map.get(&net)
        })
    }

    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// Whether an entry could match some address of `net` and not all of them: a
    /// name, or a narrower network inside it.
    pub fn has_entries_within(&self, net: IpNet) -> bool {
        let list = match net {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        };
        self.has_names()
            || list
                .iter()
                .filter(|(len, _)| *len > net.prefix_len())
                .any(|(_, m)| m.keys().any(|k| net.contains(k)))
    }

    /// Every entry, for reports and checks.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.any
            .iter()
            .chain(self.names.values())
            .chain(self.v4.iter().flat_map(|(_, m)| m.values()))
            .chain(self.v6.iter().flat_map(|(_, m)| m.values()))
    }
}

fn put<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Entry>, k: K, e: Entry) -> Inserted {
    use std::collections::hash_map::Entry as Slot;
    match map.entry(k) {
        Slot::Vacant(v) => {
            v.insert(e);
            Inserted::New
        }
        Slot::Occupied(o) if e.untagged && !o.get().untagged => Inserted::Shadowed,
        Slot::Occupied(mut o) => Inserted::Replaced(Box::new(o.insert(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::access::{Origin, Tag, Value, parse_key};

    fn entry(key: &str, n: u32, untagged: bool) -> Entry {
        Entry {
            tag: Tag::ClientRate,
            key: parse_key(key).unwrap(),
            value: Value::Number(n),
            rule: format!("ClientRate:{key}"),
            untagged,
            origin: Origin {
                file: "access".into(),
                line: 1,
            },
        }
    }

    fn table(keys: &[(&str, u32)]) -> RuleTable {
        let mut t = RuleTable::default();
        for (k, n) in keys {
            t.insert(entry(k, *n, false));
        }
        t
    }

    fn value(t: &RuleTable, ip: &str, name: Option<&str>) -> Option<u32> {
        t.lookup(ip.parse().unwrap(), name).map(|e| match e.value {
            Value::Number(n) => n,
            _ => unreachable!(),
        })
    }

    #[test]
    fn address_then_shorter_prefixes_then_wildcard() {
        let t = table(&[("", 10), ("67.92", 7), ("67.92.16", 2), ("67.92.16.5", 1)]);
        assert_eq!(value(&t, "67.92.16.5", None), Some(1));
        assert_eq!(value(&t, "67.92.16.6", None), Some(2));
        assert_eq!(value(&t, "67.92.17.1", None), Some(7));
        assert_eq!(value(&t, "1.2.3.4", None), Some(10));
    }

    #[test]
    fn cidr_blocks_rank_by_length() {
        let t = table(&[("10.0.0.0/8", 1), ("10.1.2.64/26", 3), ("10.1.2", 2)]);
        assert_eq!(value(&t, "10.1.2.70", None), Some(3));
        assert_eq!(value(&t, "10.1.2.7", None), Some(2));
        assert_eq!(value(&t, "10.200.0.1", None), Some(1));
    }

    #[test]
    fn names_match_subdomains_and_come_before_addresses() {
        let t = table(&[("", 10), ("67.92.16", 2), ("customerdomain.com", 0)]);
        assert_eq!(
            value(&t, "67.92.16.1", Some("mx1.customerdomain.com")),
            Some(0)
        );
        assert_eq!(
            value(&t, "67.92.16.1", Some("customerdomain.com.")),
            Some(0)
        );
        assert_eq!(
            value(&t, "67.92.16.1", Some("notcustomerdomain.com")),
            Some(2)
        );
        assert_eq!(value(&t, "67.92.16.1", None), Some(2));
    }

    #[test]
    fn ipv6_prefixes() {
        let t = table(&[("IPv6:2001:db8", 4), ("IPv6:2001:db8:66::/48", 1)]);
        assert_eq!(value(&t, "2001:db8:66::9", None), Some(1));
        assert_eq!(value(&t, "2001:db8:67::9", None), Some(4));
        assert_eq!(value(&t, "2001:db9::1", None), None);
        assert_eq!(value(&t, "1.2.3.4", None), None);
    }

    #[test]
    fn later_entries_replace_earlier_and_tagged_beats_untagged() {
        let mut t = RuleTable::default();
        assert_eq!(t.insert(entry("1.2.3", 5, false)), Inserted::New);
        assert!(matches!(
            t.insert(entry("1.2.3", 6, false)),
            Inserted::Replaced(_)
        ));
        assert_eq!(t.insert(entry("1.2.3", 7, true)), Inserted::Shadowed);
        assert_eq!(value(&t, "1.2.3.4", None), Some(6));
    }
}
