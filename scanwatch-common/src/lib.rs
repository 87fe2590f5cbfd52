//! Types shared between the scanwatch kernel programs and the userspace agent.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, uses explicit padding, never
//! `bool`, and has its size asserted at compile time so a layout drift fails the build.
#![no_std]

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Map and program names (the loader looks them up by these names).
// ---------------------------------------------------------------------------------------------
pub const MAP_SOURCES: &str = "SOURCES";
/// One byte per set of SOURCES (eight per u64 word), non-zero once the set held a source: the
/// agent reads only those sets.
pub const MAP_SRC_OCCUPIED: &str = "SRC_OCCUPIED";
pub const MAP_FINGERPRINTS: &str = "FINGERPRINTS";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_HONEYPORTS: &str = "HONEYPORTS";
pub const MAP_PROCS: &str = "PROCS";
pub const MAP_BLOCKLIST: &str = "BLOCKLIST";
pub const MAP_FIRST_CONTACT: &str = "FIRST_CONTACT";
pub const MAP_KNOWN: &str = "KNOWN_SOURCES";
pub const MAP_SUSPECT: &str = "SUSPECT_SOURCES";
pub const MAP_CONN_FIRST: &str = "CONN_FIRST";
pub const MAP_PENDING_CONNS: &str = "PENDING_CONNS";
pub const MAP_TCP_PORTS: &str = "TCP_PORTS";
pub const MAP_LOCAL_ADDRS: &str = "LOCAL_ADDRS";
pub const MAP_IFACE_MODES: &str = "IFACE_MODES";
pub const MAP_FWD_EVENTS: &str = "FWD_EVENTS";

pub const PROG_XDP: &str = "scanwatch_xdp";
pub const PROG_TP_CONNECT: &str = "tp_enter_connect";
pub const PROG_TP_CONNECT_EXIT: &str = "tp_exit_connect";
pub const PROG_TP_SENDTO: &str = "tp_enter_sendto";
pub const PROG_TP_SENDMSG: &str = "tp_enter_sendmsg";
pub const PROG_TP_SENDMMSG: &str = "tp_enter_sendmmsg";
pub const PROG_TP_SOCKET: &str = "tp_enter_socket";
pub const PROG_TP_SOCK_STATE: &str = "tp_inet_sock_set_state";
pub const PROG_KP_CONNECT: &str = "kp_connect";
pub const PROG_TP_SOCK_PORTS: &str = "tp_sock_ports";
pub const PROG_TP_WRITE: &str = "tp_enter_write";

/// Default map sizes; the loader may override `max_entries` from config before load.
pub const DEFAULT_MAX_SOURCES: u32 = 16_384;
pub const DEFAULT_MAX_FINGERPRINTS: u32 = 8_192;
pub const DEFAULT_MAX_PROCS: u32 = 4_096;
pub const DEFAULT_RINGBUF_BYTES: u32 = 1 << 20;
/// Upper bounds on the configurable sizes (`xdp.max_sources` ...), checked by the config: past
/// these the maps cost more memory than a host agent should take (SOURCES at 1 Mi entries is
/// ~0.9 GiB).
pub const LIMIT_MAX_SOURCES: u32 = 1 << 20;
pub const LIMIT_MAX_FINGERPRINTS: u32 = 1 << 20;
pub const LIMIT_MAX_PROCS: u32 = 1 << 18;
pub const LIMIT_RINGBUF_BYTES: u32 = 1 << 28;
/// BLOCKLIST entries: the agent only blocks confirmed scanners and expires entries
/// (`response.max_blocked` may not exceed it).
pub const BLOCKLIST_ENTRIES: u32 = 4_096;
/// RAW_SOCKS entries: processes holding raw/packet sockets at once.
pub const RAW_SOCKS_ENTRIES: u32 = 1_024;
/// CONNECTING entries: TCP connects in flight whose outcome is still to be attributed.
pub const CONNECTING_ENTRIES: u32 = 16_384;
/// HONEYPORTS words: a bitmap of every port of TCP and UDP (2 × 65,536 bits).
pub const HONEYPORT_WORDS: u32 = 2_048;
/// First-contact table slots (direct-mapped by source hash; a power of two): 32,768 × 32 B
/// = 1 MiB, sized to stay within a server core's L2 cache (2 MiB measured 10 ns/packet slower
/// under a random-source flood here). A colliding new source overwrites the slot; nothing is
/// evicted or allocated. With 1,000 new sources a minute, a pending slot survives a minute with
/// 97 % probability.
pub const FIRST_CONTACT_SLOTS: u32 = 1 << 15;
/// Words of the "may have state" filter (one bit per source hash): 16,384 × 64 = 1 Mi bits.
pub const KNOWN_WORDS: u32 = 1 << 14;

// ---------------------------------------------------------------------------------------------
// Sketch geometry.
// ---------------------------------------------------------------------------------------------
/// HyperLogLog registers of the host sketches (2^8). Standard error 1.04/sqrt(256) = 6.5 %.
pub const HLL_P: u32 = 8;
pub const HLL_REGS: usize = 1 << HLL_P;
/// HyperLogLog registers of the per-source port sketch (2^9): standard error 4.6 %, so the
/// ≤ 10 % error target holds beyond two standard deviations up to all 65,535 ports. Below
/// `SAMPLE_PORTS` distinct ports the exact sample is used instead.
pub const PORT_HLL_P: u32 = 9;
pub const PORT_HLL_REGS: usize = 1 << PORT_HLL_P;
/// Exact sample of the first distinct destination ports a source touched.
pub const SAMPLE_PORTS: usize = 16;
/// Short-window distinct-port bitmap (bits) used for the in-kernel threshold event.
pub const WIN_PORT_BITS: usize = 1024;
pub const WIN_HOST_BITS: usize = 256;
/// Distinct fingerprints remembered per source.
pub const FP_PER_SOURCE: usize = 4;
/// TCP option kinds remembered in order.
pub const FP_MAX_OPTS: usize = 12;

/// Declares a counter module: each counter's index and its name on one line, `N` (the array
/// length, with spare slots), and `NAMES` built from the same lines (spare slots are ""). A
/// duplicated index fails to compile.
macro_rules! counters {
    ($name:ident: $ty:ty, len $n:expr; $( $(#[$doc:meta])* $c:ident = $i:expr => $s:literal, )*) => {
        pub mod $name {
            $( $(#[$doc])* pub const $c: $ty = $i; )*
            pub const N: $ty = $n;
            pub const NAMES: [&str; $n as usize] = {
                let mut a = [""; $n as usize];
                $( assert!(a[$i as usize].is_empty(), "duplicate counter index"); a[$i as usize] = $s; )*
                a
            };
        }
    };
}


// ---------------------------------------------------------------------------------------------
// Per-source counters (index into `SrcState::counts`).
// ---------------------------------------------------------------------------------------------
counters! {
    cnt: usize, len 32;
    /// Packets that updated this source's state (SYNs, probes, ...).
    PACKETS = 0 => "packets",
    /// Pure SYN (no ACK) TCP segments.
    SYN = 1 => "syn",
    /// SYNs to a port with no listening socket (failure signal).
    SYN_CLOSED = 2 => "syn_closed",
    /// SYNs to a port with a listener.
    SYN_OPEN = 3 => "syn_open",
    NULL = 4 => "null",
    FIN = 5 => "fin",
    XMAS = 6 => "xmas",
    MAIMON = 7 => "maimon",
    /// Bare ACK with no payload and no matching socket (ACK scan / firewall mapping).
    ACK = 8 => "ack",
    SYNFIN = 9 => "synfin",
    FRAG_FIRST = 10 => "frag_first",
    FRAG_LATER = 11 => "frag_later",
    /// Source port 53 or 88 towards a different destination port.
    SRCPORT_TRICK = 12 => "srcport_trick",
    /// SYN whose TCP checksum is wrong (nmap --badsum).
    BADSUM = 13 => "badsum",
    /// SYN-ACK for which no local socket exists (zombie / backscatter).
    UNSOLICITED_SYNACK = 14 => "unsolicited_synack",
    /// RST for which no local socket exists.
    UNSOLICITED_RST = 15 => "unsolicited_rst",
    UDP = 16 => "udp",
    UDP_CLOSED = 17 => "udp_closed",
    ICMP_ECHO = 18 => "icmp_echo",
    HONEYPORT = 19 => "honeyport",
    /// Probes to closed ports of any kind (SYN_CLOSED + UDP_CLOSED + stealth to closed).
    FAILED = 20 => "failed",
    /// ARP who-has requests (on-link host discovery, e.g. `nmap -sn` on a LAN); gratuitous ARP
    /// and duplicate-address probes are not counted.
    ARP = 21 => "arp_who_has",
    /// TCP probes with a custom flag set carrying neither SYN, ACK nor RST (nmap --scanflags
    /// URGPSH, ...): no TCP stack sends these, NULL/FIN/Xmas excepted (counted apart).
    CUSTOM_FLAGS = 22 => "custom_flags",
    /// SCTP packets whose first chunk is an INIT (association set-up; nmap -sY): port probes.
    SCTP_INIT = 23 => "sctp_init",
    /// SCTP packets whose first chunk is a COOKIE ECHO (nmap -sZ): a legitimate peer sends one
    /// per INIT of its own, so those beyond the source's INITs are stealth probes.
    SCTP_COOKIE = 24 => "sctp_cookie_echo",
    /// Packets of an IP protocol other than TCP, UDP, ICMP/ICMPv6 and SCTP (nmap -sO sends one
    /// per protocol number); the protocols themselves are in `SrcState::protocols`.
    IP_PROTO = 25 => "ip_proto",
}

/// Key of per-source state: the remote address, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SrcKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SrcKey>() == 16);

impl SrcKey {
    /// The address as two native-endian words (as the XDP program holds it; `addr_hash` input).
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: [u8; 16] and [u64; 2] have the same size; any bit pattern is valid.
        unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(self.addr) }
    }
}

/// Ways of the per-source table (SOURCES): a source lives in one of `SRC_WAYS` consecutive slots
/// of its set, so a lookup is `SRC_WAYS` inlined array reads and 16-byte compares, and a new
/// source replaces the set's least recently seen one when the set is full.
pub const SRC_WAYS: u32 = 4;

/// Sets of a per-source table of (at most) `max_sources` entries (at least one).
#[inline(always)]
pub const fn src_sets(max_sources: u32) -> u32 {
    let s = max_sources / SRC_WAYS;
    if s == 0 { 1 } else { s }
}

/// The set of a source with `addr_hash` `h` in a table of `sets` sets. `seed` is chosen at
/// random when the program is loaded, so a sender who knows the hash cannot pick addresses that
/// share a set and push a scanner's state out with a handful of spoofed sources.
#[inline(always)]
pub const fn src_set(h: u32, sets: u32, seed: u32) -> u32 {
    // `h` is already mixed: one multiply spreads the seed over the high bits the range uses.
    let x = (h ^ seed).wrapping_mul(0x9e37_79b1);
    ((x as u64 * sets as u64) >> 32) as u32
}

/// One slot of SOURCES: the source's address (all zero: a free slot; `::` is never a source)
/// and its state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SrcEntry {
    pub key: SrcKey,
    pub state: SrcState,
}
const _: () = assert!(size_of::<SrcEntry>() == 16 + size_of::<SrcState>());

/// BLOCKLIST value: why the source is blocked and what the XDP program dropped from it since.
/// The counters are plain increments (no atomics on the bpf target): two CPUs dropping the same
/// source at once may lose a count, so they are a lower bound.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockEntry {
    /// Small code of the finding kind that caused the block (0 = added by an operator).
    pub reason: u32,
    pub _pad: u32,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}
const _: () = assert!(size_of::<BlockEntry>() == 24);

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcpflag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Per-remote-source state, kept in an LRU hash so a spoofed flood evicts old entries instead of
/// growing anything.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SrcState {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Start of the current short window (threshold events).
    pub win_start_ns: u64,
    pub counts: [u32; cnt::N],
    /// Distinct destination ports / hosts touched in the current short window.
    pub win_ports: u32,
    pub win_hosts: u32,
    /// Bit set of `thr::*` events already emitted in the current short window.
    pub emitted: u32,
    pub n_sample: u32,
    pub sample_ports: [u16; SAMPLE_PORTS],
    pub n_fp: u32,
    /// Tool hint of the last fingerprint (`tool::*`).
    pub tool_hint: u32,
    pub fp_hashes: [u32; FP_PER_SOURCE],
    pub win_port_bits: [u64; WIN_PORT_BITS / 64],
    pub win_host_bits: [u64; WIN_HOST_BITS / 64],
    /// Lifetime distinct destination ports (HyperLogLog registers).
    pub port_hll: [u8; PORT_HLL_REGS],
    /// Lifetime distinct destination hosts (HyperLogLog registers).
    pub host_hll: [u8; HLL_REGS],
    /// IP protocol numbers of the source's scan-shaped packets (bit n = protocol n; ARP is not
    /// an IP protocol and sets none): an IP-protocol scan (nmap -sO) sets one per probe.
    pub protocols: [u64; 4],
    /// The last probe's destination (`addr_fold32`) and port, valid per `memo` bits
    /// (`memo::*`): a repeat of the same host or port changes no bitmap, sketch or sample, so
    /// the kernel skips that work. Cleared with the window bitmaps.
    pub last_dst_fold: u32,
    pub last_dport: u16,
    pub memo: u16,
}
const _: () = assert!(size_of::<SrcState>() == 24 + cnt::N * 4 + 16 + 32 + 8 + 16 + 128 + 32 + 512 + 256 + 32 + 8);

/// `SrcState::memo` bits.
pub mod memo {
    pub const PORT: u16 = 1;
    pub const HOST: u16 = 2;
}

/// What one scan-shaped packet contributes to its source's state: the counters to bump and the
/// probe it represents. The XDP program builds one per packet; the first-contact table holds
/// one per not-yet-admitted source and replays it when the source is admitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// `addr_fold32` of the destination address.
    pub dst_fold: u32,
    pub sport: u16,
    pub dport: u16,
    /// Counter indices (`cnt::*`) to bump, `nb` of them.
    pub bumps: [u8; PROBE_BUMPS],
    pub nb: u8,
    /// `probe::*`.
    pub kind: u8,
    /// IP protocol number (`probe::PROTO_ARP` for ARP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Probe>() == 20);
/// Counters one packet can bump (SYN, SYN+FIN, bad checksum, closed, failed, honeyport).
pub const PROBE_BUMPS: usize = 6;

/// Probe kinds.
pub mod probe {
    pub const NONE: u8 = 0;
    /// A port probe: port and host fan-out.
    pub const PORT: u8 = 1;
    /// A portless probe (ICMP echo, ARP who-has): host fan-out only.
    pub const HOST: u8 = 2;
    /// Pseudo protocol number marking an ARP request (not an IP protocol).
    pub const PROTO_ARP: u8 = 0xfe;
}

/// One first-contact table slot (32 bytes: never straddles a cache line): the source address
/// (all zero = empty) and its first probe, with at most `FC_BUMPS` counters (a held probe bumps
/// at most three: its socket lookup and checksum are deferred, honeyport touches are not held).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FcSlot {
    pub addr: [u64; 2],
    pub dst_fold: u32,
    pub sport: u16,
    pub dport: u16,
    pub bumps: [u8; FC_BUMPS],
    pub nb: u8,
    pub kind: u8,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FcSlot>() == 32);
pub const FC_BUMPS: usize = 4;

/// 32-bit fold of an address (as two native-endian words), unmixed: a bijection on IPv4-mapped
/// addresses (only the last word varies). The host sketches mix it themselves.
#[inline(always)]
pub const fn addr_fold32(a: &[u64; 2]) -> u32 {
    ((a[1] >> 32) as u32)
        ^ (a[1] as u32).rotate_left(16)
        ^ ((a[0] >> 32) as u32).rotate_left(8)
        ^ (a[0] as u32).rotate_left(24)
}

/// Hash of a source address: its first-contact slot (low 15 bits) and known-source filter bit
/// (bits 12..32).
#[inline(always)]
pub const fn addr_hash(a: &[u64; 2]) -> u32 {
    mix32(addr_fold32(a))
}

/// Words of the "suspected of orphan-ACK probing" filter: 1,024 × 64 = 65,536 bits.
pub const SUSPECT_WORDS: u32 = 1 << 10;
/// Bare ACKs of unsuspected sources: one in this many still gets the socket lookup.
pub const ACK_SAMPLE: u64 = 16;

/// Word index and bit mask of a source hash in the suspect filter (low 16 bits of the hash).
#[inline(always)]
pub const fn suspect_bit(h: u32) -> (u32, u64) {
    ((h >> 6) & (SUSPECT_WORDS - 1), 1u64 << (h & 63))
}

/// Word index and bit mask of a source hash in the known-source filter (`KNOWN_WORDS` words).
#[inline(always)]
pub const fn known_bit(h: u32) -> (u32, u64) {
    let i = h >> 12;
    ((i >> 6) & (KNOWN_WORDS - 1), 1u64 << (i & 63))
}

/// Threshold event bits.
pub mod thr {
    pub const PORTS: u32 = 1;
    pub const HOSTS: u32 = 2;
}

/// Tool hints derived from facts a scanner cannot easily hide.
pub mod tool {
    pub const UNKNOWN: u32 = 0;
    pub const NMAP: u32 = 1;
    pub const MASSCAN: u32 = 2;
    pub const ZMAP: u32 = 3;
    pub const HPING3: u32 = 4;
    pub const UNICORNSCAN: u32 = 5;
    /// A full OS TCP stack (MSS + SACK + timestamps + window scale): connect() scanners and
    /// ordinary clients.
    pub const OS_STACK: u32 = 6;
    pub const NAMES: [&str; 7] =
        ["unknown", "nmap", "masscan", "zmap", "hping3", "unicornscan", "os-stack"];
    pub fn name(hint: u32) -> &'static str {
        NAMES.get(hint as usize).copied().unwrap_or("unknown")
    }
}

/// TCP/IP fingerprint of one SYN shape. The kernel fills the header fields, `raw_opts` /
/// `opt_len`, the hash and the tool hint; `parse_options` (userspace) decodes the options into
/// `opts`, `mss`, `wscale`, `sack_ok`, `timestamps`, `n_opts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub window: u16,
    pub mss: u16,
    pub ip_id: u16,
    pub ttl: u8,
    pub df: u8,
    pub wscale: u8,
    /// Number of entries used in `opts`.
    pub n_opts: u8,
    pub sack_ok: u8,
    pub timestamps: u8,
    pub opts: [u8; FP_MAX_OPTS],
    pub payload_len: u16,
    pub ip_version: u8,
    /// Bytes of TCP options (0..=40) in `raw_opts`.
    pub opt_len: u8,
    pub tool_hint: u32,
    /// Short hash of the stable fields (not TTL jitter, IP ID or timestamp values).
    pub hash: u32,
    pub raw_opts: [u8; 40],
}
const _: () = assert!(size_of::<Fingerprint>() == 76);

impl Default for Fingerprint {
    fn default() -> Self {
        Self {
            window: 0,
            mss: 0,
            ip_id: 0,
            ttl: 0,
            df: 0,
            wscale: 0,
            n_opts: 0,
            sack_ok: 0,
            timestamps: 0,
            opts: [0; FP_MAX_OPTS],
            payload_len: 0,
            ip_version: 0,
            opt_len: 0,
            tool_hint: 0,
            hash: 0,
            raw_opts: [0; 40],
        }
    }
}

impl Fingerprint {
    /// Decode `raw_opts[..opt_len]`: option kinds in order, MSS, window scale, SACK-permitted,
    /// timestamps. Returns false for a malformed option list (length 0/1 or overrunning).
    /// Also refines the tool hint: a full OS stack (MSS + SACK + timestamps or window scale).
    pub fn parse_options(&mut self) -> bool {
        let len = (self.opt_len as usize).min(self.raw_opts.len());
        let raw = self.raw_opts;
        let mut o = 0;
        let mut n = 0;
        let mut ok = true;
        while o < len {
            let k = raw[o];
            if n < FP_MAX_OPTS {
                self.opts[n] = k;
                n += 1;
            }
            if k == 0 {
                break;
            }
            if k == 1 {
                o += 1;
                continue;
            }
            if o + 1 >= len {
                ok = false;
                break;
            }
            let l = raw[o + 1] as usize;
            if l < 2 || o + l > len {
                ok = false;
                break;
            }
            match (k, l) {
                (2, 4) => self.mss = u16::from_be_bytes([raw[o + 2], raw[o + 3]]),
                (3, 3) => self.wscale = raw[o + 2],
                (4, 2) => self.sack_ok = 1,
                (8, 10) => self.timestamps = 1,
                _ => {}
            }
            o += l;
        }
        self.n_opts = n as u8;
        if self.tool_hint == tool::UNKNOWN
            && self.sack_ok != 0
            && self.mss != 0
            && (self.timestamps != 0 || self.wscale != 0)
        {
            self.tool_hint = tool::OS_STACK;
        }
        ok
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FpKey {
    pub src: SrcKey,
    pub hash: u32,
}
const _: () = assert!(size_of::<FpKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FpValue {
    pub fp: Fingerprint,
    pub count: u32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<FpValue>() == 96);

// ---------------------------------------------------------------------------------------------
// Runtime configuration: one entry in an array map, written by the loader.
// ---------------------------------------------------------------------------------------------
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XdpConfig {
    /// Short window for in-kernel threshold events.
    pub short_window_ns: u64,
    /// Distinct ports in the short window that emit a threshold event (0 = off).
    pub port_threshold: u32,
    /// Distinct hosts in the short window that emit a threshold event (0 = off).
    pub host_threshold: u32,
    /// `cfgflag::*`.
    pub flags: u32,
    /// Drop packets from sources in BLOCKLIST (opt-in response).
    pub enforce_blocklist: u32,
    /// New-fingerprint events each CPU may send per `FP_BUDGET_WINDOW_NS` (0 = no limit);
    /// beyond it they are counted in `stat::FP_EVENTS_SHED`.
    pub fp_event_budget: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<XdpConfig>() == 32);

/// Window of the per-CPU new-fingerprint event budget (`XdpConfig::fp_event_budget`): 100 ms.
pub const FP_BUDGET_WINDOW_NS: u64 = 100_000_000;

impl XdpConfig {
    /// The per-CPU, per-window budget for a whole-host rate of `per_sec` events/s over `cpus`
    /// CPUs (0 = no limit; a non-zero rate never rounds down to 0).
    pub const fn fp_budget_for(per_sec: u32, cpus: u32) -> u32 {
        if per_sec == 0 {
            return 0;
        }
        let windows_per_sec = (1_000_000_000 / FP_BUDGET_WINDOW_NS) as u32;
        let cpus = if cpus == 0 { 1 } else { cpus };
        let b = per_sec / windows_per_sec / cpus;
        if b == 0 { 1 } else { b }
    }
}

impl XdpConfig {
    pub const fn default_config() -> Self {
        Self {
            short_window_ns: 10_000_000_000,
            port_threshold: 25,
            host_threshold: 16,
            flags: cfgflag::LOOKUP_SOCKETS | cfgflag::VERIFY_CSUM | cfgflag::FIRST_CONTACT,
            enforce_blocklist: 0,
            fp_event_budget: 0,
            _pad: 0,
        }
    }
}

pub mod cfgflag {
    /// Look up the kernel's socket table to learn whether a probed port is open.
    pub const LOOKUP_SOCKETS: u32 = 1;
    /// Verify TCP checksums on SYNs (nmap --badsum detection).
    pub const VERIFY_CSUM: u32 = 2;
    /// Hold a source's first scan-shaped packet in the first-contact table and create its
    /// `SrcState` only from the second one (spoofed one-packet sources never cost an insert).
    pub const FIRST_CONTACT: u32 = 4;
    /// Skip the socket lookup for TCP ports on which no socket was ever seen (`TCP_PORTS`). Set
    /// by the agent only once the map is filled and its tracepoint attached.
    pub const PORT_FILTER: u32 = 8;
    /// Some interface is in gateway or mirror mode (`IFACE_MODES`): packets not for this host
    /// skip the socket lookup and go to the agent's reply tracker (`FWD_EVENTS`).
    pub const FORWARDED: u32 = 16;
}

/// Interface modes (values of `IFACE_MODES`, keyed by ifindex; absent = host).
pub mod ifmode {
    /// Every packet is for this host: the socket table tells outcomes.
    pub const HOST: u32 = 0;
    /// The host forwards: packets to addresses not in `LOCAL_ADDRS` are judged by their replies.
    pub const GATEWAY: u32 = 1;
    /// Promiscuous / SPAN port: nothing is for this host, every packet is judged by its replies.
    pub const MIRROR: u32 = 2;
}

/// `LOCAL_ADDRS` bound: the host's own (and broadcast) addresses.
pub const LOCAL_ADDRS_ENTRIES: u32 = 1024;
/// `IFACE_MODES` bound: interfaces in gateway / mirror mode.
pub const IFACE_MODES_ENTRIES: u32 = 64;
/// `FWD_EVENTS` ring size: ~5,600 `ForwardedEvent` records.
pub const FWD_RINGBUF_BYTES: u32 = 1 << 20;
/// Bytes of a forwarded packet copied into its record, from the Ethernet header: enough for
/// Ethernet + 2 VLAN tags + IPv6 + ICMPv6 + the quoted IPv6 header + ports (126), or a TCP
/// header with options behind an IPv4 header with options.
pub const FWD_SNAP: usize = 160;

/// `TCP_PORTS`: one byte per local TCP port, non-zero when a TCP socket may use it (listening,
/// or the local port of an outgoing connection). 64 KiB, one entry, memory-mappable.
pub const TCP_PORT_BYTES: usize = 65_536;

/// Outbound configuration (tracepoint programs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcConfig {
    /// The agent's own tgid: its activity is ignored.
    pub own_tgid: u32,
    /// Outbound events one process may send per `PROC_BUDGET_WINDOW_NS` (0 = no limit); the
    /// rest are counted in its `ProcState::shed` and reported by the agent's sweep.
    pub events_per_window: u32,
    /// A (process, destination, port, protocol) pair is reported once per this many ns; its
    /// repeats inside the window are counted in `ProcState::repeats` (0 = every send reported).
    pub pair_window_ns: u64,
}
const _: () = assert!(size_of::<ProcConfig>() == 16);

/// Window of the per-process outbound event budget (`ProcConfig::events_per_window`).
pub const PROC_BUDGET_WINDOW_NS: u64 = 100_000_000;
/// Default outbound events per process per second (10 per budget window of 100 ms each).
pub const DEFAULT_PROC_EVENTS_PER_SEC: u32 = 2_000;
/// Default pair window: a process's repeated sends to one destination and port are one event
/// per 30 s.
pub const DEFAULT_PAIR_WINDOW_NS: u64 = 30_000_000_000;
/// `OUT_PAIRS` entries (LRU): the (process, destination) pairs reported recently.
pub const OUT_PAIRS_ENTRIES: u32 = 65_536;

/// `OUT_PAIRS` key: one process's sends to one destination port over one protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutPairKey {
    pub tgid: u32,
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<OutPairKey>() == 24);

/// `UDP_PEERS`: one byte per hashed (remote address, remote port) of recent inbound UDP to a
/// local socket, holding the epoch it was last seen (`udp_peer_epoch`, 0 = never). A local
/// process's datagram to such a peer is a reply (a DNS server answering a client), not a probe.
/// 256 entries of 4 KiB = 1 MiB slots.
pub const UDP_PEER_ENTRIES: u32 = 256;
pub const UDP_PEER_BYTES: usize = 4096;
/// A peer seen within this many epochs (of 2^34 ns ≈ 17 s) is recent: 51–69 s.
pub const UDP_PEER_MAX_AGE: u8 = 3;

/// `UDP_PEERS` slot (entry, byte) of a remote address (16-byte mapped form) and port.
#[inline(always)]
pub const fn udp_peer_slot(addr: &[u64; 2], port: u16) -> (u32, usize) {
    let h = mix32(addr_fold32(addr) ^ (port as u32).wrapping_mul(0x9e37_79b9));
    (h >> 24, (h & 0xfff) as usize)
}

/// The epoch byte stored for a peer seen at `now_ns` (1..=128, never 0).
#[inline(always)]
pub const fn udp_peer_epoch(now_ns: u64) -> u8 {
    ((now_ns >> 34) & 0x7f) as u8 + 1
}

/// Whether a stored epoch byte is recent at `now_ns`.
#[inline(always)]
pub const fn udp_peer_recent(stored: u8, now_ns: u64) -> bool {
    stored != 0 && (udp_peer_epoch(now_ns).wrapping_sub(stored) & 0x7f) <= UDP_PEER_MAX_AGE
}

// ---------------------------------------------------------------------------------------------
// Global per-CPU counters (index into STATS).
// ---------------------------------------------------------------------------------------------
counters! {
    stat: u32, len 48;
    PACKETS = 0 => "packets",
    IPV4 = 1 => "ipv4",
    IPV6 = 2 => "ipv6",
    /// TCP segments that took the full path (the fast path counts `ESTABLISHED_FAST` and
    /// `ACK_FAST` instead).
    TCP = 3 => "tcp",
    UDP = 4 => "udp",
    ICMP = 5 => "icmp",
    SYN = 6 => "syn",
    OTHER_L3 = 7 => "other_l3",
    MAL_ETH = 8 => "malformed_eth",
    MAL_VLAN = 9 => "malformed_vlan",
    MAL_IPV4 = 10 => "malformed_ipv4",
    MAL_IPV4_IHL = 11 => "malformed_ipv4_ihl",
    MAL_IPV6 = 12 => "malformed_ipv6",
    MAL_IPV6_EXT = 13 => "malformed_ipv6_ext",
    MAL_TCP = 14 => "malformed_tcp",
    MAL_TCP_DOFF = 15 => "malformed_tcp_doff",
    MAL_TCP_OPTS = 16 => "malformed_tcp_opts",
    MAL_UDP = 17 => "malformed_udp",
    MAL_ICMP = 18 => "malformed_icmp",
    EVENTS = 19 => "events",
    EVENTS_DROPPED = 20 => "events_dropped",
    NEW_SOURCES = 21 => "new_sources",
    SOURCE_INSERT_FAILED = 22 => "source_insert_failed",
    NEW_FINGERPRINTS = 23 => "new_fingerprints",
    BLOCKED = 24 => "blocked",
    PROC_EVENTS = 25 => "proc_events",
    PROC_EVENTS_DROPPED = 26 => "proc_events_dropped",
    ESTABLISHED_FAST = 27 => "established_fast",
    HONEYPORT = 28 => "honeyport",
    ARP = 29 => "arp",
    MAL_ARP = 30 => "malformed_arp",
    /// Scan-shaped packets from sources without state, held in the first-contact table.
    FIRST_CONTACT = 31 => "first_contact",
    /// Bare ACKs (no payload) of sources not suspected of ACK scanning that skipped the socket
    /// lookup (one in `ACK_SAMPLE` is looked up anyway).
    ACK_FAST = 32 => "bare_ack_fast",
    /// Bare ACKs of unsuspected sources seen by the fast path (drives the 1-in-`ACK_SAMPLE`).
    ACK_SEEN = 33 => "bare_ack_seen",
    /// First client payloads of local processes' outbound TCP connections sent to userspace
    /// (`ProcPayloadEvent`).
    PROC_PAYLOADS = 34 => "proc_payloads",
    /// Outbound first payloads whose user buffer could not be read (not sent).
    PROC_PAYLOAD_READ_FAILED = 35 => "proc_payload_read_failed",
    /// SCTP packets (common header read).
    SCTP = 36 => "sctp",
    /// SCTP packets too short for the common header and a chunk header, or whose first chunk's
    /// length is under 4 (or under 20 for an INIT).
    MAL_SCTP = 37 => "malformed_sctp",
    /// Packets of an IP protocol other than TCP, UDP, ICMP/ICMPv6 and SCTP.
    OTHER_PROTO = 38 => "other_proto",
    /// New-fingerprint events not sent because the per-CPU budget was spent (a flood of new
    /// sources); the fingerprints are still in FINGERPRINTS for the sweep. Kept at the last
    /// slot so counters added after 33 do not move it.
    FP_EVENTS_SHED = 39 => "fingerprint_events_shed",
    /// Packets not for this host (gateway / mirror mode): no socket lookup, judged by replies.
    FORWARDED = 40 => "forwarded",
    /// `ForwardedEvent` records handed to the agent's reply tracker.
    FWD_RECORDS = 41 => "forwarded_records",
    /// `ForwardedEvent` records lost to a full `FWD_EVENTS` ring.
    FWD_DROPPED = 42 => "forwarded_records_dropped",
    /// Outbound sends / connects to a (process, destination, port) pair already reported inside
    /// the pair window: counted in the process's `ProcState`, no event.
    PROC_REPEATS = 43 => "proc_sends_aggregated",
    /// Outbound events not sent because the process's event budget was spent (counted in its
    /// `ProcState::shed`, reported by the sweep).
    PROC_SHED = 44 => "proc_events_shed",
    /// Unconnected UDP sends to a peer that sent to this host first (replies, not probes).
    PROC_UDP_REPLIES = 45 => "proc_udp_replies",
}

// ---------------------------------------------------------------------------------------------
// Ring-buffer records: every record starts with `EventHeader`, userspace dispatches on `kind`.
// ---------------------------------------------------------------------------------------------
/// Ring-buffer record kinds, one numbering for every program. Reserved ranges: 1–9 inbound (XDP),
/// 10–19 process hooks, 20–31 future kernel sources; 0 is never written (an all-zero record is
/// garbage).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A honeyport was touched (`InboundEvent`).
    Honeyport = 1,
    /// A source's short-window distinct ports/hosts crossed the threshold (`InboundEvent`).
    Threshold = 2,
    /// A source's SYN carried a fingerprint not seen from it before (`InboundEvent`).
    NewFingerprint = 3,
    /// The first client payload of an inbound connection to an open port, or its close
    /// without data (`PayloadEvent`).
    Payload = 4,
    /// connect() entry (`ProcEvent`).
    ProcConnect = 10,
    /// sendto/sendmsg/sendmmsg on a UDP, raw or packet socket (`ProcEvent`).
    ProcSendto = 11,
    /// A raw or packet socket was created (`ProcEvent`).
    ProcSocket = 12,
    /// SYN_SENT → ESTABLISHED / CLOSE (`ProcEvent`).
    ProcOutcome = 13,
    /// connect() returned an immediate error (`ProcEvent`).
    ProcConnectResult = 14,
    /// The first bytes a local process wrote on an outbound TCP connection (`ProcPayloadEvent`).
    ProcPayload = 15,
    /// A packet not for this host (gateway / mirror mode), for the reply tracker
    /// (`ForwardedEvent`, on the `FWD_EVENTS` ring).
    Forwarded = 20,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Honeyport,
        EventKind::Threshold,
        EventKind::NewFingerprint,
        EventKind::Payload,
        EventKind::ProcConnect,
        EventKind::ProcSendto,
        EventKind::ProcSocket,
        EventKind::ProcOutcome,
        EventKind::ProcConnectResult,
        EventKind::ProcPayload,
        EventKind::Forwarded,
    ];

    /// The kind of a record header's `kind` field, if it is one.
    pub fn from_u32(v: u32) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| *k as u32 == v)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// Inbound event from XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InboundEvent {
    pub hdr: EventHeader,
    pub src: SrcKey,
    pub dst: SrcKey,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub _pad: u16,
    /// THRESHOLD: `thr::*` bit; HONEYPORT: 0; NEW_FINGERPRINT: fingerprint count for source.
    pub detail: u32,
    pub win_ports: u32,
    pub win_hosts: u32,
    pub fp: Fingerprint,
}
const _: () = assert!(size_of::<InboundEvent>() == 144);

/// Outbound event from the process hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// AF_INET / AF_INET6 / AF_PACKET of the destination or socket.
    pub family: u32,
    /// SOCK_STREAM / SOCK_DGRAM / SOCK_RAW (socket creation) or probe protocol (sendto).
    pub sock_type: u32,
    pub dst: SrcKey,
    pub dport: u16,
    /// IPPROTO_* of the probe (raw packets) or 0.
    pub proto: u8,
    pub tcp_flags: u8,
    /// `outcome::*` for PROC_OUTCOME, return value for PROC_CONNECT_RESULT, fd otherwise.
    pub value: i32,
    /// Number of messages (sendmmsg), 1 otherwise.
    pub count: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ProcEvent>() == 88);

/// A packet not for this host, its first `FWD_SNAP` bytes from the Ethernet header (the agent
/// decodes them as it decodes a capture's frames).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForwardedEvent {
    pub hdr: EventHeader,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// Length of the whole frame.
    pub frame_len: u16,
    /// Bytes of `data` that are valid (≤ `FWD_SNAP`).
    pub cap_len: u16,
    pub data: [u8; FWD_SNAP],
}
const _: () = assert!(size_of::<ForwardedEvent>() == 184);

pub mod outcome {
    pub const ESTABLISHED: i32 = 1;
    /// SYN_SENT -> CLOSE: refused (RST) or timed out.
    pub const FAILED: i32 = 2;
}


// ---------------------------------------------------------------------------------------------
// Per-process state (outbound), LRU keyed by tgid.
// ---------------------------------------------------------------------------------------------
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcState {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub attempts: u32,
    pub failures: u32,
    pub successes: u32,
    pub raw_probes: u32,
    pub raw_sockets: u32,
    pub uid: u32,
    /// Start of the current event-budget window and the events sent in it.
    pub budget_start_ns: u64,
    pub budget_used: u32,
    /// Events not sent because the budget was spent (monotonic; the agent reports the growth).
    pub shed: u32,
    /// Connects and raw probes to a pair already reported inside the pair window (monotonic;
    /// repeated UDP datagrams are counted in `stat::PROC_REPEATS` only).
    pub repeats: u32,
    /// Of `shed`, the raw-socket probes.
    pub shed_raw: u32,
}
const _: () = assert!(size_of::<ProcState>() == 64);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are plain-old-data `#[repr(C)]` structs with explicit padding.
    unsafe impl aya::Pod for SrcKey {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for SrcState {}
    unsafe impl aya::Pod for SrcEntry {}
    unsafe impl aya::Pod for FcSlot {}
    unsafe impl aya::Pod for FpKey {}
    unsafe impl aya::Pod for FpValue {}
    unsafe impl aya::Pod for XdpConfig {}
    unsafe impl aya::Pod for ProcConfig {}
    unsafe impl aya::Pod for ProcState {}
    unsafe impl aya::Pod for OutConn {}
    unsafe impl aya::Pod for OutPairKey {}
}

// ---------------------------------------------------------------------------------------------
// Pure helpers used on both sides (kept branch-light so the verifier accepts them).
// ---------------------------------------------------------------------------------------------

/// 32-bit mix (murmur3 finaliser); used for sketches on both sides.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// HyperLogLog register index and rank for a 32-bit item in a sketch of 2^`p` registers.
#[inline(always)]
pub const fn hll_slot_p(item: u32, p: u32) -> (usize, u8) {
    let h = mix32(item ^ 0x9e37_79b9);
    let idx = (h >> (32 - p)) as usize;
    let rest = (h << p) | (1 << (p - 1));
    (idx & ((1 << p) - 1), (rest.leading_zeros() + 1) as u8)
}

/// Slot in a host sketch (`HLL_REGS` registers).
#[inline(always)]
pub const fn hll_slot(item: u32) -> (usize, u8) {
    hll_slot_p(item, HLL_P)
}

/// Slot in a port sketch (`PORT_HLL_REGS` registers).
#[inline(always)]
pub const fn port_hll_slot(item: u32) -> (usize, u8) {
    hll_slot_p(item, PORT_HLL_P)
}

/// Fold an IPv4-mapped or IPv6 address to 32 bits for sketches.
#[inline(always)]
pub const fn addr_fold(a: &[u8; 16]) -> u32 {
    let w0 = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    let w1 = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
    let w2 = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
    let w3 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    mix32(w0 ^ mix32(w1 ^ mix32(w2 ^ mix32(w3))))
}

/// Likely initial TTL (32, 64, 128, 255) for an observed TTL.
pub const fn initial_ttl(ttl: u8) -> u8 {
    if ttl <= 32 {
        32
    } else if ttl <= 64 {
        64
    } else if ttl <= 128 {
        128
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hll_slot_in_range_and_rank_bounded() {
        for i in 0..100_000u32 {
            let (idx, rank) = hll_slot(i);
            assert!(idx < HLL_REGS);
            assert!((1..=(32 - HLL_P + 1) as u8).contains(&rank), "rank {rank}");
        }
    }

    #[test]
    fn parse_linux_and_malformed_options() {
        let mut fp = Fingerprint::default();
        let opts = [2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7];
        fp.raw_opts[..opts.len()].copy_from_slice(&opts);
        fp.opt_len = opts.len() as u8;
        assert!(fp.parse_options());
        assert_eq!((fp.mss, fp.wscale, fp.sack_ok, fp.timestamps, fp.n_opts), (1460, 7, 1, 1, 5));
        assert_eq!(&fp.opts[..5], &[2, 4, 8, 1, 3]);
        assert_eq!(fp.tool_hint, tool::OS_STACK);
        let mut bad = Fingerprint::default();
        bad.raw_opts[..4].copy_from_slice(&[2, 40, 5, 0xb4]);
        bad.opt_len = 4;
        assert!(!bad.parse_options());
    }

    #[test]
    fn initial_ttl_buckets() {
        assert_eq!(initial_ttl(37), 64);
        assert_eq!(initial_ttl(64), 64);
        assert_eq!(initial_ttl(120), 128);
        assert_eq!(initial_ttl(250), 255);
        assert_eq!(initial_ttl(1), 32);
    }

    #[test]
    fn addr_fold_distinguishes() {
        let mut a = [0u8; 16];
        let b = a;
        a[15] = 1;
        assert_ne!(addr_fold(&a), addr_fold(&b));
    }
}

// ---------------------------------------------------------------------------------------------
// Tracepoint layouts the outbound programs read.
// ---------------------------------------------------------------------------------------------

/// Every tracepoint field a program reads, with the offset and size it reads it at. The programs
/// take their offsets from here; before attaching, the agent checks each one against the running
/// kernel's `events/<category>/<event>/format` file and refuses a moved or missing field by name.
/// Known to match kernels 4.17 (syscall tracepoints with 8-byte argument slots) through 6.18;
/// `sock:inet_sock_set_state` has had this layout since 4.16.
pub mod tp {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Field {
        pub category: &'static str,
        pub event: &'static str,
        pub name: &'static str,
        pub offset: usize,
        /// Bytes the program reads (at most the field's size).
        pub size: usize,
    }

    const fn f(category: &'static str, event: &'static str, name: &'static str, offset: usize, size: usize) -> Field {
        Field { category, event, name, offset, size }
    }

    pub const CONNECT_FD: Field = f("syscalls", "sys_enter_connect", "fd", 16, 8);
    pub const CONNECT_ADDR: Field = f("syscalls", "sys_enter_connect", "uservaddr", 24, 8);
    pub const CONNECT_RET: Field = f("syscalls", "sys_exit_connect", "ret", 16, 8);
    pub const SOCKET_FAMILY: Field = f("syscalls", "sys_enter_socket", "family", 16, 8);
    pub const SOCKET_TYPE: Field = f("syscalls", "sys_enter_socket", "type", 24, 8);
    pub const SOCKET_PROTOCOL: Field = f("syscalls", "sys_enter_socket", "protocol", 32, 8);
    pub const SENDTO_BUFF: Field = f("syscalls", "sys_enter_sendto", "buff", 24, 8);
    pub const SENDTO_LEN: Field = f("syscalls", "sys_enter_sendto", "len", 32, 8);
    pub const SENDTO_ADDR: Field = f("syscalls", "sys_enter_sendto", "addr", 48, 8);
    pub const SENDMSG_MSG: Field = f("syscalls", "sys_enter_sendmsg", "msg", 24, 8);
    pub const SENDMMSG_MSG: Field = f("syscalls", "sys_enter_sendmmsg", "mmsg", 24, 8);
    pub const SENDMMSG_VLEN: Field = f("syscalls", "sys_enter_sendmmsg", "vlen", 32, 8);
    pub const STATE_SKADDR: Field = f("sock", "inet_sock_set_state", "skaddr", 8, 8);
    pub const STATE_OLD: Field = f("sock", "inet_sock_set_state", "oldstate", 16, 4);
    pub const STATE_NEW: Field = f("sock", "inet_sock_set_state", "newstate", 20, 4);
    pub const STATE_SPORT: Field = f("sock", "inet_sock_set_state", "sport", 24, 2);
    pub const STATE_DPORT: Field = f("sock", "inet_sock_set_state", "dport", 26, 2);
    pub const STATE_FAMILY: Field = f("sock", "inet_sock_set_state", "family", 28, 2);
    pub const STATE_PROTOCOL: Field = f("sock", "inet_sock_set_state", "protocol", 30, 2);
    pub const STATE_DADDR: Field = f("sock", "inet_sock_set_state", "daddr", 36, 4);
    pub const STATE_DADDR_V6: Field = f("sock", "inet_sock_set_state", "daddr_v6", 56, 16);
    pub const SENDTO_FD: Field = f("syscalls", "sys_enter_sendto", "fd", 16, 8);
    pub const WRITE_FD: Field = f("syscalls", "sys_enter_write", "fd", 16, 8);
    pub const WRITE_BUF: Field = f("syscalls", "sys_enter_write", "buf", 24, 8);
    pub const WRITE_COUNT: Field = f("syscalls", "sys_enter_write", "count", 32, 8);

    pub const ALL: [Field; 25] = [
        CONNECT_FD, CONNECT_ADDR, CONNECT_RET, SOCKET_FAMILY, SOCKET_TYPE, SOCKET_PROTOCOL,
        SENDTO_BUFF, SENDTO_LEN, SENDTO_ADDR, SENDMSG_MSG, SENDMMSG_MSG, SENDMMSG_VLEN, STATE_SKADDR, STATE_OLD,
        STATE_NEW, STATE_SPORT, STATE_DPORT, STATE_FAMILY, STATE_PROTOCOL, STATE_DADDR, STATE_DADDR_V6,
        SENDTO_FD, WRITE_FD, WRITE_BUF, WRITE_COUNT,
    ];
}

// ---------------------------------------------------------------------------------------------
// Protocol depth: the first client payload of inbound connections to open ports.
// ---------------------------------------------------------------------------------------------
/// Bytes of payload in one `PayloadEvent`.
pub const PAYLOAD_SAMPLE: usize = 256;
/// A TLS handshake record (first byte 0x16) is sent in up to this many consecutive events
/// (chunk 0..): a ClientHello is usually 200-600 bytes, and JA4 needs all of it.
pub const PAYLOAD_TLS_CHUNKS: u32 = 4;
/// Connections awaiting their first payload (LRU; key: `conn_hash`, value: unused).
pub const CONN_FIRST_ENTRIES: u32 = 16384;
/// Words of the "awaiting first payload" filter: 4,096 × 64 = 262,144 bits = 32 KiB.
pub const PENDING_WORDS: u32 = 1 << 12;

/// Hash of a connection's 4-tuple as XDP sees it inbound (addresses in `SrcKey` word form).
#[inline(always)]
pub const fn conn_hash(src: &[u64; 2], dst: &[u64; 2], sport: u16, dport: u16) -> u32 {
    mix32(addr_fold32(src) ^ addr_fold32(dst).rotate_left(16) ^ (((sport as u32) << 16) | dport as u32))
}

/// Word index and bit mask of a connection hash in the pending filter.
#[inline(always)]
pub const fn pending_bit(h: u32) -> (u32, u64) {
    ((h >> 6) & (PENDING_WORDS - 1), 1u64 << (h & 63))
}

/// `EventKind::Payload`: one chunk of a connection's first client payload, or its close without
/// data (`closed` = 1, no data).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadEvent {
    pub hdr: EventHeader,
    pub src: SrcKey,
    pub dst: SrcKey,
    pub sport: u16,
    pub dport: u16,
    /// The payload's length in its segment.
    pub payload_len: u32,
    /// Valid bytes in `data`.
    pub sample_len: u16,
    /// Chunk index: `data` holds payload bytes from `chunk * PAYLOAD_SAMPLE`.
    pub chunk: u8,
    /// 1: the client closed (FIN, or RST with ACK) without sending data.
    pub closed: u8,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_SAMPLE],
}
const _: () = assert!(size_of::<PayloadEvent>() == 320);

// ---------------------------------------------------------------------------------------------
// Protocol depth, outbound: the first bytes a local process writes on its TCP connections.
// ---------------------------------------------------------------------------------------------
/// Bytes of payload in one `ProcPayloadEvent` (a whole ClientHello of the common clients).
pub const PROC_PAYLOAD_SAMPLE: usize = 512;
/// Outbound TCP connections awaiting their first write (LRU; key: tgid << 32 | fd).
pub const OUT_FIRST_ENTRIES: u32 = 16_384;
/// A connection's first write is sampled only within this long of its connect() (a stale entry
/// of a closed socket whose descriptor number was reused is ignored).
pub const OUT_FIRST_MAX_AGE_NS: u64 = 60_000_000_000;

/// An outbound TCP connection awaiting its first write (`OUT_FIRST` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OutConn {
    pub dst: SrcKey,
    pub ts_ns: u64,
    pub fd: i32,
    pub dport: u16,
    pub family: u16,
}
const _: () = assert!(size_of::<OutConn>() == 32);

/// `EventKind::ProcPayload`: the first bytes a local process wrote (write / send) on an outbound
/// TCP connection it opened with connect().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcPayloadEvent {
    pub hdr: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    pub family: u32,
    pub dport: u16,
    pub _pad: u16,
    pub dst: SrcKey,
    /// Length of the write.
    pub len: u32,
    /// Valid bytes in `data`.
    pub sample_len: u32,
    pub data: [u8; PROC_PAYLOAD_SAMPLE],
}
const _: () = assert!(size_of::<ProcPayloadEvent>() == 80 + PROC_PAYLOAD_SAMPLE);

// ---------------------------------------------------------------------------------------------
// Replay batches (`scanwatch replay`): many frames per BPF_PROG_TEST_RUN.
// ---------------------------------------------------------------------------------------------
/// The replay's batch entry point: the XDP program run on each frame of a packed buffer.
pub const PROG_REPLAY: &str = "scanwatch_replay";
/// One frame of a batch: the detector, then a tail call to itself for the next frame.
pub const PROG_REPLAY_STEP: &str = "scanwatch_replay_step";
/// Per-CPU copy of a batch's header plus the index of the next frame (written by the batch
/// programs themselves).
pub const MAP_REPLAY_LENS: &str = "REPLAY_LENS";
/// The tail-call table of the batch programs: slot 0 = `PROG_REPLAY_STEP` (set by the replay).
pub const MAP_REPLAY_PROGS: &str = "REPLAY_PROGS";
/// Most frames in one batch: one tail call per frame, and the kernel allows 33 tail calls per
/// run (MAX_TAIL_CALL_CNT); 32 leaves one spare.
pub const REPLAY_MAX_FRAMES: usize = 32;
/// Batch header: `n` (u16 LE), 2 reserved bytes, then `REPLAY_MAX_FRAMES` frame lengths (u16
/// LE, chronological order; unused slots 0). The frames follow in REVERSE order (the
/// chronologically first frame last, ending at the buffer's end), so the program only ever
/// moves `data` back and shrinks the tail: growing the tail would zero the bytes it uncovers.
pub const REPLAY_HDR_LEN: usize = 4 + 2 * REPLAY_MAX_FRAMES;
/// Largest batch buffer (header included) kept in the linear part of the test-run buffer:
/// BPF_PROG_TEST_RUN (net/bpf/test_run.c, `bpf_prog_test_run_xdp`) puts at most
/// PAGE_SIZE - XDP_PACKET_HEADROOM (256) - SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) (320
/// on x86-64) bytes in the linear buffer and the rest into fragments, which packet pointers
/// cannot reach. 4096 - 256 - 320 = 3520; the program checks the length it got and refuses a
/// batch that is not wholly linear (the replay then runs those frames one by one).
pub const REPLAY_MAX_BYTES: usize = 3520;
/// Return value of a batch run: `REPLAY_RET_DONE + k`, k = frames run (the program stops after a
/// frame that wrote to the event ring, so the replay can stamp the events with that frame's
/// time; it resubmits the rest, as it does if a tail call fails). `REPLAY_RET_BAD`
/// (`XDP_ABORTED`): malformed batch or no step program in `REPLAY_PROGS`, nothing run.
pub const REPLAY_RET_DONE: u32 = 0x1000;
pub const REPLAY_RET_BAD: u32 = 0;
