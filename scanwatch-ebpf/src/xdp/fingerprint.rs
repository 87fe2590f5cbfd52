//! SYN fingerprint (TCP/IP header fields and option layout) and the TCP checksum check.
use aya_ebpf::programs::XdpContext;
use scanwatch_common::{
    initial_ttl, mix32, stat, tool,
    Fingerprint,
};

use crate::parse::{csum_fold, load_bytes};


use super::ctx::*;

/// Copy the SYN's raw options into `fp` (decoded in userspace) with the header fields.
#[inline(always)]
pub(super) fn fingerprint(ctx: &XdpContext, stats: &mut Stats, l3: &L3, t: usize, doff: usize, fp: &mut Fingerprint) -> Result<(), ()> {
    let olen = doff - 20;
    // Word stores (volatile, so they are not merged back into a byte-loop memset).
    zero_words(fp.raw_opts.as_mut_ptr(), 40);
    zero_words(fp.opts.as_mut_ptr(), scanwatch_common::FP_MAX_OPTS);
    fp.mss = 0;
    fp.wscale = 0;
    fp.n_opts = 0;
    fp.sack_ok = 0;
    fp.timestamps = 0;
    if olen > 40 || (olen > 0 && load_bytes(ctx, t + 20, &mut fp.raw_opts, olen).is_err()) {
        stats[stat::MAL_TCP_OPTS as usize] += 1;
        return Err(());
    }
    // Cheap sanity check of the first option (the common malformations: length 0/1, overrun).
    let k0 = fp.raw_opts[0];
    let l0 = fp.raw_opts[1] as usize;
    if olen > 0 && k0 > 1 && (l0 < 2 || l0 > olen) {
        stats[stat::MAL_TCP_OPTS as usize] += 1;
        return Err(());
    }
    fp.opt_len = olen as u8;
    fp.ttl = l3.ttl;
    fp.df = l3.df;
    fp.ip_id = l3.ip_id;
    fp.ip_version = if l3.v6 != 0 { 6 } else { 4 };
    Ok(())
}

/// Hash the stable fields and derive the tool hint from facts a scanner cannot easily hide.
/// `seq_dport` = (TCP sequence number << 16) | destination port (masscan's IP ID formula).
#[inline(never)]
pub(super) fn finish_fingerprint(l3: &L3, seq_dport: u64, fp: &mut Fingerprint) {
    let (window, seq, dport, payload) = (fp.window, (seq_dport >> 16) as u32, seq_dport as u16, fp.payload_len);
    let r = &fp.raw_opts;
    let olen = fp.opt_len as usize;
    let mss_only = olen == 4 && r[0] == 2 && r[1] == 4;
    // Stable fields only: TTL jitter, IP ID and timestamp values do not change the hash. The
    // first 8 option bytes hold the option layout on every common stack (MSS, then SACK/TS/WS).
    let w0 = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
    let w1 = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
    let mut h = mix32(((window as u32) << 16) | olen as u32);
    h = mix32(h ^ ((initial_ttl(l3.ttl) as u32) << 16 | (fp.df as u32) << 8 | fp.ip_version as u32));
    h = mix32(h ^ w0);
    h = mix32(h ^ w1 ^ ((payload != 0) as u32));
    fp.hash = h;
    let dst4 = u32::from_be(l3.dst.v4_ne());
    fp.tool_hint = if l3.ip_id == 54321 && l3.v6 == 0 {
        tool::ZMAP
    } else if l3.v6 == 0
        && initial_ttl(l3.ttl) == 255
        && l3.ip_id == ((dst4 ^ dport as u32 ^ seq) & 0xffff) as u16
    {
        tool::MASSCAN
    } else if window == 512 && olen == 0 {
        tool::HPING3
    } else if window == 4128 {
        tool::UNICORNSCAN
    } else if (window == 1024 || window == 2048 || window == 3072 || window == 4096) && mss_only {
        tool::NMAP
    } else {
        // Userspace refines UNKNOWN to os-stack after decoding the options.
        tool::UNKNOWN
    };
}

/// True when a SYN's TCP checksum is wrong. Only bare SYNs (no payload) are checked: the fixed
/// header is summed from the packet and the options from the copy already in `fp`. A checksum
/// equal to the folded pseudo-header sum is a locally generated segment whose checksum offload
/// is still pending (veth), not a bad one.
#[inline(never)]
pub(super) fn tcp_csum_bad(ctx: &XdpContext, l3: &L3, t: usize, fp: &Fingerprint) -> bool {
    let len = l3.l4_len;
    let olen = fp.opt_len as usize;
    if len != 20 + olen {
        return false;
    }
    let (src, dst) = (l3.src.bytes(), l3.dst.bytes());
    let mut pseudo: u64 = 0;
    let mut k = 0;
    while k < 16 {
        if l3.v6 != 0 || k >= 12 {
            pseudo += u16::from_be_bytes([src[k], src[k + 1]]) as u64;
            pseudo += u16::from_be_bytes([dst[k], dst[k + 1]]) as u64;
        }
        k += 2;
    }
    pseudo += IPPROTO_TCP as u64 + len as u64;
    let mut sum = pseudo;
    // One bounds check for the whole fixed header (each word checked apart cost the verifier
    // ten times the instructions on every path that reaches here).
    let Ok(h) = crate::parse::ptr_at::<[u8; 20]>(ctx, t) else { return false };
    // SAFETY: ptr_at checked [t, t+20) is inside the packet.
    let h = unsafe { &*h };
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    // Options are 4-byte aligned in length; bytes past `olen` are zero.
    let mut j = 0;
    while j < 40 {
        sum += u16::from_be_bytes([fp.raw_opts[j], fp.raw_opts[j + 1]]) as u64;
        j += 2;
    }
    if csum_fold(sum) == 0xffff {
        return false;
    }
    let check = u16::from_be_bytes([h[16], h[17]]);
    check != csum_fold(pseudo)
}

