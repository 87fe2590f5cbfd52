//! What every source hands the engine: typed observations, each stamped with its own event time
//! (the kernel's monotonic clock live, packet or log timestamps offline), and the [`Observer`]
//! that consumes them (the engine, or the baseline learner).
use std::net::IpAddr;
use std::time::Duration;

use super::{
    BaselineLearner, Engine, HeldProbe, InboundObservation, OutboundAction, OutboundObservation, SourceSnapshot,
};
use crate::alert::Alert;

/// One observation of the outside world.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Cumulative per-source state (a kernel map sweep, or an offline source's equivalent).
    Source(SourceSnapshot),
    /// An immediate inbound event (honeyport touch, short-window threshold, new fingerprint).
    Inbound(InboundObservation),
    /// A local process's action as the kernel saw it, before enrichment.
    ProcessAction(ProcessAction),
    /// A local process's action, enriched with the process's identity and lineage.
    Outbound(OutboundObservation),
    /// One-probe sources held in the first-contact table.
    Held(Vec<HeldProbe>),
    /// Time passed (periodic evaluation, expiry, rate-limit summaries).
    Tick,
}

/// A process action before enrichment: the identity fields the kernel recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessAction {
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    /// None when the hook runs outside the process's context (TCP outcome).
    pub uid: Option<u32>,
    pub action: OutboundAction,
    /// How many times the action happened (a sendmmsg batch).
    pub repeat: u32,
}

/// An observation and its event time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub at: Duration,
    pub obs: Observation,
}

impl Stamped {
    pub fn new(at: Duration, obs: Observation) -> Stamped {
        Stamped { at, obs }
    }

    /// The remote address an inbound observation is about, if any.
    pub fn source_ip(&self) -> Option<IpAddr> {
        match &self.obs {
            Observation::Source(s) => Some(s.ip),
            Observation::Inbound(e) => Some(e.ip),
            _ => None,
        }
    }
}

/// A consumer of observations: the detection engine (`run`, offline sources) or the baseline
/// learner (`baseline`). Unenriched process actions must have been enriched before they reach it
/// (they are ignored here).
pub trait Observer {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert>;
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert>;
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert>;
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert>;
    fn tick(&mut self, now: Duration) -> Vec<Alert>;

    /// Dispatch one stamped observation.
    fn observe(&mut self, s: &Stamped) -> Vec<Alert> {
        match &s.obs {
            Observation::Source(x) => self.observe_source(s.at, x),
            Observation::Inbound(x) => self.observe_inbound_event(s.at, x),
            Observation::Outbound(x) => self.observe_outbound(s.at, x),
            Observation::Held(x) => self.observe_held(s.at, x),
            Observation::Tick => self.tick(s.at),
            Observation::ProcessAction(_) => Vec::new(),
        }
    }
}

impl Observer for Engine {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        Engine::observe_source(self, now, s)
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        Engine::observe_inbound_event(self, now, e)
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        Engine::observe_outbound(self, now, o)
    }
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert> {
        Engine::observe_held(self, now, probes)
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        Engine::tick(self, now)
    }
}

impl Observer for BaselineLearner {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        BaselineLearner::observe_source(self, now, s);
        Vec::new()
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        BaselineLearner::observe_inbound_event(self, now, e);
        Vec::new()
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        BaselineLearner::observe_outbound(self, now, o);
        Vec::new()
    }
    /// One-probe sources carry nothing a baseline learns from (no fan-out of their own).
    fn observe_held(&mut self, _now: Duration, _probes: &[HeldProbe]) -> Vec<Alert> {
        Vec::new()
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        BaselineLearner::tick(self, now);
        Vec::new()
    }
}
