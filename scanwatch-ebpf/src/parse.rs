//! Bounds-checked packet access. Every read goes through `load` / `ptr_at`, which check the
//! access against `data_end` so the verifier accepts it and a truncated packet yields `Err`.
use aya_ebpf::programs::XdpContext;

/// Largest offset we ever read at (Ethernet + 2 VLAN tags + IPv6 + 6 extension headers + TCP
/// with options). Clamping offsets to this keeps the verifier's range tracking finite.
pub const MAX_OFF: usize = 1024;

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_OFF {
        return Err(());
    }
    let len = core::mem::size_of::<T>();
    if start + off + len > end {
        return Err(());
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub fn u8_at(ctx: &XdpContext, off: usize) -> Result<u8, ()> {
    // SAFETY: ptr_at checked [off, off+1) is inside the packet.
    Ok(unsafe { *ptr_at::<u8>(ctx, off)? })
}

/// Big-endian u16 at `off`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, off: usize) -> Result<u16, ()> {
    let p = ptr_at::<[u8; 2]>(ctx, off)?;
    // SAFETY: bounds checked above.
    let b = unsafe { *p };
    Ok(u16::from_be_bytes(b))
}

/// Big-endian u32 at `off`.
#[inline(always)]
pub fn be32_at(ctx: &XdpContext, off: usize) -> Result<u32, ()> {
    let p = ptr_at::<[u8; 4]>(ctx, off)?;
    // SAFETY: bounds checked above.
    let b = unsafe { *p };
    Ok(u32::from_be_bytes(b))
}

/// 16 raw bytes at `off` (an IPv6 address).
#[inline(always)]
pub fn addr16_at(ctx: &XdpContext, off: usize) -> Result<[u8; 16], ()> {
    let p = ptr_at::<[u8; 16]>(ctx, off)?;
    // SAFETY: bounds checked above.
    Ok(unsafe { *p })
}

/// IPv4 address (4 bytes at `off`) mapped into IPv6 `::ffff:a.b.c.d`.
#[inline(always)]
pub fn v4_mapped_at(ctx: &XdpContext, off: usize) -> Result<[u8; 16], ()> {
    let p = ptr_at::<[u8; 4]>(ctx, off)?;
    // SAFETY: bounds checked above.
    let b = unsafe { *p };
    Ok(v4_mapped(b))
}

#[inline(always)]
pub fn v4_mapped(b: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
}

/// Fold a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub fn csum_fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}
