//! scanwatch kernel programs: XDP inbound detector and outbound process hooks.
#![no_std]
#![no_main]

mod maps;
mod outbound;
mod parse;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this; it exists only to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Empty XDP_PASS program: the benchmark's baseline, measured in the same run.
#[aya_ebpf::macros::xdp]
pub fn xdp_pass_baseline(_ctx: aya_ebpf::programs::XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Baseline of the rotating-source benchmark: only the rewrite `scanwatch_xdp_rotating` does.
#[aya_ebpf::macros::xdp]
pub fn xdp_pass_rotating(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    rotate_source(&ctx);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Advance an untagged IPv4/TCP packet's source address by one and its destination port by
/// 7,919 (a prime: every port comes round) in place.
#[inline(always)]
fn rotate_source(ctx: &aya_ebpf::programs::XdpContext) {
    let (d, end) = (ctx.data(), ctx.data_end());
    if d + 38 > end {
        return;
    }
    // SAFETY: bytes 26..30 (IPv4 source) and 36..38 (TCP destination port of an options-free
    // IPv4 header) are inside the packet, checked above.
    unsafe {
        let src = (d + 26) as *mut [u8; 4];
        *src = u32::from_be_bytes(*src).wrapping_add(1).to_be_bytes();
        let dport = (d + 36) as *mut [u8; 2];
        *dport = u16::from_be_bytes(*dport).wrapping_add(7919).to_be_bytes();
    }
}
