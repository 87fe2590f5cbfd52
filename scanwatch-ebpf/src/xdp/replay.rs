//! Replay batches: `scanwatch replay` packs many frames into one BPF_PROG_TEST_RUN buffer and
//! these entry points run the detector (`run`, the live program's body) on each of them in turn,
//! so one syscall covers up to `REPLAY_MAX_FRAMES` frames instead of one.
//!
//! Buffer: the `REPLAY_HDR_LEN`-byte header (frame count, frame lengths in chronological order),
//! then the frames in REVERSE order, the chronologically first one ending at the buffer's end.
//! For each frame, `[data, data_end)` is exactly that frame: the program moves `data` to the
//! frame's start (`bpf_xdp_adjust_head`) and cuts the tail at its end (`bpf_xdp_adjust_tail`),
//! so no parser can read into a neighbouring frame, and every bounds check, length and
//! `bpf_xdp_load_bytes` sees the frame as the live program would. Going from a frame to the one
//! before it in the buffer only moves `data` back (the bytes are there, untouched) and shrinks
//! the tail — in that order: the tail helper refuses to leave fewer than 14 bytes between
//! `data` and `data_end`, and growing a tail would zero the bytes it uncovers
//! (net/core/filter.c).
//!
//! One frame per program invocation: `scanwatch_replay` checks the header, copies it to a
//! per-CPU slot and tail-calls `scanwatch_replay_step`, which runs the detector on one frame,
//! moves to the next and tail-calls itself. The verifier walks the step program exactly as it
//! walks `scanwatch_xdp` (one inlined detector). A loop around the detector does not pass: a
//! `bpf_loop` callback holding it hit the 1M-instruction limit (the verifier walks a callback
//! until its entry state converges, a few times the detector), as would a bounded loop.
//!
//! After a frame that wrote to the event ring the step stops and reports how many frames ran
//! (return value `REPLAY_RET_DONE + k`): the replay stamps those events with that frame's
//! capture time, exactly as with one run per frame, and resubmits the rest of the batch (as it
//! does if the kernel's tail-call limit stops the chain early).
use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use scanwatch_common::{stat, REPLAY_HDR_LEN, REPLAY_MAX_FRAMES, REPLAY_RET_BAD, REPLAY_RET_DONE};

use crate::maps::{REPLAY_LENS, REPLAY_PROGS, STATS};

const WORDS: usize = REPLAY_HDR_LEN / 4;
/// Slot of the per-CPU value holding the next frame's index.
const NEXT: usize = WORDS;

/// Length of frame `i` (chronological index) from the header copy.
#[inline(always)]
fn frame_len(hdr: &[u32; WORDS + 1], i: usize) -> u32 {
    // Frame i's length is the u16 at byte 4 + 2i: word 1 + i/2, low half for even i.
    let w = 1 + i / 2;
    if w >= WORDS {
        return 0;
    }
    (hdr[w] >> ((i & 1) * 16)) & 0xffff
}

#[inline(always)]
fn events_written() -> u64 {
    match STATS.get_ptr(0) {
        // SAFETY: per-CPU value, valid for this run.
        Some(s) => unsafe { (*s)[stat::EVENTS as usize] },
        None => 0,
    }
}

/// The batch entry: check and copy the header, move to the first frame, start the chain.
#[inline(always)]
pub(super) fn replay_batch(ctx: &XdpContext) -> u32 {
    let Some(st) = REPLAY_LENS.get_ptr_mut(0) else {
        return REPLAY_RET_BAD;
    };
    let (d, end) = (ctx.data(), ctx.data_end());
    if d + REPLAY_HDR_LEN > end {
        return REPLAY_RET_BAD;
    }
    // SAFETY: the header's bytes are inside the packet (checked above); per-CPU map value.
    let st = unsafe {
        let src = d as *const u32;
        let mut i = 0;
        while i < WORDS {
            (*st)[i] = core::ptr::read_unaligned(src.add(i));
            i += 1;
        }
        (*st)[NEXT] = 0;
        &*st
    };
    let n = (st[0] & 0xffff) as usize;
    if n == 0 || n > REPLAY_MAX_FRAMES {
        return REPLAY_RET_BAD;
    }
    let mut total = REPLAY_HDR_LEN;
    let mut i = 0;
    while i < REPLAY_MAX_FRAMES {
        if i >= n {
            break;
        }
        let l = frame_len(st, i) as usize;
        if l < 14 {
            return REPLAY_RET_BAD;
        }
        total += l;
        i += 1;
    }
    // A buffer not wholly in the linear part (or a header that lies) is refused whole.
    if total != end - d {
        return REPLAY_RET_BAD;
    }
    // The first frame ends at the buffer's end.
    let first = frame_len(st, 0) as usize;
    // SAFETY: helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (total - first) as i32) } != 0 {
        return REPLAY_RET_BAD;
    }
    // SAFETY: tail call with this program's context; returns only if it failed.
    unsafe { REPLAY_PROGS.tail_call(ctx, 0) };
    REPLAY_RET_BAD
}

/// One frame: the detector on `[data, data_end)`, then on to the frame before it in the buffer
/// (a tail call to this program). Returns after the last frame, after a frame that wrote an
/// event, or when the kernel refuses another tail call.
#[inline(always)]
pub(super) fn replay_step(ctx: &XdpContext) -> u32 {
    let Some(st) = REPLAY_LENS.get_ptr_mut(0) else {
        return REPLAY_RET_BAD;
    };
    // SAFETY: per-CPU map value, valid for this run.
    let i = unsafe { (*st)[NEXT] } as usize;
    // SAFETY: as above.
    let n = unsafe { (*st)[0] & 0xffff } as usize;
    if i >= n || i >= REPLAY_MAX_FRAMES {
        return REPLAY_RET_DONE + i as u32;
    }
    let before = events_written();
    super::run(ctx);
    let done = i + 1;
    // SAFETY: as above (`run` does not touch this map).
    unsafe { (*st)[NEXT] = done as u32 };
    if done >= n || events_written() != before {
        return REPLAY_RET_DONE + done as u32;
    }
    // SAFETY: as above.
    let (cur, next) = unsafe { (frame_len(&*st, i) as i32, frame_len(&*st, done) as i32) };
    // SAFETY: helper calls on this program's context. Head first: the frame before this one
    // starts `next` bytes back; then the tail drops this frame.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -next) != 0 || bpf_xdp_adjust_tail(ctx.ctx, -cur) != 0 {
            return REPLAY_RET_DONE + done as u32;
        }
        REPLAY_PROGS.tail_call(ctx, 0);
    }
    REPLAY_RET_DONE + done as u32
}
