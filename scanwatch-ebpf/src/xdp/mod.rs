//! Inbound detector. Parses Ethernet / VLAN / IPv4 / IPv6 (+ extension headers) / TCP / UDP /
//! ICMP, keeps bounded per-source state for scan-shaped packets and emits immediate events.
//! Fails open: every error path returns XDP_PASS and bumps a malformed-by-reason counter.
use aya_ebpf::{
    bindings::xdp_action,
    macros::xdp,
    programs::XdpContext,
};
use scanwatch_common::{
    cfgflag, cnt, probe, stat, EventKind, FpKey, XdpConfig,
};

use crate::{
    maps::{
        BLOCKLIST, FINGERPRINTS, FP_BUDGET, SCRATCH,
        STATS,
    },
    parse::be16_at,
};


mod admission;
mod classify;
mod ctx;
mod depth;
mod events;
mod fast_path;
mod fingerprint;
mod headers;
mod replay;
mod state;

use classify::*;
use ctx::*;
use events::*;
use fast_path::*;
use headers::*;
use state::*;

#[xdp]
pub fn scanwatch_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// Replay entry (loaded only by `scanwatch replay`): `run` on each frame of a packed batch, see
/// `replay.rs`. The live program above is compiled exactly as without it.
#[xdp]
pub fn scanwatch_replay(ctx: XdpContext) -> u32 {
    replay::replay_batch(&ctx)
}

/// One frame of a replay batch (tail-called by `scanwatch_replay` and by itself).
#[xdp]
pub fn scanwatch_replay_step(ctx: XdpContext) -> u32 {
    replay::replay_step(&ctx)
}

#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let stats = unsafe { &mut *stats };
    stats[stat::PACKETS as usize] += 1;
    match try_xdp(ctx, stats) {
        Ok(action) => action,
        Err(reason) => {
            if (reason as usize) < stats.len() {
                stats[reason as usize] += 1;
            }
            xdp_action::XDP_PASS
        }
    }
}


#[inline(always)]
fn try_xdp(ctx: &XdpContext, stats: &mut Stats) -> Result<u32, u32> {
    let mut off = 14usize;
    let mut ethertype = be16_at(ctx, 12).map_err(|_| stat::MAL_ETH)?;
    // Up to two VLAN tags (802.1Q / 802.1ad, QinQ).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_VLAN)?;
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_VLAN)?;
            off += 4;
        }
    }
    // SAFETY: read of a load-time constant the loader may have rewritten.
    let enforce = unsafe { core::ptr::read_volatile(&ENFORCE_BLOCKLIST) } != 0;
    // The source's `addr_hash` when the fast path already computed it (0: not computed).
    let mut src_hash = 0u32;
    let mut suspected = 0u8;
    if !enforce {
        let fast = fast_established(ctx, off, ethertype, stats, &mut src_hash);
        // Counted only in `established_fast` / `bare_ack_fast` (`tcp` counts the full path).
        if fast == FAST_DATA {
            stats[stat::ESTABLISHED_FAST as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
        if fast == FAST_ACK {
            stats[stat::ACK_FAST as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
        if fast == FAST_SUSPECT {
            suspected = 1;
        }
    }
    let l3 = match ethertype {
        ETH_P_IP => {
            stats[stat::IPV4 as usize] += 1;
            parse_ipv4(ctx, off)?
        }
        ETH_P_IPV6 => {
            stats[stat::IPV6 as usize] += 1;
            parse_ipv6(ctx, off)?
        }
        ETH_P_ARP => {
            stats[stat::ARP as usize] += 1;
            match parse_arp_request(ctx, off)? {
                Some(l3) => l3,
                None => return Ok(xdp_action::XDP_PASS),
            }
        }
        _ => {
            stats[stat::OTHER_L3 as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
    };

    if enforce {
        if let Some(e) = BLOCKLIST.get_ptr_mut(l3.src.key()) {
            // SAFETY: the map value lives while the program runs; a racing increment on another
            // CPU may lose a count (the counters are a lower bound, see `BlockEntry`).
            unsafe {
                (*e).packets += 1;
                (*e).bytes += (ctx.data_end() - ctx.data()) as u64;
            }
            stats[stat::BLOCKED as usize] += 1;
            return Ok(xdp_action::XDP_DROP);
        }
    }

    let Some(sp) = SCRATCH.get_ptr_mut(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let sc = unsafe { &mut *sp };
    // Every packet is classified with the settings copied into scratch memory: one pointer
    // type and no known flag values downstream, so the verifier walks the classification once
    // for host and forwarded packets alike (a second pointer type for the forwarded copy
    // doubled the states it explores).
    // Host-mode agents (the load-time `GATEWAY` is 0) skip the copy: the verifier prunes this
    // branch, so each build of the program still sees one pointer type.
    sc.obs.reset(l3.proto);
    sc.obs.fwd = 0;
    sc.obs.suspected = suspected;
    sc.obs.src_hash = src_hash;
    let cfg: &XdpConfig = if gateway_on() {
        sc.fwd_cfg = *config();
        if sc.fwd_cfg.flags & cfgflag::FORWARDED != 0 && l3.proto != PROTO_ARP {
            sc.obs.fwd = forwarded(ctx, &l3);
            if sc.obs.fwd != 0 {
                stats[stat::FORWARDED as usize] += 1;
                // No local socket can answer a forwarded packet: classify it with the lookup off.
                sc.fwd_cfg.flags &= !cfgflag::LOOKUP_SOCKETS;
            }
        }
        &sc.fwd_cfg
    } else {
        config()
    };
    let obs = &mut sc.obs;
    if l3.proto == PROTO_ARP {
        // Who-has for another address: host discovery on the link.
        obs.count(cnt::ARP);
        obs.cur.kind = probe::HOST;
    } else if l3.frag == 2 {
        // Non-first fragment: no L4 header to look at.
        obs.count(cnt::FRAG_LATER);
    } else {
        match l3.proto {
            IPPROTO_TCP => {
                stats[stat::TCP as usize] += 1;
                if classify_tcp(ctx, stats, &l3, cfg, obs)? {
                    return Ok(xdp_action::XDP_PASS);
                }
            }
            IPPROTO_UDP => {
                stats[stat::UDP as usize] += 1;
                classify_udp(ctx, &l3, cfg, obs)?;
            }
            // ICMP in IPv4, ICMPv6 in IPv6 (the other pairing is just another protocol number,
            // as nmap -sO sends it).
            IPPROTO_ICMP | IPPROTO_ICMPV6 if (l3.proto == IPPROTO_ICMPV6) == (l3.v6 != 0) => {
                stats[stat::ICMP as usize] += 1;
                classify_icmp(ctx, &l3, obs)?;
            }
            IPPROTO_SCTP => {
                stats[stat::SCTP as usize] += 1;
                classify_sctp(ctx, &l3, obs)?;
            }
            _ => {
                // Any other IP protocol (GRE, ESP, OSPF, IGMP, ... or nmap -sO's one packet per
                // protocol number): counted; the protocol number is what the source's state
                // keeps (`SrcState::protocols`).
                stats[stat::OTHER_PROTO as usize] += 1;
                obs.count(cnt::IP_PROTO);
            }
        }
    }
    if obs.fwd != 0 {
        emit_forwarded(ctx, stats, &l3);
    }
    if obs.cur.nb == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    if obs.honey != 0 {
        stats[stat::HONEYPORT as usize] += 1;
    }
    let r = update_source(ctx, stats, cfg, &l3, obs);
    if r < 0 {
        if r == R_HELD {
            stats[stat::FIRST_CONTACT as usize] += 1;
        }
        return Ok(xdp_action::XDP_PASS);
    }
    let r = r as u64;
    let ev = Ev {
        sport: obs.cur.sport,
        dport: obs.cur.dport,
        flags: obs.flags,
        detail: 0,
        win_ports: ((r >> 16) & 0xffff) as u32,
        win_hosts: ((r >> 32) & 0xffff) as u32,
    };
    let thr_bits = (r & (R_THR_PORTS | R_THR_HOSTS)) as u32;
    if thr_bits != 0 {
        let e = Ev { detail: thr_bits, ..ev };
        emit(stats, EventKind::Threshold as u32, &l3, &e, None);
    }
    if r & R_NEW_FP != 0 {
        let now = now_ns();
        let key = FpKey { src: *l3.src.key(), hash: obs.fp.hash };
        sc.fpv.fp = sc.obs.fp;
        sc.fpv.count = 1;
        sc.fpv.first_seen_ns = now;
        sc.fpv.last_seen_ns = now;
        let _ = FINGERPRINTS.insert(&key, &sc.fpv, 0);
        stats[stat::NEW_FINGERPRINTS as usize] += 1;
        if fp_event_allowed(cfg.fp_event_budget, now) {
            let e = Ev { detail: ((r >> 8) & 0xff) as u32, win_ports: 0, win_hosts: 0, ..ev };
            emit(stats, EventKind::NewFingerprint as u32, &l3, &e, Some(&sc.obs.fp));
        } else {
            stats[stat::FP_EVENTS_SHED as usize] += 1;
        }
    }
    if r & R_HONEY_FIRST != 0 {
        let e = Ev { detail: 0, win_ports: 0, win_hosts: 0, ..ev };
        emit(stats, EventKind::Honeyport as u32, &l3, &e, None);
    }
    Ok(xdp_action::XDP_PASS)
}


/// Whether this CPU may still send a new-fingerprint event in the current budget window
/// (`budget` 0 = no limit). Per-CPU state: no atomics, no contention.
#[inline(always)]
fn fp_event_allowed(budget: u32, now: u64) -> bool {
    if budget == 0 {
        return true;
    }
    let Some(b) = FP_BUDGET.get_ptr_mut(0) else { return true };
    // SAFETY: per-CPU slot, only this CPU's program touches it.
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b[0]) >= scanwatch_common::FP_BUDGET_WINDOW_NS {
        b[0] = now;
        b[1] = 0;
    }
    if b[1] >= u64::from(budget) {
        return false;
    }
    b[1] += 1;
    true
}
