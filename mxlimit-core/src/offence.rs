//! Offences: what a source did wrong besides asking for unknown recipients, as the MTA
//! saw it. Each kind is counted on its own, with its own thresholds
//! (`[offences.<kind>]`); past them the source is banned like any other ban.

use mxlimit_proto::v1::OffenceKind as Wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OffenceKind {
    /// Talked before the greeting (sendmail's greet_pause, postscreen's PREGREET, Exim's
    /// synchronization check before the banner): SMTP clients wait for the banner,
    /// ratware does not.
    Pregreet,
    /// Another protocol violation (postscreen's NON-SMTP COMMAND or BARE NEWLINE).
    Protocol,
    /// A failed SMTP AUTH.
    Auth,
}

impl OffenceKind {
    pub const ALL: [OffenceKind; 3] = [
        OffenceKind::Pregreet,
        OffenceKind::Protocol,
        OffenceKind::Auth,
    ];

    /// The kind's name in the policy file, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OffenceKind::Pregreet => "pregreet",
            OffenceKind::Protocol => "protocol",
            OffenceKind::Auth => "auth",
        }
    }

    /// The kind a request names; `None` for `UNSPECIFIED` or a number this version
    /// does not know.
    pub fn from_wire(v: i32) -> Option<OffenceKind> {
        match Wire::try_from(v).ok()? {
            Wire::Unspecified => None,
            Wire::Pregreet => Some(OffenceKind::Pregreet),
            Wire::Protocol => Some(OffenceKind::Protocol),
            Wire::Auth => Some(OffenceKind::Auth),
        }
    }

    pub fn to_wire(self) -> Wire {
        match self {
            OffenceKind::Pregreet => Wire::Pregreet,
            OffenceKind::Protocol => Wire::Protocol,
            OffenceKind::Auth => Wire::Auth,
        }
    }
}

impl std::fmt::Display for OffenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_goes_over_the_wire_and_back() {
        for k in OffenceKind::ALL {
            assert_eq!(OffenceKind::from_wire(k.to_wire() as i32), Some(k));
        }
        assert_eq!(OffenceKind::from_wire(0), None);
        assert_eq!(OffenceKind::from_wire(99), None);
    }
}
