//! Bounds-checked packet access. Every read goes through `load` / `ptr_at`, which check the
//! access against `data_end` so the verifier accepts it and a truncated packet yields `Err`.
use aya_ebpf::programs::XdpContext;
use scanwatch_common::SrcKey;

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

/// A 16-byte address (IPv6, or IPv4 mapped into `::ffff:a.b.c.d`) held as two native-endian
/// words: built, compared and hashed with word operations (byte arrays cost the BPF target
/// byte-at-a-time memset/memcpy loops).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct A16 {
    pub w: [u64; 2],
}

impl A16 {
    /// `::ffff:a.b.c.d` from the address as read from the packet (network byte order in memory).
    #[inline(always)]
    pub fn v4(ne: u32) -> Self {
        // Bytes 8..16 of the address are 00 00 ff ff a b c d (little-endian target).
        A16 { w: [0, 0xffff_0000 | ((ne as u64) << 32)] }
    }

    /// The IPv4 address in network byte order as stored in memory (valid for mapped addresses).
    #[inline(always)]
    pub fn v4_ne(&self) -> u32 {
        (self.w[1] >> 32) as u32
    }

    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        // SAFETY: same size, any bit pattern is valid.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(self.w) }
    }

    /// The address as a map key, without copying.
    #[inline(always)]
    pub fn key(&self) -> &SrcKey {
        // SAFETY: SrcKey is a repr(C) [u8; 16] (alignment 1); A16 is 16 bytes.
        unsafe { &*(self as *const A16 as *const SrcKey) }
    }
}

/// Native-endian u16 at an even offset (the packet start is at least 2-byte aligned).
#[inline(always)]
fn ne16(p: usize) -> u64 {
    // SAFETY: callers checked the bounds.
    unsafe { *(p as *const u16) as u64 }
}

/// IPv6 address (16 bytes at `off`, an even offset), copied as eight 16-bit words.
#[inline(always)]
pub fn addr16_at(ctx: &XdpContext, off: usize) -> Result<A16, ()> {
    let src = ptr_at::<[u16; 8]>(ctx, off)? as *const u16;
    let mut a = A16 { w: [0; 2] };
    let dst = &mut a as *mut A16 as *mut u16;
    let mut i = 0;
    while i < 8 {
        // SAFETY: bounds checked above; volatile keeps this eight load/store pairs instead of a
        // memcpy call.
        unsafe { *dst.add(i) = core::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    Ok(a)
}

/// IPv4 address (4 bytes at `off`, an even offset) mapped into IPv6 `::ffff:a.b.c.d`.
#[inline(always)]
pub fn v4_mapped_at(ctx: &XdpContext, off: usize) -> Result<A16, ()> {
    let p = ptr_at::<[u8; 4]>(ctx, off)? as usize;
    Ok(A16::v4((ne16(p) | ne16(p + 2) << 16) as u32))
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

/// Copy `len` (1..=N) bytes at `off` into `buf` with the `bpf_xdp_load_bytes` helper. Used where
/// the offset is only known at run time and a direct 1-byte read would not verify (the compiler
/// turns `p + 1 > end` into `p >= end`, which gives the verifier no range).
#[inline(always)]
pub fn load_bytes<const N: usize>(ctx: &XdpContext, off: usize, buf: &mut [u8; N], len: usize) -> Result<(), ()> {
    // Mask first so the verifier sees a small unsigned bound on the length register.
    // The volatile read hides the value's known range from LLVM so the mask and checks are kept
    // for the verifier (LLVM would otherwise prove them redundant and drop them).
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&(len as u32)) } & 0x3f;
    if len == 0 || len as usize > N || off > MAX_OFF {
        return Err(());
    }
    // SAFETY: `buf` has room for `len` bytes; the helper checks the packet bounds.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            buf.as_mut_ptr().cast(),
            len,
        )
    };
    if r == 0 { Ok(()) } else { Err(()) }
}
