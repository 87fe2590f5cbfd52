//! Gateway / mirror mode, the agent's side: packets the XDP program found not to be for this
//! host arrive on their own ring (`FWD_EVENTS`, one `ForwardedEvent` each: the frame's first
//! bytes). They are decoded as a capture's frames are (`replay::frame::decode`) and fed, in
//! order, to the reply tracker ([`ReplyOverlay`], the one `scanwatch replay` uses), whose
//! verdicts — SYN-ACK open, RST / ICMP port unreachable closed, other unreachables filtered,
//! silence no answer — become the per-source outcome counters the socket lookup gives for local
//! traffic, added to the kernel's per-source snapshots before the engine sees them.
use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use scanwatch_common::{EventHeader, EventKind, ForwardedEvent, FWD_SNAP};
use tokio::io::unix::AsyncFd;

use crate::detect::SourceSnapshot;
use crate::outcome::overlay::ReplyOverlay;
use crate::outcome::{Resolved, Seen, TrackerConfig, TrackerStats};

/// Counters of the forwarded records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FwdStats {
    pub records: u64,
    /// Records that were not a `ForwardedEvent` or too short.
    pub bad_records: u64,
    /// Frames nothing could be learned from (no IP, later fragments, truncated headers).
    pub undecoded: u64,
}

/// One ring record → the tracker's view of the packet, with its kernel time. Outside input
/// (the bytes are a packet's): every length is checked.
pub fn decode_record(data: &[u8], st: &mut FwdStats) -> Option<(Duration, Seen)> {
    if data.len() < std::mem::size_of::<ForwardedEvent>() {
        st.bad_records += 1;
        return None;
    }
    // SAFETY: length checked; the kernel wrote a ForwardedEvent (POD, repr(C)); unaligned read.
    let e = unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<ForwardedEvent>()) };
    let EventHeader { kind, ts_ns, .. } = e.hdr;
    if kind != EventKind::Forwarded as u32 {
        st.bad_records += 1;
        return None;
    }
    st.records += 1;
    let n = usize::from(e.cap_len).min(FWD_SNAP);
    match crate::replay::frame::decode(&e.data[..n]).1 {
        Some(seen) => Some((Duration::from_nanos(ts_ns), seen)),
        None => {
            st.undecoded += 1;
            None
        }
    }
}

/// The forwarded-traffic ring and the reply tracker it feeds.
pub struct Forwarded {
    ring: AsyncFd<RingBuf<MapData>>,
    pub replies: ReplyOverlay,
    last: Duration,
    pub st: FwdStats,
}

impl Forwarded {
    pub fn new(ring: RingBuf<MapData>, max_sources: u32) -> anyhow::Result<Forwarded> {
        Ok(Forwarded {
            // SAFETY: `ring` owns its fd and stays inside the AsyncFd (registered once, closed on drop).
            ring: unsafe { AsyncFd::register(ring)? },
            replies: ReplyOverlay::new(TrackerConfig::default(), (max_sources as usize).max(1024) * 2),
            last: Duration::ZERO,
            st: FwdStats::default(),
        })
    }

    /// Wait until the ring has records, then read them all. Cancel-safe: the only await comes
    /// before any record is taken.
    pub async fn read(fwd: &mut Option<Forwarded>) -> std::io::Result<Vec<(Duration, Seen)>> {
        let Some(f) = fwd.as_mut() else { return std::future::pending().await };
        let mut guard = f.ring.readable_mut().await?;
        let mut out = Vec::new();
        let st = &mut f.st;
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if let Some(x) = decode_record(&item, st) {
                out.push(x);
            }
        }
        guard.clear_ready();
        Ok(out)
    }

    /// Feed the decoded packets to the tracker (in ring order; the clock never runs back).
    pub fn feed(&mut self, items: Vec<(Duration, Seen)>) {
        for (ts, seen) in items {
            self.last = self.last.max(ts);
            self.replies.observe(self.last, &seen, &mut |_: &Resolved| {});
        }
    }

    /// At a sweep: probes past their timeout get "no answer"; returns the sources whose
    /// counters changed.
    pub fn expire(&mut self, now: Duration) -> Vec<IpAddr> {
        self.last = self.last.max(now);
        self.replies.expire(self.last, &mut |_: &Resolved| {});
        self.replies.bound(|_| false);
        self.replies.take_dirty()
    }

    /// A kernel snapshot with the tracker's counters added (unchanged when it has none).
    pub fn merge(&self, s: SourceSnapshot) -> SourceSnapshot {
        if self.replies.get(&s.ip).is_none() {
            return s;
        }
        let ip = s.ip;
        self.replies.merge(ip, Some(&s)).unwrap_or(s)
    }

    pub fn tracker_stats(&self) -> TrackerStats {
        self.replies.tracker_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PacketSpec;

    fn record(frame: &[u8], ts: u64) -> Vec<u8> {
        let mut e = ForwardedEvent {
            hdr: EventHeader { kind: EventKind::Forwarded as u32, _pad: 0, ts_ns: ts },
            ifindex: 3,
            frame_len: frame.len() as u16,
            cap_len: frame.len().min(FWD_SNAP) as u16,
            data: [0; FWD_SNAP],
        };
        let n = frame.len().min(FWD_SNAP);
        e.data[..n].copy_from_slice(&frame[..n]);
        // SAFETY: ForwardedEvent is a repr(C) POD record.
        unsafe { std::slice::from_raw_parts((&e as *const ForwardedEvent).cast::<u8>(), std::mem::size_of::<ForwardedEvent>()) }
            .to_vec()
    }

    #[test]
    fn records_decode_to_the_tracker_view_and_bad_ones_are_counted() {
        let (a, b): (IpAddr, IpAddr) = ("10.1.0.2".parse().expect("ip"), "10.2.0.2".parse().expect("ip"));
        let syn = PacketSpec::nmap_syn(a, b, 8080).build();
        let mut st = FwdStats::default();
        let (ts, seen) = decode_record(&record(&syn, 7), &mut st).expect("decodes");
        assert_eq!(ts, Duration::from_nanos(7));
        assert!(matches!(seen, Seen::Tcp { dport: 8080, flags: 0x02, .. }), "{seen:?}");
        assert!(decode_record(&[0; 10], &mut st).is_none());
        let mut wrong = record(&syn, 1);
        wrong[0] = 1;
        assert!(decode_record(&wrong, &mut st).is_none());
        assert!(decode_record(&record(&[0xff; 20], 1), &mut st).is_none());
        assert_eq!(st, FwdStats { records: 2, bad_records: 2, undecoded: 1 });
    }
}

/// Fuzzing entry point (`fuzz/fuzz_targets/forwarded.rs`, and the unit test replaying its
/// corpus): `data` once as a raw ring record, then as a sequence of frames (each prefixed by a
/// little-endian u16 capture length, which may lie) wrapped in `ForwardedEvent` records, decoded
/// and fed to a small reply tracker, whose counters are merged. Must never panic.
pub fn fuzz_forwarded(data: &[u8]) {
    let mut st = FwdStats::default();
    let _ = decode_record(data, &mut st);
    let tc = TrackerConfig { timeout: Duration::from_millis(5), max_pending: 16, max_flows: 16, flow_idle: Duration::from_millis(50) };
    let mut ov = ReplyOverlay::new(tc, 8);
    let mut rest = data;
    let mut t = Duration::ZERO;
    while rest.len() >= 3 {
        let claimed = u16::from_le_bytes([rest[0], rest[1]]);
        let n = (2 + usize::from(claimed) % (FWD_SNAP + 1)).min(rest.len());
        let mut e = ForwardedEvent {
            hdr: EventHeader { kind: EventKind::Forwarded as u32, _pad: 0, ts_ns: t.as_nanos() as u64 },
            ifindex: 1,
            frame_len: claimed,
            cap_len: claimed,
            data: [0; FWD_SNAP],
        };
        e.data[..n - 2].copy_from_slice(&rest[2..n]);
        // SAFETY: ForwardedEvent is a repr(C) POD record.
        let rec = unsafe { std::slice::from_raw_parts((&e as *const ForwardedEvent).cast::<u8>(), std::mem::size_of::<ForwardedEvent>()) };
        if let Some((_, seen)) = decode_record(rec, &mut st) {
            ov.observe(t, &seen, &mut |_: &Resolved| {});
        }
        t += Duration::from_millis(1);
        rest = &rest[n..];
    }
    ov.expire(t + Duration::from_secs(1), &mut |_: &Resolved| {});
    for ip in ov.take_dirty() {
        let _ = ov.merge(ip, None);
    }
    ov.bound(|_| false);
}

#[cfg(test)]
mod fuzz_corpus {
    /// The committed fuzz corpus (and any crash artifacts) replayed through the fuzz entry.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in ["corpus/forwarded", "artifacts/forwarded"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap_or_else(|err| panic!("read {}: {err}", e.path().display()));
                super::fuzz_forwarded(&data);
                n += 1;
            }
        }
        assert!(n >= 8, "the seed corpus fuzz/corpus/forwarded has {n} files");
    }
}
