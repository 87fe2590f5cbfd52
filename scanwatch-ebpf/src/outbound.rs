//! Outbound hooks: connect, sendto/sendmsg/sendmmsg, socket creation and TCP connection outcomes,
//! each attributed to the calling process. Syscall tracepoints are the stable path (this is what
//! attaches on kernels without kprobes); `kp_connect` is the kprobe variant the loader prefers
//! where kprobes exist.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{kprobe, tracepoint},
    programs::{ProbeContext, TracePointContext},
};
use scanwatch_common::{kind, outcome, stat, EventHeader, ProcEvent, ProcState, SrcKey};

use crate::{
    maps::{CONNECTING, EVENTS, PROCS, PROC_CONFIG, RAW_SOCKS, STATS},
    parse::v4_mapped,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_PACKET: u16 = 17;
const SOCK_RAW: u32 = 3;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const EINPROGRESS: i64 = 115;

/// Syscall tracepoint argument offsets (common header 8 bytes + syscall nr 8 bytes).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG4: usize = 48;

#[inline(always)]
fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let own = PROC_CONFIG.get(0).map(|c| c.own_tgid).unwrap_or(0);
    if tgid == own || tgid == 0 {
        return None;
    }
    Some((tgid, id as u32))
}

#[inline(always)]
fn bump_stat(i: u32) {
    if let Some(s) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        let s = unsafe { &mut *s };
        if (i as usize) < s.len() {
            s[i as usize] += 1;
        }
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// Update the per-process counters.
#[inline(always)]
fn proc_update<F: FnOnce(&mut ProcState)>(tgid: u32, f: F) {
    let now = now_ns();
    if PROCS.get_ptr_mut(&tgid).is_none() {
        let uid = bpf_get_current_uid_gid() as u32;
        let st = ProcState { first_seen_ns: now, uid, ..ProcState::default() };
        let _ = PROCS.insert(&tgid, &st, 1);
    }
    if let Some(p) = PROCS.get_ptr_mut(&tgid) {
        // SAFETY: LRU value valid for this run.
        let p = unsafe { &mut *p };
        p.last_seen_ns = now;
        f(p);
    }
}

/// Emit a process event pre-filled with the current task's identity.
#[inline(always)]
fn emit<F: FnOnce(&mut ProcEvent)>(k: u32, tgid: u32, pid: u32, f: F) {
    match EVENTS.reserve::<ProcEvent>(0) {
        Some(mut e) => {
            let ug = bpf_get_current_uid_gid();
            let mut ev = ProcEvent {
                hdr: EventHeader { kind: k, _pad: 0, ts_ns: now_ns() },
                tgid,
                pid,
                uid: ug as u32,
                gid: (ug >> 32) as u32,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
                count: 1,
                ..ProcEvent::default()
            };
            f(&mut ev);
            e.write(ev);
            e.submit(0);
            bump_stat(stat::PROC_EVENTS);
        }
        None => bump_stat(stat::PROC_EVENTS_DROPPED),
    }
}

/// Read a user `sockaddr` (inet / inet6) into (family, address, port).
#[inline(always)]
fn read_sockaddr(ptr: u64, user: bool) -> Option<(u16, [u8; 16], u16)> {
    if ptr == 0 {
        return None;
    }
    let mut buf = [0u8; 24];
    // SAFETY: helper-checked reads of user/kernel memory.
    let ok = unsafe {
        if user {
            bpf_probe_read_user_buf(ptr as *const u8, &mut buf).is_ok()
                || bpf_probe_read_user_buf(ptr as *const u8, &mut buf[..16]).is_ok()
        } else {
            match bpf_probe_read_kernel(ptr as *const [u8; 24]) {
                Ok(b) => {
                    buf = b;
                    true
                }
                Err(_) => false,
            }
        }
    };
    if !ok {
        return None;
    }
    let family = u16::from_ne_bytes([buf[0], buf[1]]);
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    match family {
        AF_INET => Some((family, v4_mapped([buf[4], buf[5], buf[6], buf[7]]), port)),
        AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&buf[8..24]);
            Some((family, a, port))
        }
        _ => None,
    }
}

#[inline(always)]
fn on_connect(addr: u64, fd: i32, user: bool) -> u32 {
    let Some((tgid, pid)) = current() else { return 0 };
    let Some((family, dst, dport)) = read_sockaddr(addr, user) else { return 0 };
    proc_update(tgid, |p| p.attempts += 1);
    emit(kind::PROC_CONNECT, tgid, pid, |e| {
        e.family = family as u32;
        e.dst = SrcKey { addr: dst };
        e.dport = dport;
        e.value = fd;
    });
    0
}

#[tracepoint]
pub fn tp_enter_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_connect/format.
    let (fd, addr) = unsafe { (ctx.read_at::<i64>(ARG0).unwrap_or(-1), ctx.read_at::<u64>(ARG1).unwrap_or(0)) };
    on_connect(addr, fd as i32, true)
}

/// Immediate connect() failures (blocking connects refused, unreachable). Non-blocking connects
/// return -EINPROGRESS and are resolved by `tp_inet_sock_set_state`.
#[tracepoint]
pub fn tp_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((tgid, pid)) = current() else { return 0 };
    // SAFETY: offset from syscalls/sys_exit_connect/format.
    let ret = unsafe { ctx.read_at::<i64>(ARG0).unwrap_or(0) };
    if ret < 0 && ret != -EINPROGRESS {
        // Only processes that connected to an inet address have a PROCS entry.
        if PROCS.get_ptr(&tgid).is_some() {
            emit(kind::PROC_CONNECT_RESULT, tgid, pid, |e| e.value = ret as i32);
        }
    }
    0
}

/// kprobe on `tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)`; preferred
/// where kprobes exist. `uaddr` is a kernel copy of the user's sockaddr.
#[kprobe]
pub fn kp_connect(ctx: ProbeContext) -> u32 {
    let addr: u64 = ctx.arg(1).unwrap_or(0);
    on_connect(addr, -1, false)
}

#[tracepoint]
pub fn tp_enter_socket(ctx: TracePointContext) -> u32 {
    let Some((tgid, pid)) = current() else { return 0 };
    // SAFETY: offsets from syscalls/sys_enter_socket/format.
    let (family, ty, proto) = unsafe {
        (
            ctx.read_at::<u64>(ARG0).unwrap_or(0) as u16,
            ctx.read_at::<u64>(ARG1).unwrap_or(0) as u32,
            ctx.read_at::<u64>(ARG2).unwrap_or(0) as u32,
        )
    };
    let raw = ((family == AF_INET || family == AF_INET6) && ty & 0xf == SOCK_RAW) || family == AF_PACKET;
    if !raw {
        return 0;
    }
    let n = match RAW_SOCKS.get_ptr_mut(&tgid) {
        // SAFETY: LRU value valid for this run.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => {
            let _ = RAW_SOCKS.insert(&tgid, &1, 0);
            1
        }
    };
    proc_update(tgid, |p| p.raw_sockets += 1);
    if n <= 8 {
        emit(kind::PROC_SOCKET, tgid, pid, |e| {
            e.family = family as u32;
            e.sock_type = ty & 0xf;
            e.proto = proto as u8;
        });
    }
    0
}

/// What a raw/packet-socket payload says about its destination.
struct Probe {
    dst: [u8; 16],
    dport: u16,
    proto: u8,
    flags: u8,
    family: u16,
}

/// Parse the first bytes a raw or packet socket sends: Ethernet+IP (AF_PACKET), IPv4 with header
/// included (IP_HDRINCL), or a bare TCP/UDP/ICMP header on a raw socket (dst from sockaddr).
#[inline(always)]
fn parse_probe(buf: &[u8; 96], sa: Option<(u16, [u8; 16], u16)>) -> Option<Probe> {
    let mut off = 0usize;
    let et = u16::from_be_bytes([buf[12], buf[13]]);
    if buf[0] >> 4 != 4 && (et == 0x0800 || et == 0x86dd) && (buf[14] >> 4 == 4 || buf[14] >> 4 == 6) {
        off = 14;
    }
    let v = buf[off & 0x3f] >> 4;
    if v == 4 {
        let ihl = ((buf[off & 0x3f] & 0xf) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let proto = buf[(off + 9) & 0x3f];
        let d = off + 16;
        let dst = v4_mapped([buf[d & 0x3f], buf[(d + 1) & 0x3f], buf[(d + 2) & 0x3f], buf[(d + 3) & 0x3f]]);
        let l4 = (off + ihl) & 0x3f;
        let dport = u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]);
        let flags = buf[l4 + 13];
        return Some(Probe { dst, dport, proto, flags, family: AF_INET });
    }
    if v == 6 && off == 14 {
        let proto = buf[14 + 6];
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&buf[14 + 24..14 + 40]);
        let l4 = 14 + 40;
        let dport = u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]);
        let flags = buf[l4 + 13];
        return Some(Probe { dst, dport, proto, flags, family: AF_INET6 });
    }
    // Bare transport header on a raw socket: destination comes from the sockaddr.
    let (family, dst, _) = sa?;
    Some(Probe { dst, dport: u16::from_be_bytes([buf[2], buf[3]]), proto: 0, flags: buf[13], family })
}

#[inline(always)]
fn on_raw_send(buf_ptr: u64, sa: Option<(u16, [u8; 16], u16)>, count: u32) {
    let Some((tgid, pid)) = current() else { return };
    let mut buf = [0u8; 96];
    // SAFETY: helper-checked user read.
    if buf_ptr == 0 || unsafe { bpf_probe_read_user_buf(buf_ptr as *const u8, &mut buf[..64]) }.is_err() {
        return;
    }
    let Some(p) = parse_probe(&buf, sa) else { return };
    proc_update(tgid, |s| s.raw_probes += count);
    emit(kind::PROC_SENDTO, tgid, pid, |e| {
        e.family = p.family as u32;
        e.sock_type = SOCK_RAW;
        e.dst = SrcKey { addr: p.dst };
        e.dport = p.dport;
        e.proto = p.proto;
        e.tcp_flags = p.flags;
        e.count = count;
    });
}

#[inline(always)]
fn is_raw_proc() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    RAW_SOCKS.get_ptr(&tgid).is_some()
}

#[tracepoint]
pub fn tp_enter_sendto(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_sendto/format.
    let (buf, addr) = unsafe { (ctx.read_at::<u64>(ARG1).unwrap_or(0), ctx.read_at::<u64>(ARG4).unwrap_or(0)) };
    if is_raw_proc() {
        on_raw_send(buf, read_sockaddr(addr, true), 1);
        return 0;
    }
    // Unconnected datagram sends to an inet address (UDP probing by unprivileged tools).
    if addr != 0 {
        let Some((tgid, pid)) = current() else { return 0 };
        if let Some((family, dst, dport)) = read_sockaddr(addr, true) {
            proc_update(tgid, |p| p.attempts += 1);
            emit(kind::PROC_SENDTO, tgid, pid, |e| {
                e.family = family as u32;
                e.sock_type = 2; // SOCK_DGRAM
                e.dst = SrcKey { addr: dst };
                e.dport = dport;
                e.proto = 17;
            });
        }
    }
    0
}

/// Userspace layouts read from sendmsg/sendmmsg arguments.
#[repr(C)]
#[derive(Clone, Copy)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    _pad: u32,
    iov: u64,
    iovlen: u64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn on_msg(msg_ptr: u64, count: u32) {
    if !is_raw_proc() || msg_ptr == 0 {
        return;
    }
    // SAFETY: helper-checked user reads.
    let Ok(m) = (unsafe { bpf_probe_read_user(msg_ptr as *const MsgHdr) }) else { return };
    if m.iov == 0 || m.iovlen == 0 {
        return;
    }
    // SAFETY: as above.
    let Ok(iov) = (unsafe { bpf_probe_read_user(m.iov as *const IoVec) }) else { return };
    on_raw_send(iov.base, read_sockaddr(m.name, true), count);
}

#[tracepoint]
pub fn tp_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from syscalls/sys_enter_sendmsg/format.
    let msg = unsafe { ctx.read_at::<u64>(ARG1).unwrap_or(0) };
    on_msg(msg, 1);
    0
}

/// sendmmsg batches: the first message is parsed, the event carries the batch size.
#[tracepoint]
pub fn tp_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_sendmmsg/format; `struct mmsghdr` starts with msghdr.
    let (msg, vlen) = unsafe { (ctx.read_at::<u64>(ARG1).unwrap_or(0), ctx.read_at::<u64>(ARG2).unwrap_or(0)) };
    on_msg(msg, vlen as u32);
    0
}

/// sock:inet_sock_set_state — SYN_SENT is entered in the connecting task's context (remember
/// the task); leaving SYN_SENT for ESTABLISHED or CLOSE is the outcome.
#[tracepoint]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from sock/inet_sock_set_state/format.
    let (sk, old, new, proto) = unsafe {
        (
            ctx.read_at::<u64>(8).unwrap_or(0),
            ctx.read_at::<i32>(16).unwrap_or(0),
            ctx.read_at::<i32>(20).unwrap_or(0),
            ctx.read_at::<u16>(30).unwrap_or(0),
        )
    };
    if proto != 6 {
        return 0;
    }
    if new == TCP_SYN_SENT {
        if let Some((tgid, _)) = current() {
            let _ = CONNECTING.insert(&sk, &tgid, 0);
        }
        return 0;
    }
    if old != TCP_SYN_SENT || (new != TCP_ESTABLISHED && new != TCP_CLOSE) {
        return 0;
    }
    // SAFETY: value copied out immediately.
    let Some(tgid) = (unsafe { CONNECTING.get(&sk) }).copied() else { return 0 };
    let _ = CONNECTING.remove(&sk);
    // SAFETY: offsets from the tracepoint format.
    let (family, dport, d4, d6) = unsafe {
        (
            ctx.read_at::<u16>(28).unwrap_or(0),
            ctx.read_at::<u16>(26).unwrap_or(0),
            ctx.read_at::<[u8; 4]>(36).unwrap_or([0; 4]),
            ctx.read_at::<[u8; 16]>(56).unwrap_or([0; 16]),
        )
    };
    let ok = new == TCP_ESTABLISHED;
    proc_update(tgid, |p| if ok { p.successes += 1 } else { p.failures += 1 });
    match EVENTS.reserve::<ProcEvent>(0) {
        Some(mut e) => {
            // Softirq context: the identity is the connecting task's, not `current`.
            let ev = ProcEvent {
                hdr: EventHeader { kind: kind::PROC_OUTCOME, _pad: 0, ts_ns: now_ns() },
                tgid,
                pid: tgid,
                family: family as u32,
                dst: SrcKey { addr: if family == AF_INET { v4_mapped(d4) } else { d6 } },
                dport,
                proto: 6,
                value: if ok { outcome::ESTABLISHED } else { outcome::FAILED },
                count: 1,
                ..ProcEvent::default()
            };
            e.write(ev);
            e.submit(0);
            bump_stat(stat::PROC_EVENTS);
        }
        None => bump_stat(stat::PROC_EVENTS_DROPPED),
    }
    0
}
