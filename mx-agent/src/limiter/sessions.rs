//! The live SMTP sessions of this host that hold a lease, for heartbeats and for
//! releasing the lease where it was taken (the limiter, or the local fallback).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Who admitted a session, and so holds its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The cluster-wide limiter.
    Limiter,
    /// This host's fallback limits (the limiter was unreachable).
    Local,
    /// Nobody: the limiter was unreachable and the agent fails closed.
    Closed,
}

impl Origin {
    /// The `origin` label of `mxagent_decisions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Limiter => "limiter",
            Origin::Local => "local",
            Origin::Closed => "closed",
        }
    }
}

/// A live session.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    pub ip: IpAddr,
    pub origin: Origin,
    /// Decided locally after a call the limiter may still have carried out (a timeout):
    /// its lease there, if any, is released too.
    pub maybe_remote: bool,
}

#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
}

impl Sessions {
    pub fn insert(&self, session: &str, live: Live) {
        self.lock().insert(session.to_string(), live);
    }

    pub fn remove(&self, session: &str) -> Option<Live> {
        self.lock().remove(session)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions whose lease `origin` holds.
    pub fn held_by(&self, origin: Origin) -> Vec<(String, IpAddr)> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.origin == origin)
            .map(|(s, l)| (s.clone(), l.ip))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}
