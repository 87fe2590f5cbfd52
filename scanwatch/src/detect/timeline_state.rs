//! State of the timeline detector: the actor store (plain data, persisted by the pipeline) and
//! counters. Bounded by `depth.max_actors` and the per-actor caps of `crate::depth::actors`.
use std::time::Duration;

use serde::Serialize;

use crate::depth::actors::ActorStore;

/// Payload and timeline counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimelineStats {
    pub payloads: u64,
    /// Connections closed without client data.
    pub silent: u64,
    pub tls_hellos: u64,
    /// Looked like TLS or HTTP but did not parse (truncated, fragmented, malformed).
    pub malformed: u64,
    /// Samples shorter than their payload.
    pub truncated: u64,
    pub enumeration_events: u64,
    pub exploit_events: u64,
    /// Exploit-shaped requests from sources with no earlier phase (no timeline to join).
    pub exploit_unattributed: u64,
    pub actors_evicted: u64,
    /// First payloads of local processes' outbound connections (counted in `payloads` too).
    pub outbound_payloads: u64,
    pub actors_expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Timeline {
    pub store: ActorStore,
    pub stats: TimelineStats,
    /// Engine time of the last `actors_due` hand-out.
    pub last_save: Option<Duration>,
    /// Changed since the last hand-out.
    pub dirty: bool,
}
