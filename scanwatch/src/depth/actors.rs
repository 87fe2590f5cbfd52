//! The actor store: per actor — a remote source, a local process (outbound), or a JA4 + TCP
//! fingerprint cluster of sources — when it was seen in each timeline phase and with what
//! evidence. Plain data (serde), kept by the engine's timeline detector, written to disk by
//! [`super::store`]. Times are wall-clock unix seconds, so they survive agent restarts and reboots.
//!
//! Size bound: every list is capped ([`EVIDENCE_MAX`], [`LABEL_MAX`], ...), so one actor is at most
//! ~2.5 KiB of JSON and the store at most `depth.max_actors` of them. [`ActorStore::clamp`]
//! enforces the caps on a loaded file too.
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::payload::Phase;

/// Evidence labels kept per phase (the first ones; `count` keeps counting).
pub const EVIDENCE_MAX: usize = 8;
/// Longest evidence label / JA4 / SNI / ALPN string kept (bytes).
pub const LABEL_MAX: usize = 64;
/// JA4 / SNI / ALPN values kept per actor.
pub const TLS_VALUES_MAX: usize = 4;
/// Destination ports kept per actor.
pub const PORTS_MAX: usize = 16;
/// Authentication-attempt times kept per actor.
pub const AUTH_MAX: usize = 32;
/// Member sources kept per cluster.
pub const MEMBERS_MAX: usize = 16;
/// Format version of the store file. Version 1 (keys: source addresses only) is read as is.
/// Version 2 adds process actors (`proc:` keys), clusters (`ja4:` keys), `members` and `cluster`.
pub const STORE_VERSION: u32 = 2;
/// Oldest store version this agent reads.
pub const STORE_VERSION_MIN: u32 = 1;

/// Key of a remote source's actor.
pub fn source_key(ip: IpAddr) -> String {
    ip.to_string()
}

/// Key of a JA4 + TCP fingerprint cluster.
pub fn cluster_key(ja4: &str, tcp_fp: &str) -> String {
    cut(&format!("ja4:{ja4}+tcp:{tcp_fp}"))
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PhaseMark {
    /// Unix seconds.
    pub first: f64,
    pub last: f64,
    pub count: u64,
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default)]
    pub discovery: Option<PhaseMark>,
    #[serde(default)]
    pub enumeration: Option<PhaseMark>,
    #[serde(default)]
    pub exploitation: Option<PhaseMark>,
    /// Recognised probes / scanner requests (not counting banner grabs).
    #[serde(default)]
    pub probes: u64,
    /// Destination ports of connections closed without client data.
    #[serde(default)]
    pub silent_ports: Vec<u16>,
    #[serde(default)]
    pub auth_times: Vec<f64>,
    #[serde(default)]
    pub ja4: Vec<String>,
    #[serde(default)]
    pub sni: Vec<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Destination ports touched in any phase.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// A source's JA4 + TCP fingerprint cluster (the key of its cluster entry), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A cluster's member sources (keys of their actors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    pub last_seen: f64,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(LABEL_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Push `v` into a bounded set-like list.
pub fn push_bounded<T: PartialEq>(list: &mut Vec<T>, v: T, max: usize) {
    if list.len() < max && !list.contains(&v) {
        list.push(v);
    }
}

impl Actor {
    pub fn phase(&self, p: Phase) -> Option<&PhaseMark> {
        match p {
            Phase::Discovery => self.discovery.as_ref(),
            Phase::Enumeration => self.enumeration.as_ref(),
            Phase::Exploitation => self.exploitation.as_ref(),
        }
    }

    /// Record one event of phase `p` at `wall` with `label`.
    pub fn mark(&mut self, p: Phase, wall: f64, label: &str) {
        let slot = match p {
            Phase::Discovery => &mut self.discovery,
            Phase::Enumeration => &mut self.enumeration,
            Phase::Exploitation => &mut self.exploitation,
        };
        let m = slot.get_or_insert_with(|| PhaseMark { first: wall, last: wall, count: 0, evidence: Vec::new() });
        m.last = m.last.max(wall);
        m.first = m.first.min(wall);
        m.count += 1;
        push_bounded(&mut m.evidence, cut(label), EVIDENCE_MAX);
        self.last_seen = self.last_seen.max(wall);
    }

    pub fn note_port(&mut self, port: u16) {
        push_bounded(&mut self.ports, port, PORTS_MAX);
    }

    pub fn note_tls(&mut self, ja4: &str, sni: Option<&str>, alpn: &[String]) {
        push_bounded(&mut self.ja4, cut(ja4), TLS_VALUES_MAX);
        if let Some(s) = sni {
            push_bounded(&mut self.sni, cut(s), TLS_VALUES_MAX);
        }
        if let Some(a) = alpn.first() {
            push_bounded(&mut self.alpn, cut(a), TLS_VALUES_MAX);
        }
    }

    /// Phases present, in timeline order.
    pub fn phases(&self) -> Vec<(Phase, &PhaseMark)> {
        [Phase::Discovery, Phase::Enumeration, Phase::Exploitation]
            .into_iter()
            .filter_map(|p| self.phase(p).map(|m| (p, m)))
            .collect()
    }

    /// Any phase before exploitation (a timeline an exploit-shaped request can join)?
    pub fn has_earlier(&self) -> bool {
        self.discovery.is_some() || self.enumeration.is_some()
    }

    /// The timeline of this actor merged with `other`'s (phases: earliest first, latest last,
    /// counts added, evidence united within the caps; TLS values and ports united).
    pub fn merged(&self, other: &Actor) -> Actor {
        let mut m = self.clone();
        for (mine, theirs) in [
            (&mut m.discovery, &other.discovery),
            (&mut m.enumeration, &other.enumeration),
            (&mut m.exploitation, &other.exploitation),
        ] {
            let Some(t) = theirs else { continue };
            match mine {
                None => *mine = Some(t.clone()),
                Some(x) => {
                    x.first = x.first.min(t.first);
                    x.last = x.last.max(t.last);
                    x.count += t.count;
                    for e in &t.evidence {
                        push_bounded(&mut x.evidence, e.clone(), EVIDENCE_MAX);
                    }
                }
            }
        }
        m.probes += other.probes;
        for p in &other.silent_ports {
            push_bounded(&mut m.silent_ports, *p, PORTS_MAX);
        }
        for p in &other.ports {
            push_bounded(&mut m.ports, *p, PORTS_MAX);
        }
        for (l, o) in [(&mut m.ja4, &other.ja4), (&mut m.sni, &other.sni), (&mut m.alpn, &other.alpn)] {
            for v in o {
                push_bounded(l, v.clone(), TLS_VALUES_MAX);
            }
        }
        m
    }

    fn clamp(&mut self) {
        for m in [&mut self.discovery, &mut self.enumeration, &mut self.exploitation].into_iter().flatten() {
            m.evidence.truncate(EVIDENCE_MAX);
            for e in &mut m.evidence {
                *e = cut(e);
            }
        }
        self.silent_ports.truncate(PORTS_MAX);
        self.ports.truncate(PORTS_MAX);
        self.auth_times.truncate(AUTH_MAX);
        self.members.truncate(MEMBERS_MAX);
        self.cluster = self.cluster.as_deref().map(cut);
        for l in [&mut self.ja4, &mut self.sni, &mut self.alpn, &mut self.members] {
            l.truncate(TLS_VALUES_MAX);
            for e in l.iter_mut() {
                *e = cut(e);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorStore {
    pub version: u32,
    /// Keyed by [`source_key`] (an address), an outbound entity key (`proc:uid:program:anchor@start`) or
    /// [`cluster_key`] (`ja4:...+tcp:...`).
    pub actors: BTreeMap<String, Actor>,
}

impl Default for ActorStore {
    fn default() -> Self {
        ActorStore { version: STORE_VERSION, actors: BTreeMap::new() }
    }
}

impl ActorStore {
    /// Drop actors last seen more than `retention_secs` before `wall`.
    pub fn expire(&mut self, wall: f64, retention_secs: f64) -> usize {
        let before = self.actors.len();
        self.actors.retain(|_, a| wall - a.last_seen <= retention_secs);
        before - self.actors.len()
    }

    /// Make room for one more actor: drop the least recently seen ones so at most `max - 1` stay.
    pub fn make_room(&mut self, max: usize) -> usize {
        let n = (self.actors.len() + 1).saturating_sub(max);
        self.drop_oldest(n)
    }

    fn drop_oldest(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut ages: Vec<(f64, String)> = self.actors.iter().map(|(k, a)| (a.last_seen, k.clone())).collect();
        ages.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, k) in ages.iter().take(n) {
            self.actors.remove(k);
        }
        n.min(ages.len())
    }

    /// Enforce the size bounds on a loaded store (a hand-edited file cannot grow memory).
    pub fn clamp(&mut self, max: usize) {
        self.actors.retain(|k, a| a.last_seen.is_finite() && k.len() <= 4 * LABEL_MAX);
        self.version = STORE_VERSION;
        for a in self.actors.values_mut() {
            a.clamp();
        }
        let n = self.actors.len().saturating_sub(max);
        self.drop_oldest(n);
    }
}
