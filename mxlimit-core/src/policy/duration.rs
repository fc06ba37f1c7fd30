//! Durations in policy files, in the syntax of [`mxlimit_proto::duration`]: `500ms`,
//! `30s`, `15m`, `1h`, `7d`, `2w`, or a combination such as `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration read from a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(s: u64) -> Span {
        Span(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Span {
        Span(Duration::from_millis(ms))
    }
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

pub use mxlimit_proto::duration::parse;

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as \"500ms\", \"30s\", \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                parse(v).map(Span).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                Err(E::custom(format!(
                    "{v} has no unit; write it as a string with a unit, e.g. \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_durations_need_a_unit() {
        let ok: Span = toml::from_str::<std::collections::BTreeMap<String, Span>>("t = \"1h30m\"")
            .unwrap()["t"];
        assert_eq!(ok, Span::secs(5400));
        let bare =
            toml::from_str::<std::collections::BTreeMap<String, Span>>("t = 30").unwrap_err();
        assert!(bare.to_string().contains("has no unit"), "{bare}");
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Span::secs(3600).to_string(), "1h");
        assert_eq!(Span::secs(90).to_string(), "90s");
        assert_eq!(Span::millis(250).to_string(), "250ms");
    }
}
