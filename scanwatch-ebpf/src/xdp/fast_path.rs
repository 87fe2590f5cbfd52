//! Established fast path: data and bare ACKs of known connections leave after one bounds check;
//! orphan segments mark their source suspected.
use aya_ebpf::programs::XdpContext;
use scanwatch_common::{
    addr_hash, suspect_bit, ACK_SAMPLE, stat,
};

use crate::maps::SUSPECT_SOURCES;

use scanwatch_common::tcpflag::{ACK, FIN, RST, SYN};

use super::ctx::*;

/// `fast_established` results.
pub(super) const FAST_NO: u8 = 0;
pub(super) const FAST_DATA: u8 = 1;
pub(super) const FAST_ACK: u8 = 2;
/// A bare ACK of a source already suspected of ACK scanning: the full path, which need not mark
/// it again; `src_hash` holds its `addr_hash`.
pub(super) const FAST_SUSPECT: u8 = 3;

/// Established-flow traffic over IPv4 without options or IPv6 without extension headers,
/// recognised from a few fixed-offset reads behind a single bounds check, before any address is
/// copied: data segments (ACK without SYN/RST/FIN, with payload) always; bare ACKs (no payload)
/// from sources not suspected of ACK scanning, except one in `ACK_SAMPLE`, which takes the full
/// path and its socket lookup (that is how a new ACK scanner gets caught and suspected).
/// Anything unusual returns `FAST_NO` and takes the full (validating) path.
#[inline(always)]
pub(super) fn fast_established(ctx: &XdpContext, off: usize, ethertype: u16, stats: &mut Stats, src_hash: &mut u32) -> u8 {
    let (ip, end) = (ctx.data() + off, ctx.data_end());
    let b = |p: usize| -> usize {
        // SAFETY: callers only pass addresses below the bounds checked just before.
        unsafe { *(p as *const u8) as usize }
    };
    let h = |p: usize| -> u64 {
        // SAFETY: as above; every address field is at an even offset.
        unsafe { *(p as *const u16) as u64 }
    };
    let (tcp, l4_len, v6) = if ethertype == ETH_P_IP {
        // IPv4 header without options + the first 14 bytes of the TCP header.
        if off > 22 || ip + 34 > end {
            return FAST_NO;
        }
        // Version 4, IHL 5; no fragment bits (MF or offset); protocol TCP.
        if b(ip) != 0x45 || b(ip + 6) & 0x3f != 0 || b(ip + 7) != 0 || b(ip + 9) != IPPROTO_TCP as usize {
            return FAST_NO;
        }
        let tot = (b(ip + 2) << 8) | b(ip + 3);
        if tot < 20 {
            return FAST_NO;
        }
        (ip + 20, tot - 20, false)
    } else if ethertype == ETH_P_IPV6 {
        if off > 22 || ip + 54 > end {
            return FAST_NO;
        }
        if b(ip + 6) != IPPROTO_TCP as usize {
            return FAST_NO;
        }
        (ip + 40, (b(ip + 4) << 8) | b(ip + 5), true)
    } else {
        return FAST_NO;
    };
    let doff = (b(tcp + 12) >> 4) * 4;
    let f = (b(tcp + 13) as u8) & 0x3f;
    if doff < 20 || l4_len < doff || f & (SYN | RST | FIN) != 0 || f & ACK == 0 {
        return FAST_NO;
    }
    if l4_len > doff {
        if !first_payload_on() {
            return FAST_DATA;
        }
        // A connection awaiting its first payload (one bit test) takes the full path once.
        let (src, dst) = if v6 {
            let (s, d) = (ip + 8, ip + 24);
            (
                [h(s) | h(s + 2) << 16 | h(s + 4) << 32 | h(s + 6) << 48, h(s + 8) | h(s + 10) << 16 | h(s + 12) << 32 | h(s + 14) << 48],
                [h(d) | h(d + 2) << 16 | h(d + 4) << 32 | h(d + 6) << 48, h(d + 8) | h(d + 10) << 16 | h(d + 12) << 32 | h(d + 14) << 48],
            )
        } else {
            (
                [0, 0xffff_0000 | (h(ip + 12) | h(ip + 14) << 16) << 32],
                [0, 0xffff_0000 | (h(ip + 16) | h(ip + 18) << 16) << 32],
            )
        };
        let sport = ((b(tcp) << 8) | b(tcp + 1)) as u16;
        let dport = ((b(tcp + 2) << 8) | b(tcp + 3)) as u16;
        if super::depth::pending(&src, &dst, sport, dport) {
            return FAST_NO;
        }
        return FAST_DATA;
    }
    if f != ACK {
        return FAST_NO;
    }
    // The source address (read only for bare ACKs; inside the bounds checked above).
    let src = if v6 {
        let s = ip + 8;
        [h(s) | h(s + 2) << 16 | h(s + 4) << 32 | h(s + 6) << 48, h(s + 8) | h(s + 10) << 16 | h(s + 12) << 32 | h(s + 14) << 48]
    } else {
        [0, 0xffff_0000 | (h(ip + 12) | h(ip + 14) << 16) << 32]
    };
    let sh = addr_hash(&src);
    let (word, bit) = suspect_bit(sh);
    let suspect = match SUSPECT_SOURCES.get(word) {
        Some(bits) => *bits & bit != 0,
        None => true,
    };
    if suspect {
        *src_hash = sh;
        return FAST_SUSPECT;
    }
    let seen = stats[stat::ACK_SEEN as usize];
    stats[stat::ACK_SEEN as usize] = seen + 1;
    if seen % ACK_SAMPLE == 0 {
        return FAST_NO;
    }
    FAST_ACK
}

/// Mark a source that sent an orphan segment: its bare ACKs are all looked up from now on.
#[inline(always)]
pub(super) fn mark_suspect(src_hash: u32) {
    let (word, bit) = suspect_bit(src_hash);
    if let Some(w) = SUSPECT_SOURCES.get_ptr_mut(word) {
        // SAFETY: array value pointer valid for this run; a lost bit only delays suspicion.
        unsafe { *w |= bit };
    }
}

