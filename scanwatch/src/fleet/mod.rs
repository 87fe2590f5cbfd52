//! Fleet correlation over NATS JetStream.
//!
//! * [`record`]: the versioned binary record format (agent → NATS → correlator).
//! * [`config`]: the `[fleet]` section.
//! * [`view`]: the pure fleet view: merges agents' records per source and feeds the detection
//!   engine (no I/O, explicit event time).
//! * [`publish`]: the agent side (bounded, never blocks the run loop).
//! * [`correlate`]: `scanwatch fleet`, the correlator (durable consumers, shard leases).
//! * [`bench`]: `scanwatch fleet bench`.
pub mod bench;
pub mod cli;
pub use crate::config::fleet as config;
pub mod correlate;
pub mod nats;
pub mod publish;
pub mod record;
pub mod view;

use std::net::IpAddr;

/// FNV-1a over the 16-byte address form: the source shard of a record.
pub fn shard_of(ip: IpAddr, shards: u32) -> u32 {
    hash_bytes(&record::addr_to_bytes(ip)) % shards.max(1)
}

/// Destination-family shard of a site.
pub fn site_shard(site: &str, shards: u32) -> u32 {
    hash_bytes(site.as_bytes()) % shards.max(1)
}

fn hash_bytes(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for x in b {
        h ^= u32::from(*x);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Subject names of one deployment.
#[derive(Debug, Clone)]
pub struct Subjects {
    pub prefix: String,
}

/// The two keyings of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Keyed by source: per-source fan-out across hosts.
    Src,
    /// Keyed by site: destination- and fingerprint-centric (distributed scans, decoy clusters).
    Dst,
}

impl Family {
    pub fn token(self) -> &'static str {
        match self {
            Family::Src => "src",
            Family::Dst => "dst",
        }
    }
}

impl Subjects {
    pub fn records(&self, f: Family, shard: u32, site: &str, agent: &str) -> String {
        format!("{}.{}.{shard}.{site}.{agent}", self.prefix, f.token())
    }
    /// Filter of one shard of one family (every site and agent).
    pub fn shard_filter(&self, f: Family, shard: u32) -> String {
        format!("{}.{}.{shard}.*.*", self.prefix, f.token())
    }
    pub fn agent_alerts(&self, site: &str, agent: &str) -> String {
        format!("{}.alert.{site}.{agent}", self.prefix)
    }
    pub fn fleet_alerts(&self) -> String {
        format!("{}.fleet.alert", self.prefix)
    }
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }
    /// The `<site>.<agent>` tokens of a record subject, to check the batch's own claim.
    pub fn origin<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let mut it = rest.split('.');
        let _family = it.next()?;
        let last = rest.rsplit('.').collect::<Vec<_>>();
        if last.len() < 3 {
            return None;
        }
        Some((last[1], last[0]))
    }
}
