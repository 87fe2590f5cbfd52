//! Every BPF map scanwatch uses, with its key, value, bound and the reason for the bound.
//! The loader may shrink or grow `max_entries` from configuration before loading.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use scanwatch_common::{
    BlockEntry, FcSlot, TCP_PORT_BYTES, Fingerprint, FpKey, FpValue, Probe, FIRST_CONTACT_SLOTS, KNOWN_WORDS, SUSPECT_WORDS, ProcConfig, ProcState, SrcEntry, SrcKey, XdpConfig, SRC_WAYS, DEFAULT_MAX_FINGERPRINTS,
    DEFAULT_MAX_PROCS, DEFAULT_MAX_SOURCES, DEFAULT_RINGBUF_BYTES, BLOCKLIST_ENTRIES, RAW_SOCKS_ENTRIES, CONNECTING_ENTRIES, HONEYPORT_WORDS,
    FWD_RINGBUF_BYTES, IFACE_MODES_ENTRIES, LOCAL_ADDRS_ENTRIES, OutPairKey, OUT_PAIRS_ENTRIES, UDP_PEER_BYTES,
    UDP_PEER_ENTRIES,
};

/// Per remote source: `SrcEntry` (address + `SrcState`, 880 bytes) in a set-associative table
/// of `SRC_WAYS` ways (`SRC_SETS` sets, set by the loader from `xdp.max_sources`), indexed by
/// the source hash the program computes anyway: a lookup is a few inlined array reads and
/// 16-byte compares instead of the kernel's hash-table call chain. A new source takes a free way
/// or the set's least recently seen source (a random-source flood evicts old sources instead of
/// failing inserts). 16,384 entries ≈ 14 MiB. Evictions = `new_sources` − live entries.
/// The agent reads it in batches (BPF_MAP_LOOKUP_BATCH), not one syscall per source.
#[map]
pub static SOURCES: Array<SrcEntry> = Array::with_max_entries(DEFAULT_MAX_SOURCES, 0);

/// One byte per set of SOURCES (eight per word), set to 1 when a source is admitted to the set
/// and never cleared: a set stays occupied once used. A byte store, not a bit OR: two CPUs
/// admitting sources to neighbouring sets cannot lose each other's mark (no atomics here). The
/// agent reads only the occupied sets, so a sweep of a large, mostly empty table costs what its
/// sources do, not what its size does. The loader sizes it to the sets (default 4,096 sets =
/// 512 words).
#[map]
pub static SRC_OCCUPIED: Array<u64> = Array::with_max_entries(DEFAULT_MAX_SOURCES / SRC_WAYS / 8, 0);

/// (source, fingerprint hash) → fingerprint and counts. LRU, 8,192 entries ≈ 0.6 MiB; each
/// source keeps at most `FP_PER_SOURCE` hashes, so a flood cannot grow it faster than SOURCES.
#[map]
pub static FINGERPRINTS: LruHashMap<FpKey, FpValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FINGERPRINTS, 0);

/// Immediate events (honeyport, threshold, new fingerprint, process activity). 1 MiB holds
/// ~10,000 records; a full buffer is counted in `events_dropped` / `proc_events_dropped`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Per-CPU new-fingerprint event budget: [start of the current `FP_BUDGET_WINDOW_NS` window,
/// events sent in it]. A random-source flood admits a new source (and a new fingerprint) per
/// repeated spoofed address; past `XdpConfig::fp_event_budget` those events are shed (counted)
/// so the ring buffer keeps room for threshold and honeyport events and the agent's time for
/// its sweeps.
#[map]
pub static FP_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Global outcome counters, one `[u64; stat::N]` per CPU (a single lookup per packet).
#[map]
pub static STATS: PerCpuArray<[u64; scanwatch_common::stat::N as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// Runtime XDP settings, index 0, written by the loader (thresholds, window, feature flags).
#[map]
pub static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Runtime settings of the process hooks, index 0 (the agent's own tgid).
#[map]
pub static PROC_CONFIG: Array<ProcConfig> = Array::with_max_entries(1, 0);

/// Honeyports as a bitmap: index = proto_slot * 1024 + port / 64 (proto_slot 0 = TCP, 1 = UDP),
/// bit = port % 64. 2,048 × u64 = 16 KiB covers every port of both protocols; an array lookup is
/// inlined by the verifier, so the check costs a few instructions per probe.
#[map]
pub static HONEYPORTS: Array<u64> = Array::with_max_entries(HONEYPORT_WORDS, 0);

/// Opt-in response: sources to drop (value = reason + packets/bytes dropped). Bounded at 4,096
/// by design: the agent only blocks confirmed scanners, expires entries and evicts the
/// lowest-confidence / oldest one when `response.max_blocked` is reached.
#[map]
pub static BLOCKLIST: HashMap<SrcKey, BlockEntry> = HashMap::with_max_entries(BLOCKLIST_ENTRIES, 0);

/// Per process (tgid) outbound counters. LRU, 4,096 processes.
#[map]
pub static PROCS: LruHashMap<u32, ProcState> = LruHashMap::with_max_entries(DEFAULT_MAX_PROCS, 0);

/// Processes that opened raw (AF_INET/AF_INET6 SOCK_RAW) or packet (AF_PACKET) sockets:
/// tgid → number of such sockets. Their sendto/sendmsg payloads are parsed as probes.
#[map]
pub static RAW_SOCKS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(RAW_SOCKS_ENTRIES, 0);

/// Connecting TCP sockets: kernel socket address → tgid that called connect() (low 32 bits)
/// and bit 32 set when its connect was reported (a connect to a pair reported inside the pair
/// window is not, and neither is its outcome), so the outcome (SYN_SENT → ESTABLISHED / CLOSE,
/// seen in softirq context) is attributed to the process. 16,384 in-flight connects.
#[map]
pub static CONNECTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CONNECTING_ENTRIES, 0);

/// (process, destination, port, protocol) pairs reported recently → when (ns). A send or
/// connect to a pair reported inside `ProcConfig::pair_window_ns` is counted in the process's
/// `ProcState::repeats` instead of becoming an event. LRU, `OUT_PAIRS_ENTRIES` (1.5 MiB): an
/// evicted pair is reported again, never lost.
#[map]
pub static OUT_PAIRS: LruHashMap<OutPairKey, u64> = LruHashMap::with_max_entries(OUT_PAIRS_ENTRIES, 0);

/// Recent inbound UDP peers (remote address and port of datagrams to a local socket), one epoch
/// byte per hashed slot (`scanwatch_common::udp_peer_slot`): written by the XDP program, read by
/// the sendto hook to tell a server's replies from probes. A hash collision can only make a
/// probe look like a reply (1 MiB slots: ~1 % at 10,000 active peers).
#[map]
pub static UDP_PEERS: Array<[u8; UDP_PEER_BYTES]> = Array::with_max_entries(UDP_PEER_ENTRIES, 0);

/// Outbound TCP connections awaiting their first write: (tgid << 32 | fd) → the connect's
/// destination and time. Filled when a connect() enters SYN_SENT, emptied by the first write /
/// send on the descriptor. LRU, `OUT_FIRST_ENTRIES`.
#[map]
pub static OUT_FIRST: LruHashMap<u64, scanwatch_common::OutConn> =
    LruHashMap::with_max_entries(scanwatch_common::OUT_FIRST_ENTRIES, 0);

/// What the XDP program learned about one packet. Classification fills it; one
/// `update_source` call applies it (a single call site keeps the verifier's work linear).
pub struct Obs {
    /// This packet's probe.
    pub cur: Probe,
    /// The source's first probe, replayed from the first-contact table when it is admitted.
    pub prior: Probe,
    pub has_prior: u8,
    /// Set when the packet was held in the first-contact table (no state created).
    pub held: u8,
    pub honey: u8,
    pub has_fp: u8,
    /// `DEFER_*`: work done only once the source is admitted (socket lookup, fingerprint).
    pub deferred: u8,
    pub flags: u8,
    /// Not for this host (gateway / mirror mode): no socket lookup; the agent's reply tracker
    /// judges it. Set for every packet, before classification.
    pub fwd: u8,
    pub fp: Fingerprint,
    /// This CPU's clock cache (`coarse_ns_cached`), kept across packets: the jiffies value of
    /// the last coarse-clock read, and that read.
    pub clk_jiffies: u64,
    pub clk_ns: u64,
    /// `addr_hash` of the packet's source, 0 until known (`Obs::source_hash`).
    pub src_hash: u32,
    /// The source is already marked in the suspected-ACK-scanner filter (the fast path saw it).
    pub suspected: u8,
}

/// Per-packet scratch space: keeps the observation and the fingerprint record off the 512-byte
/// BPF stack (the call chain of the XDP program would not fit otherwise).
pub struct Scratch {
    pub obs: Obs,
    pub fpv: FpValue,
    /// The runtime settings with the socket lookup off, for a forwarded packet (gateway /
    /// mirror mode): classification then runs exactly as it does with the lookup disabled.
    pub fwd_cfg: XdpConfig,
}

/// One `Scratch` per CPU, overwritten by every packet.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// First-contact table: a source's first scan-shaped packet is recorded here (direct-mapped by
/// source hash, a colliding source overwrites the slot) and replayed into SOURCES when a second
/// one arrives. A random-source flood therefore costs one 32-byte store per packet, never a
/// 1.1 KiB LRU insert. Fixed 32,768 slots (1 MiB). Memory-mappable: the agent reads the held
/// probes (distributed scans of one probe per source) without a syscall per slot.
#[map]
pub static FIRST_CONTACT: Array<FcSlot> = Array::with_max_entries(FIRST_CONTACT_SLOTS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` map flag.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// "May have state" filter: one bit per source hash, set when a source is admitted to SOURCES.
/// A clear bit skips the SOURCES lookup for a source that cannot be there; a stale set bit
/// (evicted source, hash collision) costs one lookup miss. 1 Mi bits = 128 KiB.
#[map]
pub static KNOWN_SOURCES: Array<u64> = Array::with_max_entries(KNOWN_WORDS, 0);

/// Sources caught sending orphan segments (bare ACK, FIN/ACK, RST, SYN-ACK with no socket): one
/// bit per source hash. Their bare ACKs always get the socket lookup; everyone else's bare ACKs
/// (the commonest inbound packet of a busy server) take the fast path, one in `ACK_SAMPLE`
/// excepted, which is how a new ACK scanner is caught. Cleared by the agent every 10 minutes.
/// 65,536 bits = 8 KiB.
#[map]
pub static SUSPECT_SOURCES: Array<u64> = Array::with_max_entries(SUSPECT_WORDS, 0);

/// Inbound connections to an open port awaiting their first client payload (key: `conn_hash`
/// of the 4-tuple; value unused). Inserted by the SYN's socket lookup (admitted sources only),
/// removed by the first data segment, FIN or RST. LRU: SYNs that never complete a handshake are
/// evicted by newer ones. 16,384 entries ≈ 1 MiB with LRU overhead.
#[map]
pub static CONN_FIRST: LruHashMap<u32, u32> = LruHashMap::with_max_entries(scanwatch_common::CONN_FIRST_ENTRIES, 0);

/// "May await its first payload" filter over `conn_hash` (one bit per hash, 32 KiB): the
/// established-data fast path tests one bit; only a set bit sends the segment to the full path
/// (a stale bit — evicted entry, collision — costs one `CONN_FIRST` miss and is cleared then).
#[map]
pub static PENDING_CONNS: Array<u64> = Array::with_max_entries(scanwatch_common::PENDING_WORDS, 0);

/// Local TCP ports that may have a socket: one byte per port (index 0 holds all 65,536), set
/// by the agent from /proc/net/tcp{,6} at start and by `tp_sock_ports` whenever a socket starts
/// listening or connecting. A SYN or orphan segment to a port whose byte is 0 cannot match any
/// socket, so the XDP program skips the socket lookup for it (`cfgflag::PORT_FILTER`). Bytes,
/// not bits: the kernel and the agent set them without read-modify-write races. Never cleared
/// while the agent runs (a stale byte costs one lookup). 64 KiB; memory-mappable so the agent
/// sets single bytes.
#[map]
pub static TCP_PORTS: Array<[u8; TCP_PORT_BYTES]> = Array::with_max_entries(1, BPF_F_MMAPABLE);


/// The host's own addresses (and broadcast addresses), written by the agent at start and kept
/// current: key = IPv4-mapped/IPv6 address, value unused. Read only on interfaces in gateway
/// mode: a destination not in it is forwarded traffic. 1,024 addresses.
#[map]
pub static LOCAL_ADDRS: HashMap<SrcKey, u32> = HashMap::with_max_entries(LOCAL_ADDRS_ENTRIES, 0);

/// Interfaces in gateway or mirror mode: ifindex → `ifmode::*` (absent: host). Read only when
/// `cfgflag::FORWARDED` is set. 64 interfaces.
#[map]
pub static IFACE_MODES: HashMap<u32, u32> = HashMap::with_max_entries(IFACE_MODES_ENTRIES, 0);

/// Packets not for this host (`ForwardedEvent`, 184 bytes) for the agent's reply tracker. Its
/// own ring, so forwarded traffic cannot crowd out the immediate events. 1 MiB ≈ 5,600
/// records; a full ring is counted in `forwarded_records_dropped`.
#[map]
pub static FWD_EVENTS: RingBuf = RingBuf::with_byte_size(FWD_RINGBUF_BYTES, 0);

/// The replay's batch header (`scanwatch_replay`), copied here by the program from the start of
/// the test-run buffer before it moves `data` past it, and (last word) the index of the frame
/// the next `scanwatch_replay_step` runs. Per CPU: one batch runs at a time per CPU. Never
/// touched by the live program.
#[map]
pub static REPLAY_LENS: PerCpuArray<[u32; scanwatch_common::REPLAY_HDR_LEN / 4 + 1]> = PerCpuArray::with_max_entries(1, 0);

/// Tail-call table of the replay's batch programs: slot 0 = `scanwatch_replay_step` (set by the
/// replay after loading it).
#[map]
pub static REPLAY_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
