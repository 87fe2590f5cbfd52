//! The benchmark's object (`scanwatch bench`): the production XDP program plus bench-only entry
//! points — empty baselines measured in the same run, and a rotating-source entry. Built only with
//! the `bench` feature; the agent's object (main.rs) never carries these.
#![no_std]
#![no_main]
#![expect(dead_code, reason = "shares parse.rs with the agent's object; helpers only the outbound hooks use are unused here")]

mod maps;
mod parse;
mod xdp;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Benchmark entry: the same program, with the packet's IPv4 source address and TCP destination
/// port advanced before each run. BPF_PROG_TEST_RUN reuses one packet buffer across its repeat
/// loop, so every repetition is a SYN from a new source.
#[xdp]
pub fn scanwatch_xdp_rotating(ctx: XdpContext) -> u32 {
    rotate_source(&ctx);
    xdp::run(&ctx)
}

/// Empty XDP_PASS program: the benchmark's baseline, measured in the same run.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Baseline of the rotating-source benchmark: only the rewrite `scanwatch_xdp_rotating` does.
#[xdp]
pub fn xdp_pass_rotating(ctx: XdpContext) -> u32 {
    rotate_source(&ctx);
    xdp_action::XDP_PASS
}

/// Advance an untagged IPv4/TCP packet's source address by one and its destination port by
/// 7,919 (a prime: every port comes round) in place.
#[inline(always)]
fn rotate_source(ctx: &XdpContext) {
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
