//! Outbound hooks: connect, sendto/sendmsg/sendmmsg, socket creation and TCP connection outcomes,
//! each attributed to the calling process. Syscall tracepoints are the stable path (this is what
//! attaches on kernels without kprobes); `kp_connect` is the kprobe variant the loader prefers
//! where kprobes exist.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{kprobe, map, tracepoint},
    maps::LruHashMap,
    programs::{ProbeContext, TracePointContext},
    EbpfContext,
};
use scanwatch_common::{
    outcome, stat, tp, udp_peer_recent, udp_peer_slot, EventHeader, EventKind, OutConn, OutPairKey, ProcEvent,
    ProcPayloadEvent, ProcState, SrcKey, OUT_FIRST_MAX_AGE_NS, PROC_BUDGET_WINDOW_NS, PROC_PAYLOAD_SAMPLE,
    UDP_PEER_BYTES,
};

use crate::{
    maps::{CONNECTING, EVENTS, OUT_FIRST, OUT_PAIRS, PROCS, PROC_CONFIG, RAW_SOCKS, STATS, UDP_PEERS},
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
/// `CONNECT_INFLIGHT` `ts_ns` flags: the connect was not reported (repeat pair or over
/// budget); the socket entered SYN_SENT inside the call (its outcome comes from
/// `tp_inet_sock_set_state`, so the exit hook must not count a failure too).
const UNREPORTED: u64 = 1;
const SYN_SENT_SEEN: u64 = 2;


/// Tasks inside connect() to an inet address: pid_tgid → the connect (descriptor, destination).
/// The exit hook reports immediate failures only for these (connects to AF_UNIX paths such as
/// /dev/log are not network probes); a TCP connect entering SYN_SENT inside the call moves it to
/// `OUT_FIRST` (its first write is sampled). LRU, 4,096 tasks in flight.
#[map]
static CONNECT_INFLIGHT: LruHashMap<u64, OutConn> = LruHashMap::with_max_entries(4096, 0);

/// Payload sizes examined for a raw / packet socket inherited across fork (a child sending on a
/// socket its parent opened, e.g. `hping3 --scan`): probes are small, ordinary sends mostly are
/// not, so the user read is skipped for everything else.
const INHERITED_MIN: u64 = 20;
const INHERITED_MAX: u64 = 256;

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

/// Whether the pair (process, destination, port, protocol, probe flags) is to be reported: not
/// reported inside the pair window. A repeat is counted in the process's `repeats` (`count`
/// sends) and `PROC_REPEATS`; the caller sends no event.
#[inline(always)]
fn report_pair(tgid: u32, dst: &[u8; 16], dport: u16, proto: u8, flags: u8, count: u32) -> bool {
    let window = PROC_CONFIG.get(0).map(|c| c.pair_window_ns).unwrap_or(0);
    if window == 0 {
        return true;
    }
    let key = OutPairKey { tgid, dport, proto, _pad: flags, dst: *dst };
    let now = now_ns();
    if let Some(t) = OUT_PAIRS.get_ptr_mut(&key) {
        // SAFETY: LRU value valid for this run.
        let t = unsafe { &mut *t };
        if now.wrapping_sub(*t) < window {
            proc_update(tgid, |p| p.repeats = p.repeats.wrapping_add(count));
            bump_stat(stat::PROC_REPEATS);
            return false;
        }
        *t = now;
        return true;
    }
    let _ = OUT_PAIRS.insert(&key, &now, 0);
    true
}

/// Take one event from the process's budget (`ProcConfig::events_per_window` per
/// `PROC_BUDGET_WINDOW_NS`). When spent, the event is counted in the process's `shed` (and
/// `shed_raw` for a raw probe; `count` sends) and `PROC_SHED`, and the caller sends nothing.
/// `count` 0: an optional event (a payload sample), not counted when refused. The process's
/// `PROCS` entry must exist (`proc_update` first).
#[inline(always)]
fn take_budget(tgid: u32, raw: bool, count: u32) -> bool {
    let limit = PROC_CONFIG.get(0).map(|c| c.events_per_window).unwrap_or(0);
    if limit == 0 {
        return true;
    }
    let Some(p) = PROCS.get_ptr_mut(&tgid) else { return true };
    // SAFETY: LRU value valid for this run; a racing update of the same process on another CPU
    // can only make the budget slightly looser or a counter a lower bound.
    let p = unsafe { &mut *p };
    let now = now_ns();
    if now.wrapping_sub(p.budget_start_ns) >= PROC_BUDGET_WINDOW_NS {
        p.budget_start_ns = now;
        p.budget_used = 0;
    }
    if p.budget_used < limit {
        p.budget_used += 1;
        return true;
    }
    if count > 0 {
        p.shed = p.shed.wrapping_add(count);
        if raw {
            p.shed_raw = p.shed_raw.wrapping_add(count);
        }
        bump_stat(stat::PROC_SHED);
    }
    false
}

/// Whether a datagram to (`dst`, `dport`) answers a peer that sent to this host recently
/// (`UDP_PEERS`, written by the XDP program).
#[inline(always)]
fn is_udp_reply(dst: &[u8; 16], dport: u16) -> bool {
    // SAFETY: same size, any bit pattern is valid.
    let w = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(*dst) };
    let (entry, byte) = udp_peer_slot(&w, dport);
    // SAFETY: the map value lives while the program runs; the index is masked below its size.
    match UDP_PEERS.get(entry) {
        Some(p) => udp_peer_recent(p[byte & (UDP_PEER_BYTES - 1)], now_ns()),
        None => false,
    }
}

/// A syscall tracepoint argument read straight from the context (a plain load the verifier
/// checks against the context's bounds and alignment) instead of one `bpf_probe_read_kernel`
/// helper call per field: `tp_enter_write` runs on every write(2) of the host. Syscall
/// arguments are 8-byte slots at 8-byte-aligned offsets (checked against tracefs at load).
///
/// # Safety
/// `off` must be the offset of a `T`-sized, `T`-aligned field of the tracepoint's record.
#[inline(always)]
unsafe fn tp_arg<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: per the contract above; the verifier rejects an out-of-bounds context read.
    unsafe { (ctx.as_ptr() as *const u8).add(off).cast::<T>().read() }
}

/// Update the per-process counters (one lookup when the process has an entry).
#[inline(always)]
fn proc_update<F: FnOnce(&mut ProcState)>(tgid: u32, f: F) {
    let now = now_ns();
    let p = match PROCS.get_ptr_mut(&tgid) {
        Some(p) => p,
        None => {
            let uid = bpf_get_current_uid_gid() as u32;
            let st = ProcState { first_seen_ns: now, uid, ..ProcState::default() };
            let _ = PROCS.insert(&tgid, &st, 1);
            match PROCS.get_ptr_mut(&tgid) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: LRU value valid for this run.
    let p = unsafe { &mut *p };
    p.last_seen_ns = now;
    f(p);
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
    // A connect to a pair reported inside the window, or past the budget, is counted only:
    // neither it nor its outcome or first payload becomes an event (`ts_ns` = UNREPORTED).
    let reported = report_pair(tgid, &dst, dport, 0, 0, 1) && take_budget(tgid, false, 1);
    let conn = OutConn { dst: SrcKey { addr: dst }, ts_ns: if reported { 0 } else { UNREPORTED }, fd, dport, family };
    let _ = CONNECT_INFLIGHT.insert(&bpf_get_current_pid_tgid(), &conn, 0);
    if !reported {
        return 0;
    }
    emit(EventKind::ProcConnect as u32, tgid, pid, |e| {
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
    let (fd, addr) = unsafe { (tp_arg::<i64>(&ctx, tp::CONNECT_FD.offset), tp_arg::<u64>(&ctx, tp::CONNECT_ADDR.offset)) };
    on_connect(addr, fd as i32, true)
}

/// Immediate connect() failures (blocking connects refused, unreachable). Non-blocking connects
/// return -EINPROGRESS and are resolved by `tp_inet_sock_set_state`.
#[tracepoint]
pub fn tp_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((tgid, pid)) = current() else { return 0 };
    let id = bpf_get_current_pid_tgid();
    // Only connects that the enter hook saw going to an inet address count.
    // SAFETY: value copied out immediately.
    let Some(c) = (unsafe { CONNECT_INFLIGHT.get(&id) }).copied() else { return 0 };
    let _ = CONNECT_INFLIGHT.remove(&id);
    // SAFETY: offset from syscalls/sys_exit_connect/format.
    let ret = unsafe { tp_arg::<i64>(&ctx, tp::CONNECT_RET.offset) };
    // A connect that sent its SYN has its outcome reported by the state change (a refused
    // blocking connect would otherwise count twice); only failures before any SYN count here.
    if ret < 0 && ret != -EINPROGRESS && c.ts_ns & SYN_SENT_SEEN == 0 {
        if c.ts_ns & UNREPORTED != 0 {
            proc_update(tgid, |p| p.failures += 1);
        } else {
            emit(EventKind::ProcConnectResult as u32, tgid, pid, |e| e.value = ret as i32);
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
            tp_arg::<u64>(&ctx, tp::SOCKET_FAMILY.offset) as u16,
            tp_arg::<u64>(&ctx, tp::SOCKET_TYPE.offset) as u32,
            tp_arg::<u64>(&ctx, tp::SOCKET_PROTOCOL.offset) as u32,
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
        emit(EventKind::ProcSocket as u32, tgid, pid, |e| {
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

/// Where the network header starts in a raw / packet socket payload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// IPv4 header at offset 0 (IP_HDRINCL / IPPROTO_RAW, or a cooked packet socket).
    Ip4,
    /// IPv6 header at offset 0.
    Ip6,
    /// Ethernet header, then IPv4 / IPv6 (AF_PACKET SOCK_RAW).
    Eth4,
    Eth6,
    /// A bare transport header (raw socket without header inclusion): dst from the sockaddr.
    Bare,
}

/// Decide the payload layout. `len` is the send length (0 = unknown). A payload that starts with
/// a valid IP header whose length field equals the send length is IP; otherwise an Ethernet
/// frame carrying IP is Ethernet (a destination MAC may well start with 0x4_, so the first
/// nibble alone cannot decide). `strict` (sockets not known to be raw) requires an exact length
/// match for every layout and never accepts a bare header.
#[inline(always)]
fn layout(buf: &[u8; 96], len: u64, strict: bool) -> Option<Layout> {
    let v0 = buf[0] >> 4;
    let ihl0 = buf[0] & 0xf;
    let tot0 = u16::from_be_bytes([buf[2], buf[3]]) as u64;
    let pl0 = u16::from_be_bytes([buf[4], buf[5]]) as u64;
    let et = u16::from_be_bytes([buf[12], buf[13]]);
    let v14 = buf[14] >> 4;
    let tot14 = u16::from_be_bytes([buf[16], buf[17]]) as u64;
    let pl14 = u16::from_be_bytes([buf[18], buf[19]]) as u64;
    if v0 == 4 && ihl0 >= 5 && len != 0 && tot0 == len {
        return Some(Layout::Ip4);
    }
    if v0 == 6 && len >= 40 && pl0 + 40 == len {
        return Some(Layout::Ip6);
    }
    // Ethernet frames may be padded to the 60-byte minimum.
    let eth_len = |l3: u64| len == 0 || l3 + 14 == len || (len == 60 && l3 + 14 < 60);
    if et == 0x0800 && v14 == 4 && buf[14] & 0xf >= 5 && (!strict || len != 0) && eth_len(tot14) {
        return Some(Layout::Eth4);
    }
    if et == 0x86dd && v14 == 6 && (!strict || len != 0) && eth_len(pl14 + 40) {
        return Some(Layout::Eth6);
    }
    if strict {
        return None;
    }
    // Length unknown or filled in by the kernel (IPPROTO_RAW may leave tot_len 0).
    if v0 == 4 && ihl0 >= 5 && (tot0 == 0 || len == 0) {
        return Some(Layout::Ip4);
    }
    if et == 0x0800 && v14 == 4 && buf[14] & 0xf >= 5 {
        return Some(Layout::Eth4);
    }
    if et == 0x86dd && v14 == 6 {
        return Some(Layout::Eth6);
    }
    if v0 == 6 {
        return Some(Layout::Ip6);
    }
    Some(Layout::Bare)
}

/// Parse the first bytes a raw or packet socket sends: Ethernet+IP (AF_PACKET), an IP header
/// (IP_HDRINCL / IPPROTO_RAW / cooked packet sockets), or a bare TCP/UDP/ICMP header on a raw
/// socket (dst from the sockaddr).
#[inline(always)]
fn parse_probe(buf: &[u8; 96], len: u64, strict: bool, sa: Option<(u16, [u8; 16], u16)>) -> Option<Probe> {
    let lay = layout(buf, len, strict)?;
    let off = match lay {
        Layout::Eth4 | Layout::Eth6 => 14usize,
        _ => 0usize,
    };
    if lay == Layout::Ip4 || lay == Layout::Eth4 {
        let ihl = ((buf[off & 0x3f] & 0xf) as usize) * 4;
        let proto = buf[(off + 9) & 0x3f];
        let d = off + 16;
        let dst = v4_mapped([buf[d & 0x3f], buf[(d + 1) & 0x3f], buf[(d + 2) & 0x3f], buf[(d + 3) & 0x3f]]);
        let l4 = (off + ihl) & 0x3f;
        let dport = u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]);
        let flags = buf[l4 + 13];
        return Some(Probe { dst, dport, proto, flags, family: AF_INET });
    }
    if lay == Layout::Ip6 || lay == Layout::Eth6 {
        let proto = buf[(off + 6) & 0x3f];
        let mut dst = [0u8; 16];
        let d = off & 0x1f;
        dst.copy_from_slice(&buf[d + 24..d + 40]);
        let l4 = (off + 40) & 0x3f;
        let dport = u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]);
        let flags = buf[l4 + 13];
        return Some(Probe { dst, dport, proto, flags, family: AF_INET6 });
    }
    // Bare transport header on a raw socket: destination comes from the sockaddr.
    let (family, dst, _) = sa?;
    Some(Probe { dst, dport: u16::from_be_bytes([buf[2], buf[3]]), proto: 0, flags: buf[13], family })
}

#[inline(always)]
fn emit_probe(tgid: u32, pid: u32, p: &Probe, count: u32) {
    proc_update(tgid, |s| s.raw_probes += count);
    if !report_pair(tgid, &p.dst, p.dport, p.proto, p.flags, count) || !take_budget(tgid, true, count) {
        return;
    }
    emit(EventKind::ProcSendto as u32, tgid, pid, |e| {
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
fn read_payload(buf_ptr: u64, buf: &mut [u8; 96]) -> bool {
    // SAFETY: helper-checked user read.
    buf_ptr != 0 && unsafe { bpf_probe_read_user_buf(buf_ptr as *const u8, &mut buf[..64]) }.is_ok()
}

/// A send of a process known to hold a raw / packet socket.
#[inline(always)]
fn on_raw_send(buf_ptr: u64, len: u64, sa: Option<(u16, [u8; 16], u16)>, count: u32) {
    let Some((tgid, pid)) = current() else { return };
    let mut buf = [0u8; 96];
    if !read_payload(buf_ptr, &mut buf) {
        return;
    }
    let Some(p) = parse_probe(&buf, len, false, sa) else { return };
    emit_probe(tgid, pid, &p, count);
}

/// A small send of a process not known to hold a raw socket: it may be a child sending on a raw
/// / packet socket inherited across fork (the socket() hook saw only the parent). Accepted only
/// when the payload is a whole IP packet (exact length) to the sockaddr's own address, or — no
/// inet sockaddr — a whole Ethernet frame carrying IP. The process is then remembered as raw.
#[inline(always)]
fn on_maybe_inherited_send(buf_ptr: u64, len: u64, sa: Option<(u16, [u8; 16], u16)>) -> bool {
    if !(INHERITED_MIN..=INHERITED_MAX).contains(&len) {
        return false;
    }
    let mut buf = [0u8; 96];
    if !read_payload(buf_ptr, &mut buf) {
        return false;
    }
    let Some(p) = parse_probe(&buf, len, true, None) else { return false };
    let ip_layout = buf[0] >> 4 == 4 || buf[0] >> 4 == 6;
    match sa {
        // An IP packet sent to an inet address must be addressed to that same address.
        Some((_, dst, _)) => {
            if !ip_layout || p.dst != dst {
                return false;
            }
        }
        None => {
            if len < 34 {
                return false;
            }
        }
    }
    let Some((tgid, pid)) = current() else { return false };
    let _ = RAW_SOCKS.insert(&tgid, &1, 0);
    emit_probe(tgid, pid, &p, 1);
    true
}

/// A datagram of the current process to (`dst`, `dport`) whose pair was reported inside the
/// window: counted in `PROC_REPEATS` (not in the process's entry: this is the per-datagram path
/// of a busy UDP sender), false. True when it is to be looked at.
#[inline(always)]
fn pair_fresh(dst: &[u8; 16], dport: u16) -> bool {
    let Some((tgid, _)) = current() else { return false };
    let window = PROC_CONFIG.get(0).map(|c| c.pair_window_ns).unwrap_or(0);
    if window == 0 {
        return true;
    }
    let key = OutPairKey { tgid, dport, proto: 17, _pad: 0, dst: *dst };
    // SAFETY: value copied out immediately.
    match unsafe { OUT_PAIRS.get(&key) } {
        Some(t) if now_ns().wrapping_sub(*t) < window => {
            // The cheapest path of a busy UDP sender: counted globally only (no PROCS update).
            bump_stat(stat::PROC_REPEATS);
            false
        }
        _ => true,
    }
}

#[inline(always)]
fn is_raw_proc() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    RAW_SOCKS.get_ptr(&tgid).is_some()
}

/// A write / send on descriptor `fd`: when it is the first on an outbound TCP connection the
/// process opened with connect() (an `OUT_FIRST` entry, at most `OUT_FIRST_MAX_AGE_NS` old), up to
/// `PROC_PAYLOAD_SAMPLE` bytes of it go to userspace in a `ProcPayloadEvent`. Returns true when
/// the descriptor had an entry (consumed either way). Every other write costs one hash lookup.
#[inline(always)]
fn on_out_write(fd: u64, buf: u64, len: u64) -> bool {
    let id = bpf_get_current_pid_tgid();
    let key = (id & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff);
    // SAFETY: value copied out immediately.
    let Some(c) = (unsafe { OUT_FIRST.get(&key) }).copied() else { return false };
    if len == 0 {
        return true;
    }
    let _ = OUT_FIRST.remove(&key);
    let now = now_ns();
    if now.wrapping_sub(c.ts_ns) > OUT_FIRST_MAX_AGE_NS || buf == 0 {
        return true;
    }
    let Some((tgid, pid)) = current() else { return true };
    let Some(mut e) = EVENTS.reserve::<ProcPayloadEvent>(0) else {
        bump_stat(stat::PROC_EVENTS_DROPPED);
        return true;
    };
    let ev = e.as_mut_ptr();
    let n = if len > PROC_PAYLOAD_SAMPLE as u64 { PROC_PAYLOAD_SAMPLE as u32 } else { len as u32 };
    let ug = bpf_get_current_uid_gid();
    // SAFETY: `ev` points at a reserved, writable ProcPayloadEvent-sized record; the user read
    // is helper-checked and bounded by the record's `data` size.
    let ok = unsafe {
        (*ev).hdr = EventHeader { kind: EventKind::ProcPayload as u32, _pad: 0, ts_ns: now };
        (*ev).tgid = tgid;
        (*ev).pid = pid;
        (*ev).uid = ug as u32;
        (*ev).gid = (ug >> 32) as u32;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).family = c.family as u32;
        (*ev).dport = c.dport;
        (*ev)._pad = 0;
        (*ev).dst = c.dst;
        (*ev).len = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
        let dst = (&raw mut (*ev).data) as *mut u8;
        let ok = n > 0
            && n <= PROC_PAYLOAD_SAMPLE as u32
            && aya_ebpf::helpers::generated::bpf_probe_read_user(dst as *mut _, n, buf as *const _) == 0;
        (*ev).sample_len = if ok { n } else { 0 };
        ok
    };
    if !ok {
        e.discard(0);
        bump_stat(stat::PROC_PAYLOAD_READ_FAILED);
        return true;
    }
    e.submit(0);
    bump_stat(stat::PROC_PAYLOADS);
    proc_update(tgid, |_| {});
    true
}

/// write(2): only the first write on an outbound TCP connection is looked at (`on_out_write`).
#[tracepoint]
pub fn tp_enter_write(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_write/format.
    let (fd, buf, len) = unsafe {
        (
            tp_arg::<u64>(&ctx, tp::WRITE_FD.offset),
            tp_arg::<u64>(&ctx, tp::WRITE_BUF.offset),
            tp_arg::<u64>(&ctx, tp::WRITE_COUNT.offset),
        )
    };
    on_out_write(fd, buf, len);
    0
}

#[tracepoint]
pub fn tp_enter_sendto(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_sendto/format.
    let (fd, buf, len, addr) = unsafe {
        (
            tp_arg::<u64>(&ctx, tp::SENDTO_FD.offset),
            tp_arg::<u64>(&ctx, tp::SENDTO_BUFF.offset),
            tp_arg::<u64>(&ctx, tp::SENDTO_LEN.offset),
            tp_arg::<u64>(&ctx, tp::SENDTO_ADDR.offset),
        )
    };
    // send() on a connected TCP socket: its first payload.
    if addr == 0 && on_out_write(fd, buf, len) {
        return 0;
    }
    if is_raw_proc() {
        on_raw_send(buf, len, read_sockaddr(addr, true), 1);
        return 0;
    }
    let sa = read_sockaddr(addr, true);
    // Unconnected datagram sends to an inet address: a reply to a peer that sent first (a
    // server's answer) or a repeat of a reported pair is counted only, before the payload of a
    // small send is read for the inherited-raw-socket check below.
    if let Some((_, dst, dport)) = sa {
        if is_udp_reply(&dst, dport) {
            // Per-datagram path of a busy UDP server: counted globally only.
            bump_stat(stat::PROC_UDP_REPLIES);
            return 0;
        }
        if !pair_fresh(&dst, dport) {
            return 0;
        }
    }
    if on_maybe_inherited_send(buf, len, sa) {
        return 0;
    }
    // Unconnected datagram sends to an inet address (UDP probing by unprivileged tools).
    if addr != 0 {
        if let Some(sa) = sa {
            report_datagram(sa);
        }
    }
    0
}

/// An unconnected datagram to a new (process, destination, port) pair: counted, and an event
/// within the process's budget.
#[inline(always)]
fn report_datagram((family, dst, dport): (u16, [u8; 16], u16)) {
    let Some((tgid, pid)) = current() else { return };
    proc_update(tgid, |p| p.attempts += 1);
    if !report_pair(tgid, &dst, dport, 17, 0, 1) || !take_budget(tgid, false, 1) {
        return;
    }
    emit(EventKind::ProcSendto as u32, tgid, pid, |e| {
        e.family = family as u32;
        e.sock_type = 2; // SOCK_DGRAM
        e.dst = SrcKey { addr: dst };
        e.dport = dport;
        e.proto = 17;
    });
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
    if msg_ptr == 0 {
        return;
    }
    let raw = is_raw_proc();
    // SAFETY: helper-checked user reads.
    let Ok(m) = (unsafe { bpf_probe_read_user(msg_ptr as *const MsgHdr) }) else { return };
    if !raw {
        // An unconnected datagram socket's sendmsg / sendmmsg (DNS and QUIC servers, and any
        // UDP tool that uses it): the first message's destination, judged like sendto's.
        // Connected sockets (no name) cost this one read.
        if m.name == 0 || m.namelen < 16 {
            return;
        }
        let Some(sa) = read_sockaddr(m.name, true) else { return };
        if is_udp_reply(&sa.1, sa.2) {
            bump_stat(stat::PROC_UDP_REPLIES);
            return;
        }
        if pair_fresh(&sa.1, sa.2) {
            report_datagram(sa);
        }
        return;
    }
    if m.iov == 0 || m.iovlen == 0 {
        return;
    }
    // SAFETY: as above.
    let Ok(iov) = (unsafe { bpf_probe_read_user(m.iov as *const IoVec) }) else { return };
    on_raw_send(iov.base, iov.len, read_sockaddr(m.name, true), count);
}

#[tracepoint]
pub fn tp_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from syscalls/sys_enter_sendmsg/format.
    let msg = unsafe { tp_arg::<u64>(&ctx, tp::SENDMSG_MSG.offset) };
    on_msg(msg, 1);
    0
}

/// sendmmsg batches: the first message is parsed, the event carries the batch size.
#[tracepoint]
pub fn tp_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from syscalls/sys_enter_sendmmsg/format; `struct mmsghdr` starts with msghdr.
    let (msg, vlen) = unsafe { (tp_arg::<u64>(&ctx, tp::SENDMMSG_MSG.offset), tp_arg::<u64>(&ctx, tp::SENDMMSG_VLEN.offset)) };
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
            ctx.read_at::<u64>(tp::STATE_SKADDR.offset).unwrap_or(0),
            ctx.read_at::<i32>(tp::STATE_OLD.offset).unwrap_or(0),
            ctx.read_at::<i32>(tp::STATE_NEW.offset).unwrap_or(0),
            ctx.read_at::<u16>(tp::STATE_PROTOCOL.offset).unwrap_or(0),
        )
    };
    if proto != 6 {
        return 0;
    }
    if new == TCP_SYN_SENT {
        if let Some((tgid, _)) = current() {
            // SAFETY: value copied out immediately.
            let id = bpf_get_current_pid_tgid();
            let inflight = unsafe { CONNECT_INFLIGHT.get(&id) }.copied();
            if let Some(c) = CONNECT_INFLIGHT.get_ptr_mut(&id) {
                // SAFETY: LRU value valid for this run, only this task's connect uses it.
                unsafe { (*c).ts_ns |= SYN_SENT_SEEN };
            }
            let reported = inflight.is_none_or(|c| c.ts_ns & UNREPORTED == 0);
            let _ = CONNECTING.insert(&sk, &(tgid as u64 | (reported as u64) << 32), 0);
            // Inside connect(): this descriptor is an outbound TCP connection; its first write
            // is sampled (`on_out_write`) — for a repeat connection too (a script's later
            // requests to the same port are what depth looks at), within the process's budget.
            if let Some(c) = inflight {
                if c.fd >= 0 && (reported || take_budget(tgid, false, 0)) {
                    let key = ((tgid as u64) << 32) | c.fd as u32 as u64;
                    let _ = OUT_FIRST.insert(&key, &OutConn { ts_ns: now_ns(), ..c }, 0);
                }
            }
        }
        return 0;
    }
    if old != TCP_SYN_SENT || (new != TCP_ESTABLISHED && new != TCP_CLOSE) {
        return 0;
    }
    // SAFETY: value copied out immediately.
    let Some(v) = (unsafe { CONNECTING.get(&sk) }).copied() else { return 0 };
    let _ = CONNECTING.remove(&sk);
    let tgid = v as u32;
    // SAFETY: offsets from the tracepoint format.
    let (family, dport, d4, d6) = unsafe {
        (
            ctx.read_at::<u16>(tp::STATE_FAMILY.offset).unwrap_or(0),
            ctx.read_at::<u16>(tp::STATE_DPORT.offset).unwrap_or(0),
            ctx.read_at::<[u8; 4]>(tp::STATE_DADDR.offset).unwrap_or([0; 4]),
            ctx.read_at::<[u8; 16]>(tp::STATE_DADDR_V6.offset).unwrap_or([0; 16]),
        )
    };
    let ok = new == TCP_ESTABLISHED;
    proc_update(tgid, |p| if ok { p.successes += 1 } else { p.failures += 1 });
    if v >> 32 == 0 {
        return 0;
    }
    match EVENTS.reserve::<ProcEvent>(0) {
        Some(mut e) => {
            // Softirq context: the identity is the connecting task's, not `current`.
            let ev = ProcEvent {
                hdr: EventHeader { kind: EventKind::ProcOutcome as u32, _pad: 0, ts_ns: now_ns() },
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

const TCP_LISTEN: i32 = 10;

/// sock:inet_sock_set_state — keeps `TCP_PORTS` (the XDP program's listening-port filter) a
/// superset of the local ports in use: a socket entering LISTEN, SYN_SENT (when its port is
/// already bound) or ESTABLISHED marks its local port. An active open gets its port only after
/// SYN_SENT, so its SYN-ACK or RST can arrive before the mark: the XDP program never uses the
/// filter for SYN-ACK and RST segments. Attached with the inbound program whenever the filter is on, independent of the
/// outbound hooks.
#[tracepoint]
pub fn tp_sock_ports(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from sock/inet_sock_set_state/format (checked at load).
    let (new, sport, proto) = unsafe {
        (
            ctx.read_at::<i32>(tp::STATE_NEW.offset).unwrap_or(0),
            ctx.read_at::<u16>(tp::STATE_SPORT.offset).unwrap_or(0),
            ctx.read_at::<u16>(tp::STATE_PROTOCOL.offset).unwrap_or(0),
        )
    };
    if proto != 6 || sport == 0 || (new != TCP_LISTEN && new != TCP_SYN_SENT && new != TCP_ESTABLISHED) {
        return 0;
    }
    if let Some(ports) = crate::maps::TCP_PORTS.get_ptr_mut(0) {
        // SAFETY: the single array value, valid for this run; a u16 index is in bounds of the
        // 65,536 bytes; a plain byte store cannot race another CPU's store into a wrong state.
        unsafe { *(ports as *mut u8).add(sport as usize) = 1 };
    }
    0
}

