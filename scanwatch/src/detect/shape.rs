//! The shape of a window's probes: which protocol and which probe form most of them are.
use scanwatch_common::cnt;

use super::window::{m, Metrics};
use crate::alert::Shape;

/// (protocol, shape, metric slot) of every probe form the engine counts.
const FORMS: [(&str, &str, usize); 16] = [
    ("tcp", "syn", m::cnt(cnt::SYN)),
    ("tcp", "connect", m::CONNECT),
    ("tcp", "null", m::cnt(cnt::NULL)),
    ("tcp", "fin", m::cnt(cnt::FIN)),
    ("tcp", "xmas", m::cnt(cnt::XMAS)),
    ("tcp", "maimon", m::cnt(cnt::MAIMON)),
    ("tcp", "ack", m::cnt(cnt::ACK)),
    ("tcp", "synfin", m::cnt(cnt::SYNFIN)),
    ("tcp", "custom", m::cnt(cnt::CUSTOM_FLAGS)),
    ("udp", "probe", m::cnt(cnt::UDP)),
    ("icmp", "echo", m::cnt(cnt::ICMP_ECHO)),
    ("arp", "who_has", m::cnt(cnt::ARP)),
    ("ip", "fragment", m::cnt(cnt::FRAG_FIRST)),
    ("tcp", "unsolicited", m::cnt(cnt::UNSOLICITED_SYNACK)),
    ("sctp", "init", m::cnt(cnt::SCTP_INIT)),
    ("sctp", "cookie_echo", m::cnt(cnt::SCTP_COOKIE)),
];

/// The shape of the probes in `t`: the form with most probes when it has at least half of them,
/// else `mixed` (protocol kept when every form present shares it). Empty when `t` holds no probe.
pub(super) fn of(t: &Metrics) -> Shape {
    let mut by_form: Vec<(&str, &str, f64)> = FORMS.iter().map(|(p, s, i)| (*p, *s, t.get(*i))).collect();
    // RST backscatter counts with SYN-ACK backscatter.
    if let Some(u) = by_form.iter_mut().find(|f| f.1 == "unsolicited") {
        u.2 += t.get(m::cnt(cnt::UNSOLICITED_RST));
    }
    let total: f64 = by_form.iter().map(|f| f.2).sum();
    if total <= 0.0 {
        return Shape::default();
    }
    let best = by_form.iter().fold(by_form[0], |b, f| if f.2 > b.2 { *f } else { b });
    if best.2 * 2.0 >= total {
        return Shape::new(best.0, best.1);
    }
    let protos: Vec<&str> = by_form.iter().filter(|f| f.2 > 0.0).map(|f| f.0).collect();
    let proto = if protos.iter().all(|p| *p == protos[0]) { protos[0] } else { "mixed" };
    Shape::new(proto, "mixed")
}

/// The shape of one stealth-probe window: the stealth form with most probes (not SYN, which a
/// stealth finding is not about).
pub(super) fn stealth_of(t: &Metrics) -> Shape {
    let mut only = Metrics::default();
    for c in [cnt::NULL, cnt::FIN, cnt::XMAS, cnt::MAIMON, cnt::ACK, cnt::SYNFIN, cnt::CUSTOM_FLAGS, cnt::SCTP_COOKIE] {
        only.set(m::cnt(c), t.get(m::cnt(c)));
    }
    let s = of(&only);
    if s.protocol.is_empty() { Shape::new("tcp", "mixed") } else { s }
}

/// The IP protocol number's name.
pub(super) fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        132 => "sctp",
        _ => "ip",
    }
}
