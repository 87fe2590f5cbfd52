//! Ring-buffer records → observations. Every record starts with an `EventHeader` whose `kind`
//! is one `scanwatch_common::EventKind`; one table (the `match` in [`decode`]) dispatches on it.
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use scanwatch_common::{
    outcome, thr, EventHeader, EventKind, InboundEvent, PayloadEvent, ProcEvent, ProcPayloadEvent, SrcKey,
    PAYLOAD_SAMPLE, PROC_PAYLOAD_SAMPLE,
};

use super::sweep::fingerprint_info;
use crate::detect::{
    InboundEventKind, InboundObservation, Observation, OutboundAction, PayloadObservation, ProcessAction, SourceSnapshot,
    Stamped,
};
use crate::vocab::key_to_ip;

/// Records that could not be decoded, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeErrors {
    /// Shorter than its header or than the record its kind announces.
    pub short: u64,
    /// A kind no program writes.
    pub unknown_kind: u64,
    /// A payload continuation chunk whose first chunk was not in the same batch.
    pub payload_orphan_chunks: u64,
}

fn read_record<T: Copy>(data: &[u8]) -> Option<T> {
    (data.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; the kernel wrote a `T` (POD, repr(C)); unaligned read.
        .then(|| unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// The source of a threshold or honeyport record: a source the agent keeps watching
/// ([`super::sweep::HotSources`]) whatever the full sweep's pace.
pub fn hot_source(data: &[u8]) -> Option<SrcKey> {
    let hdr = read_record::<EventHeader>(data)?;
    match EventKind::from_u32(hdr.kind)? {
        EventKind::Threshold | EventKind::Honeyport => read_record::<InboundEvent>(data).map(|e| e.src),
        _ => None,
    }
}

/// Decode one ring-buffer record stamped `now` into `out`. For threshold and honeyport events
/// the source's current map entry (`current`) is emitted first, so the immediate alert carries
/// the sample ports and counts instead of waiting for the next sweep.
pub fn decode(
    data: &[u8],
    now: Duration,
    current: impl Fn(&SrcKey) -> Option<SourceSnapshot>,
    errors: &mut DecodeErrors,
    out: &mut Vec<Stamped>,
) {
    let Some(hdr) = read_record::<EventHeader>(data) else {
        errors.short += 1;
        return;
    };
    let Some(kind) = EventKind::from_u32(hdr.kind) else {
        errors.unknown_kind += 1;
        return;
    };
    match kind {
        EventKind::Honeyport | EventKind::Threshold | EventKind::NewFingerprint => {
            let Some(e) = read_record::<InboundEvent>(data) else {
                errors.short += 1;
                return;
            };
            let k = match kind {
                EventKind::Honeyport => InboundEventKind::Honeyport { dport: e.dport, proto: e.proto },
                EventKind::Threshold => InboundEventKind::Threshold {
                    ports: e.detail & thr::PORTS != 0,
                    hosts: e.detail & thr::HOSTS != 0,
                    win_ports: e.win_ports,
                    win_hosts: e.win_hosts,
                },
                _ => InboundEventKind::NewFingerprint(fingerprint_info(&e.fp)),
            };
            if kind != EventKind::NewFingerprint {
                if let Some(s) = current(&e.src) {
                    out.push(Stamped::new(now, Observation::Source(s)));
                }
            }
            let obs = InboundObservation { ip: key_to_ip(&e.src), dst: key_to_ip(&e.dst), kind: k };
            out.push(Stamped::new(now, Observation::Inbound(obs)));
        }
        EventKind::Payload => {
            let Some(e) = read_record::<PayloadEvent>(data) else {
                errors.short += 1;
                return;
            };
            let n = usize::from(e.sample_len).min(PAYLOAD_SAMPLE);
            let (src, dst) = (key_to_ip(&e.src), key_to_ip(&e.dst));
            if e.chunk > 0 {
                // Continuation of a TLS record: append to its first chunk, emitted just before.
                let at = usize::from(e.chunk) * PAYLOAD_SAMPLE;
                let prev = out.iter_mut().rev().find_map(|s| match &mut s.obs {
                    Observation::Payload(p)
                        if p.src == src && p.dst == dst && p.sport == e.sport && p.dport == e.dport && p.sample.len() == at =>
                    {
                        Some(p)
                    }
                    _ => None,
                });
                match prev {
                    Some(p) => p.sample.extend_from_slice(&e.data[..n]),
                    None => errors.payload_orphan_chunks += 1,
                }
                return;
            }
            let obs = PayloadObservation {
                src,
                dst,
                sport: e.sport,
                dport: e.dport,
                sample: e.data[..n].to_vec(),
                payload_len: e.payload_len,
                client_sent_data: e.closed == 0,
            };
            out.push(Stamped::new(now, Observation::Payload(obs)));
        }
        EventKind::ProcPayload => {
            let Some(e) = read_record::<ProcPayloadEvent>(data) else {
                errors.short += 1;
                return;
            };
            let n = (e.sample_len as usize).min(PROC_PAYLOAD_SAMPLE);
            let pa = ProcessAction {
                tgid: e.tgid,
                pid: e.pid,
                comm: comm_str(&e.comm),
                uid: Some(e.uid),
                action: OutboundAction::Payload {
                    dst: key_to_ip(&e.dst),
                    dport: e.dport,
                    sample: e.data[..n].to_vec(),
                    len: e.len,
                },
                repeat: 1,
            };
            out.push(Stamped::new(now, Observation::ProcessAction(pa)));
        }
        EventKind::ProcConnect
        | EventKind::ProcSendto
        | EventKind::ProcSocket
        | EventKind::ProcOutcome
        | EventKind::ProcConnectResult => {
            let Some(e) = read_record::<ProcEvent>(data) else {
                errors.short += 1;
                return;
            };
            let dst = key_to_ip(&e.dst);
            let action = match kind {
                EventKind::ProcConnect => OutboundAction::Connect { dst, dport: e.dport },
                EventKind::ProcSendto if e.sock_type == 3 => {
                    OutboundAction::RawProbe { dst, dport: e.dport, proto: e.proto, tcp_flags: e.tcp_flags }
                }
                EventKind::ProcSendto => OutboundAction::UdpSend { dst, dport: e.dport },
                EventKind::ProcSocket => OutboundAction::RawSocket { family: e.family, sock_type: e.sock_type },
                EventKind::ProcOutcome => {
                    OutboundAction::Outcome { dst, dport: e.dport, success: e.value == outcome::ESTABLISHED }
                }
                // Immediate connect() failure: no address in the record; counts as a failure
                // to an unknown peer.
                _ => OutboundAction::Outcome { dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED), dport: 0, success: false },
            };
            // A sendmmsg batch counts once per message.
            let repeat = if matches!(action, OutboundAction::RawProbe { .. }) { e.count.clamp(1, 1024) } else { 1 };
            let pa = ProcessAction {
                tgid: e.tgid,
                pid: e.pid,
                comm: comm_str(&e.comm),
                uid: (kind != EventKind::ProcOutcome).then_some(e.uid),
                action,
                repeat,
            };
            out.push(Stamped::new(now, Observation::ProcessAction(pa)));
        }
        // Written only to its own ring (`FWD_EVENTS`, `super::forwarded`), never to this one.
        EventKind::Forwarded => errors.unknown_kind += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) POD record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn short_and_unknown_records_are_counted() {
        let mut errs = DecodeErrors::default();
        let mut out = Vec::new();
        decode(&[1, 2, 3], Duration::ZERO, |_| None, &mut errs, &mut out);
        let hdr = EventHeader { kind: 99, _pad: 0, ts_ns: 0 };
        decode(&bytes(&hdr), Duration::ZERO, |_| None, &mut errs, &mut out);
        // A header announcing an inbound event, without the event.
        let hdr = EventHeader { kind: EventKind::Honeyport as u32, _pad: 0, ts_ns: 0 };
        decode(&bytes(&hdr), Duration::ZERO, |_| None, &mut errs, &mut out);
        assert_eq!(errs, DecodeErrors { short: 2, unknown_kind: 1, payload_orphan_chunks: 0 });
        assert!(out.is_empty());
    }

    #[test]
    fn honeyport_event_brings_the_source_state_first() {
        let mut e = InboundEvent::default();
        e.hdr.kind = EventKind::Honeyport as u32;
        e.src = crate::vocab::ip_to_key("198.51.100.4".parse().expect("ip"));
        e.dport = 31337;
        e.proto = 6;
        let mut errs = DecodeErrors::default();
        let mut out = Vec::new();
        let snap = |k: &SrcKey| {
            Some(SourceSnapshot {
                ip: key_to_ip(k),
                first_seen_ns: 1,
                last_seen_ns: 2,
                counts: [0; scanwatch_common::cnt::N],
                distinct_ports: 1.0,
                distinct_hosts: 1.0,
                sample_ports: vec![31337],
                sample_hosts: Vec::new(),
                fingerprints: Vec::new(),
                blocked: false,
                protocols: [0; 4],
            })
        };
        decode(&bytes(&e), Duration::from_secs(5), snap, &mut errs, &mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].obs, Observation::Source(_)));
        match &out[1].obs {
            Observation::Inbound(o) => {
                assert_eq!(o.kind, InboundEventKind::Honeyport { dport: 31337, proto: 6 });
                assert_eq!(o.ip.to_string(), "198.51.100.4");
            }
            other => panic!("expected an inbound event, got {other:?}"),
        }
        assert_eq!(out[1].at, Duration::from_secs(5));
    }

    #[test]
    fn payload_chunks_join_into_one_observation() {
        let mut e = PayloadEvent {
            hdr: EventHeader { kind: EventKind::Payload as u32, _pad: 0, ts_ns: 0 },
            src: crate::vocab::ip_to_key("198.51.100.7".parse().expect("ip")),
            dst: crate::vocab::ip_to_key("192.0.2.1".parse().expect("ip")),
            sport: 40000,
            dport: 443,
            payload_len: 300,
            sample_len: 256,
            chunk: 0,
            closed: 0,
            _pad: 0,
            data: [0x16; PAYLOAD_SAMPLE],
        };
        let (mut errs, mut out) = (DecodeErrors::default(), Vec::new());
        decode(&bytes(&e), Duration::ZERO, |_| None, &mut errs, &mut out);
        e.chunk = 1;
        e.sample_len = 44;
        e.data = [7; PAYLOAD_SAMPLE];
        decode(&bytes(&e), Duration::ZERO, |_| None, &mut errs, &mut out);
        e.sport = 1;
        decode(&bytes(&e), Duration::ZERO, |_| None, &mut errs, &mut out);
        assert_eq!(out.len(), 1);
        let Observation::Payload(p) = &out[0].obs else { panic!("not a payload: {:?}", out[0]) };
        assert_eq!(p.sample.len(), 300);
        assert_eq!((p.sample[255], p.sample[256]), (0x16, 7));
        assert!(p.client_sent_data);
        assert_eq!(errs.payload_orphan_chunks, 1);
        let mut closed = e;
        closed.chunk = 0;
        closed.closed = 1;
        closed.sample_len = 0;
        closed.payload_len = 0;
        decode(&bytes(&closed), Duration::ZERO, |_| None, &mut errs, &mut out);
        let Observation::Payload(p) = &out[1].obs else { panic!("not a payload") };
        assert!(!p.client_sent_data && p.sample.is_empty());
    }
}
