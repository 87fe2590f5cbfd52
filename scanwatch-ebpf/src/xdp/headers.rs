//! L3 parsing: ARP requests, IPv4 (options, fragments), IPv6 (extension headers).
use aya_ebpf::programs::XdpContext;
use scanwatch_common::{
    probe, stat,
};

use crate::parse::{addr16_at, be16_at, be32_at, u8_at, v4_mapped_at, A16};


use super::ctx::*;

pub(super) const PROTO_ARP: u8 = probe::PROTO_ARP;

/// An IPv4-over-Ethernet ARP request as (sender → target). Replies, gratuitous ARP and
/// duplicate-address probes (sender 0.0.0.0) return None.
#[inline(always)]
pub(super) fn parse_arp_request(ctx: &XdpContext, off: usize) -> Result<Option<L3>, u32> {
    let htype = be16_at(ctx, off).map_err(|_| stat::MAL_ARP)?;
    let ptype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_ARP)?;
    let lens = be16_at(ctx, off + 4).map_err(|_| stat::MAL_ARP)?;
    let oper = be16_at(ctx, off + 6).map_err(|_| stat::MAL_ARP)?;
    let spa = be32_at(ctx, off + 14).map_err(|_| stat::MAL_ARP)?;
    let tpa = be32_at(ctx, off + 24).map_err(|_| stat::MAL_ARP)?;
    if htype != 1 || ptype != ETH_P_IP || lens != 0x0604 {
        return Err(stat::MAL_ARP);
    }
    if oper != 1 || spa == 0 || spa == tpa {
        return Ok(None);
    }
    Ok(Some(L3 {
        src: A16::v4(spa.to_be()),
        dst: A16::v4(tpa.to_be()),
        l4: 0,
        l4_len: 0,
        proto: PROTO_ARP,
        ttl: 0,
        df: 0,
        ip_id: 0,
        v6: 0,
        frag: 0,
    }))
}

#[inline(always)]
pub(super) fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let vihl = u8_at(ctx, off).map_err(|_| stat::MAL_IPV4)?;
    // Whole fixed header must be present.
    be32_at(ctx, off + 16).map_err(|_| stat::MAL_IPV4)?;
    if vihl >> 4 != 4 {
        return Err(stat::MAL_IPV4);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(stat::MAL_IPV4_IHL);
    }
    let tot_len = be16_at(ctx, off + 2).map_err(|_| stat::MAL_IPV4)? as usize;
    if tot_len < ihl {
        return Err(stat::MAL_IPV4);
    }
    let ip_id = be16_at(ctx, off + 4).map_err(|_| stat::MAL_IPV4)?;
    let frag_off = be16_at(ctx, off + 6).map_err(|_| stat::MAL_IPV4)?;
    let ttl = u8_at(ctx, off + 8).map_err(|_| stat::MAL_IPV4)?;
    let proto = u8_at(ctx, off + 9).map_err(|_| stat::MAL_IPV4)?;
    let src = v4_mapped_at(ctx, off + 12).map_err(|_| stat::MAL_IPV4)?;
    let dst = v4_mapped_at(ctx, off + 16).map_err(|_| stat::MAL_IPV4)?;
    let frag = if frag_off & 0x1fff != 0 {
        2
    } else if frag_off & 0x2000 != 0 {
        1
    } else {
        0
    };
    Ok(L3 {
        src,
        dst,
        l4: off + ihl,
        l4_len: tot_len - ihl,
        proto,
        ttl,
        df: ((frag_off & 0x4000) != 0) as u8,
        ip_id,
        v6: 0,
        frag,
    })
}

#[inline(always)]
pub(super) fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let ver = u8_at(ctx, off).map_err(|_| stat::MAL_IPV6)?;
    if ver >> 4 != 6 {
        return Err(stat::MAL_IPV6);
    }
    let payload_len = be16_at(ctx, off + 4).map_err(|_| stat::MAL_IPV6)? as usize;
    let mut next = u8_at(ctx, off + 6).map_err(|_| stat::MAL_IPV6)?;
    let hop = u8_at(ctx, off + 7).map_err(|_| stat::MAL_IPV6)?;
    let src = addr16_at(ctx, off + 8).map_err(|_| stat::MAL_IPV6)?;
    let dst = addr16_at(ctx, off + 24).map_err(|_| stat::MAL_IPV6)?;
    let mut l4 = off + 40;
    let mut ext_len = 0usize;
    let mut frag = 0u8;
    // A bounded chain of extension headers.
    for _ in 0..6 {
        match next {
            0 | 43 | 60 => {
                let w = be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let nh = (w >> 8) as u8;
                let len = ((w & 0xff) as usize + 1) * 8;
                next = nh;
                l4 += len;
                ext_len += len;
            }
            44 => {
                let nh = (be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)? >> 8) as u8;
                let fo = be16_at(ctx, l4 + 2).map_err(|_| stat::MAL_IPV6_EXT)?;
                frag = if fo & 0xfff8 != 0 {
                    2
                } else if fo & 1 != 0 {
                    1
                } else {
                    0
                };
                next = nh;
                l4 += 8;
                ext_len += 8;
            }
            51 => {
                let w = be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let nh = (w >> 8) as u8;
                let len = ((w & 0xff) as usize + 2) * 4;
                next = nh;
                l4 += len;
                ext_len += len;
            }
            _ => break,
        }
        if l4 > 512 {
            return Err(stat::MAL_IPV6_EXT);
        }
    }
    if ext_len > payload_len {
        return Err(stat::MAL_IPV6_EXT);
    }
    Ok(L3 {
        src,
        dst,
        l4,
        l4_len: payload_len - ext_len,
        proto: next,
        ttl: hop,
        df: 1,
        ip_id: 0,
        v6: 1,
        frag,
    })
}

