//! `bench --rls`: the same load against a server of Envoy's rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), such as limitador,
//! so that mxlimit can be measured beside it on the same machine, clients and addresses.
//!
//! An RLS server has no sessions and no leases: one `ShouldRateLimit` is one decision
//! and one admission. Each carries one descriptor with two entries, the client's address
//! and its /24, so that the server counts per address and per network as mxlimit does:
//! `client_ip=198.51.100.7`, `client_net=198.51.100`.

use std::net::IpAddr;

/// Generated code of the trimmed `envoy.service.ratelimit.v3` (see loadtest/proto/).
pub mod proto {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

use proto::rate_limit_descriptor::Entry;
use proto::rate_limit_response::Code;
use proto::{RateLimitDescriptor, RateLimitRequest};

/// The descriptor entry with the client's address.
pub const CLIENT_IP: &str = "client_ip";
/// The descriptor entry with the client's /24 network, as its first three octets.
pub const CLIENT_NET: &str = "client_net";
/// The domain the requests name unless told otherwise (limitador's namespace).
pub const DOMAIN: &str = "mail";

/// One admission of `ip` in `domain`: one descriptor, both entries, one hit.
pub fn request(domain: &str, ip: IpAddr) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: CLIENT_IP.into(),
                    value: ip.to_string(),
                },
                Entry {
                    key: CLIENT_NET.into(),
                    value: network(ip),
                },
            ],
        }],
        hits_addend: 1,
    }
}

/// The /24 of an IPv4 address as its first three octets (`198.51.100`); an IPv6
/// address's /64 as its first four groups. The bench sends IPv4 only.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}", s[0], s[1], s[2], s[3])
        }
    }
}

/// The name a response's overall code is counted under in the report: `ok`,
/// `over_limit`, `unknown` (as mxlimit's admitted Connect is counted as `ok`).
pub fn code_name(code: i32) -> String {
    match Code::try_from(code) {
        Ok(c) => c.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("code {code}"),
    }
}

/// The value of a descriptor's entry `key`, if it has one.
pub fn entry<'a>(d: &'a RateLimitDescriptor, key: &str) -> Option<&'a str> {
    d.entries
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_descriptor_with_the_address_and_its_24() {
        let r = request("mail", "198.51.100.7".parse().unwrap());
        assert_eq!((r.domain.as_str(), r.hits_addend), ("mail", 1));
        assert_eq!(r.descriptors.len(), 1);
        let d = &r.descriptors[0];
        assert_eq!(d.entries.len(), 2);
        assert_eq!(entry(d, CLIENT_IP), Some("198.51.100.7"));
        assert_eq!(entry(d, CLIENT_NET), Some("198.51.100"));
    }

    #[test]
    fn codes_are_named_as_the_report_counts_them() {
        assert_eq!(code_name(Code::Ok as i32), "ok");
        assert_eq!(code_name(Code::OverLimit as i32), "over_limit");
        assert_eq!(code_name(0), "unknown");
        assert_eq!(code_name(7), "code 7");
    }

    #[test]
    fn field_numbers_are_envoys() {
        use prost::Message;
        // Written out by hand from Envoy's rls.proto and ratelimit.proto: domain = 1,
        // descriptors = 2 { entries = 1 { key = 1, value = 2 } }, hits_addend = 3.
        let r = RateLimitRequest {
            domain: "m".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
            }],
            hits_addend: 1,
        };
        let want: &[u8] = &[
            0x0a, 1, b'm', // field 1 (domain), 1 byte
            0x12, 8, // field 2 (descriptors), 8 bytes
            0x0a, 6, // field 1 (entries), 6 bytes
            0x0a, 1, b'k', // field 1 (key)
            0x12, 1, b'v', // field 2 (value)
            0x18, 1, // field 3 (hits_addend), varint 1
        ];
        assert_eq!(r.encode_to_vec(), want);
        // overall_code = 1, OVER_LIMIT = 2.
        let resp = proto::RateLimitResponse::decode(&[0x08, 2][..]).unwrap();
        assert_eq!(resp.overall_code, Code::OverLimit as i32);
    }
}
