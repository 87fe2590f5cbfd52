//! Tier (b): the real XDP program, loaded into the kernel, driven with crafted packets through
//! BPF_PROG_TEST_RUN; assertions on its maps, counters and ring-buffer events.
//! Needs root (CAP_BPF); without it every test fails loudly.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use scanwatch::{
    source::live::{maps, table::SourceTable},
    vocab::ip_to_key,
    loader::{self, LoadOptions},
    packet::{PacketSpec, L4, ACK, FIN, PSH, RST, SYN, URG},
    sketch::hll_estimate,
};
use aya::maps::Array;
use scanwatch_common::{addr_hash, cfgflag, cnt, stat, EventKind, tool, FcSlot, FpKey, FpValue, InboundEvent, SrcKey, SrcState, XdpConfig};

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("v4"))
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"))
}

struct Prog {
    ebpf: Ebpf,
    sources: SourceTable,
    /// Every run on one CPU: the program's per-CPU state (statistics, the bare-ACK sample
    /// counter) would otherwise depend on where the scheduler put the test thread.
    _cpu: scanwatch::replay::source::PinnedCpu,
}

impl Prog {
    fn new() -> Self {
        Self::with(LoadOptions { honeyports_tcp: vec![31337, 4444], honeyports_udp: vec![31337], ..LoadOptions::default() })
    }

    fn with(opts: LoadOptions) -> Self {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "BPF_PROG_TEST_RUN tests need root (CAP_BPF); run them via `cargo xtask test` as root"
        );
        let mut ebpf = loader::load(&opts).expect("load eBPF object");
        loader::xdp_program(&mut ebpf).expect("XDP program passes the verifier");
        let sources = maps::take_sources(&mut ebpf, &opts).expect("map SOURCES");
        Self { ebpf, sources, _cpu: scanwatch::replay::source::PinnedCpu::here() }
    }

    fn run(&mut self, pkt: &[u8]) -> u32 {
        let p: &mut Xdp = self.ebpf.program_mut(scanwatch_common::PROG_XDP).expect("prog").try_into().expect("xdp");
        p.test_run(TestRunOptions { data_in: Some(pkt), repeat: 1, ..TestRunOptions::default() })
            .expect("test_run")
            .return_value
    }

    fn run_all(&mut self, pkts: impl IntoIterator<Item = Vec<u8>>) {
        for p in pkts {
            assert_eq!(self.run(&p), 2, "every packet must pass (XDP_PASS)");
        }
    }

    fn source(&self, ip: IpAddr) -> Option<SrcState> {
        self.sources.get(&ip_to_key(ip))
    }

    fn n_sources(&self) -> usize {
        self.sources.live()
    }

    fn stats(&self) -> Vec<u64> {
        let m: PerCpuArray<&MapData, [u64; stat::N as usize]> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("STATS")).expect("percpu");
        let vals = m.get(&0, 0).expect("stats");
        let mut out = vec![0u64; stat::N as usize];
        for v in vals.iter() {
            for (o, x) in out.iter_mut().zip(v.iter()) {
                *o += x;
            }
        }
        out
    }

    fn events(&mut self) -> Vec<InboundEvent> {
        let mut rb = RingBuf::try_from(self.ebpf.map_mut("EVENTS").expect("EVENTS")).expect("ringbuf");
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            assert!(item.len() >= std::mem::size_of::<InboundEvent>());
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<InboundEvent>()) });
        }
        out
    }

    fn count(&self, ip: IpAddr, c: usize) -> u32 {
        self.source(ip).map(|s| s.counts[c]).unwrap_or(0)
    }

    /// The first-contact slot this address hashes to.
    fn slot(&self, ip: IpAddr) -> FcSlot {
        let key = ip_to_key(ip);
        let w: [u64; 2] = unsafe { std::mem::transmute(key.addr) };
        let m: Array<&MapData, FcSlot> = Array::try_from(self.ebpf.map("FIRST_CONTACT").expect("map")).expect("array");
        m.get(&(addr_hash(&w) & (scanwatch_common::FIRST_CONTACT_SLOTS - 1)), 0).expect("slot")
    }

    /// Give `ip` per-source state without touching the counters a test looks at: two ICMP
    /// echo requests (its first is held in the first-contact table, the second admits it).
    fn admit(&mut self, ip: IpAddr) {
        let echo = PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(ip, v4("10.250.0.1"), 0, 0, 0) }.build();
        self.run_all([echo.clone(), echo]);
        assert!(self.source(ip).is_some(), "{ip} admitted");
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Per-source times are CLOCK_MONOTONIC at tick resolution: the program reads the coarse clock
/// once per tick per CPU (a jiffies test otherwise), so a stamp trails the clock by at most a few
/// ticks and advances as time does — a cache that never refreshed, or refreshed from the wrong
/// clock, fails here.
#[test]
fn per_source_times_follow_the_monotonic_clock() {
    let mut p = Prog::new();
    let ip = v4("10.71.0.9");
    p.admit(ip);
    let (l1, m1) = (p.source(ip).expect("admitted").last_seen_ns, monotonic_ns());
    assert!(l1 <= m1 && m1 - l1 < 50_000_000, "last_seen {l1} vs CLOCK_MONOTONIC {m1}");
    std::thread::sleep(std::time::Duration::from_millis(150));
    p.admit(ip);
    let (l2, m2) = (p.source(ip).expect("still there").last_seen_ns, monotonic_ns());
    assert!(l2 <= m2 && m2 - l2 < 50_000_000, "last_seen {l2} vs CLOCK_MONOTONIC {m2}");
    assert!(l2 - l1 >= 120_000_000, "150 ms later the stamp moved only {} ns", l2 - l1);
}

/// A port with no listener in this namespace (bind, note the port, close).
fn closed_port() -> u16 {
    TcpListener::bind("0.0.0.0:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn syn_creates_source_and_counts_closed_vs_open() {
    let mut p = Prog::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = listener.local_addr().expect("addr").port();
    let closed = closed_port();
    let src = v4("127.0.0.9");
    // The first SYN is held in the first-contact table; the second admits the source and the
    // first is replayed (counted as a SYN with unknown outcome: its socket lookup was skipped).
    p.run_all([PacketSpec::nmap_syn(src, v4("127.0.0.1"), 7).build()]);
    assert!(p.source(src).is_none(), "one packet creates no per-source state");
    p.run_all([
        PacketSpec::nmap_syn(src, v4("127.0.0.1"), open).build(),
        PacketSpec::nmap_syn(src, v4("127.0.0.1"), closed).build(),
    ]);
    let s = p.source(src).expect("source entry created");
    assert_eq!(s.counts[cnt::SYN], 3);
    assert_eq!(s.counts[cnt::SYN_OPEN], 1, "listener found via socket lookup");
    assert_eq!(s.counts[cnt::SYN_CLOSED], 1);
    assert_eq!(s.counts[cnt::FAILED], 1);
    assert_eq!(&s.sample_ports[..3], &[7, open, closed], "the held probe's port is replayed first");
    assert!(s.first_seen_ns > 0 && s.last_seen_ns >= s.first_seen_ns);
    let st = p.stats();
    assert_eq!(st[stat::SYN as usize], 3);
    assert_eq!(st[stat::FIRST_CONTACT as usize], 1);
    assert_eq!(st[stat::NEW_SOURCES as usize], 1);
}

#[test]
fn first_contact_tier_holds_one_packet_sources_and_replays_on_admission() {
    let mut p = Prog::new();
    let d = v4("10.10.0.2");
    let x = v4("10.10.0.1");
    let port = closed_port();
    // A NULL probe from a new source: held, not counted per source.
    p.run_all([PacketSpec::tcp(x, d, 40000, port, 0).build()]);
    assert!(p.source(x).is_none());
    let slot = p.slot(x);
    let w: [u64; 2] = unsafe { std::mem::transmute(ip_to_key(x).addr) };
    assert_eq!(slot.addr, w, "slot holds the source");
    assert_eq!((slot.dport, slot.nb, slot.bumps[0]), (port, 1, cnt::NULL as u8));
    // Its second packet (a SYN to another closed port) admits it; the NULL probe is replayed.
    let port2 = closed_port();
    p.run_all([PacketSpec::nmap_syn(x, d, port2).build()]);
    let s = p.source(x).expect("admitted on second packet");
    assert_eq!((s.counts[cnt::PACKETS], s.counts[cnt::NULL], s.counts[cnt::SYN]), (2, 1, 1));
    assert_eq!(s.counts[cnt::SYN_CLOSED], 1);
    assert_eq!(s.counts[cnt::FAILED], 1, "only the admitted packet was looked up");
    assert_eq!(s.n_sample, 2);
    assert_eq!(p.slot(x).addr, [0, 0], "slot released on admission");

    // A random-source flood of one SYN per source never allocates per-source state.
    let before = p.stats();
    p.run_all((0..2000u32).map(|i| {
        PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::from(0x6500_0000 + i * 7919)), d, (i % 60000) as u16 + 1).build()
    }));
    let st = p.stats();
    assert_eq!(st[stat::FIRST_CONTACT as usize] - before[stat::FIRST_CONTACT as usize], 2000);
    assert_eq!(st[stat::NEW_SOURCES as usize], before[stat::NEW_SOURCES as usize], "no inserts");
    assert_eq!(p.n_sources(), 1);
    assert_eq!(st[stat::SYN as usize] - before[stat::SYN as usize], 2000, "every SYN still counted globally");

    // A known source is never held again, even after its slot was taken by others.
    p.run_all([PacketSpec::nmap_syn(x, d, 9).build()]);
    assert_eq!(p.count(x, cnt::SYN), 2);

    // A honeyport touch from a new source is admitted at once (immediate event).
    let h = v4("10.10.0.77");
    p.events();
    p.run_all([PacketSpec::linux_syn(h, d, 40001, 4444).build()]);
    assert_eq!(p.count(h, cnt::HONEYPORT), 1);
    assert!(p.events().iter().any(|e| e.hdr.kind == EventKind::Honeyport as u32 && e.src == ip_to_key(h)));

    // With the tier switched off, the first packet creates state (every packet counts).
    let full = XdpConfig::default_config();
    loader::write_config(&mut p.ebpf, &XdpConfig { flags: full.flags & !cfgflag::FIRST_CONTACT, ..full })
        .expect("config");
    let y = v4("10.10.0.3");
    p.run_all([PacketSpec::nmap_syn(y, d, 80).build()]);
    assert_eq!(p.count(y, cnt::SYN), 1);
}

#[test]
fn established_data_does_not_touch_source_state() {
    let mut p = Prog::new();
    let mut spec = PacketSpec::tcp(v4("10.1.0.1"), v4("10.1.0.2"), 443, 50000, ACK | PSH);
    if let L4::Tcp { payload, .. } = &mut spec.l4 {
        *payload = vec![1; 100];
    }
    p.run_all([spec.build()]);
    assert!(p.source(v4("10.1.0.1")).is_none());
    let st = p.stats();
    assert_eq!(st[stat::ESTABLISHED_FAST as usize], 1);
    assert_eq!(st[stat::TCP as usize], 0, "the fast path counts only established_fast");
}

#[test]
fn distinct_ports_hosts_sample_and_threshold_event() {
    let mut p = Prog::new();
    let src = v4("10.2.0.1");
    p.run_all((1..=300u16).map(|port| PacketSpec::nmap_syn(src, v4("10.2.0.2"), port).build()));
    let s = p.source(src).expect("source");
    let est = hll_estimate(&s.port_hll);
    assert!((est - 300.0).abs() / 300.0 < 0.10, "distinct ports estimate {est}");
    assert!(hll_estimate(&s.host_hll).round() as u32 == 1);
    assert_eq!(s.n_sample, 16);
    assert_eq!(&s.sample_ports[..4], &[1, 2, 3, 4]);
    assert!(s.win_ports >= 250 && s.win_ports <= 300, "window distinct ports {}", s.win_ports);
    let ev = p.events();
    let thr: Vec<_> = ev.iter().filter(|e| e.hdr.kind == EventKind::Threshold as u32).collect();
    assert_eq!(thr.len(), 1, "exactly one threshold event per window");
    assert_eq!(thr[0].detail & scanwatch_common::thr::PORTS, scanwatch_common::thr::PORTS);
    assert_eq!(thr[0].win_ports, XdpConfig::default_config().port_threshold);
    // Horizontal: one port over many hosts.
    let src2 = v4("10.2.0.3");
    p.run_all((1..=200u8).map(|h| PacketSpec::nmap_syn(src2, v4(&format!("10.3.0.{h}")), 80).build()));
    let s2 = p.source(src2).expect("source");
    let hosts = hll_estimate(&s2.host_hll);
    assert!((hosts - 200.0).abs() / 200.0 < 0.10, "distinct hosts {hosts}");
    assert!(hll_estimate(&s2.port_hll).round() as u32 == 1);
    assert!(p.events().iter().any(|e| e.hdr.kind == EventKind::Threshold as u32 && e.detail & scanwatch_common::thr::HOSTS != 0));
}

#[test]
fn stealth_flag_shapes_are_counted_by_type() {
    let mut p = Prog::new();
    let src = v4("10.4.0.1");
    let d = v4("10.4.0.2");
    let port = closed_port();
    p.admit(src);
    for (flags, c) in [
        (0u8, cnt::NULL),
        (FIN, cnt::FIN),
        (FIN | PSH | URG, cnt::XMAS),
        (FIN | ACK, cnt::MAIMON),
        (ACK, cnt::ACK),
        (SYN | FIN, cnt::SYNFIN),
        // nmap --scanflags URGPSH / PSH: neither SYN, ACK nor RST.
        (URG | PSH, cnt::CUSTOM_FLAGS),
        (PSH, cnt::CUSTOM_FLAGS),
    ] {
        let before = p.count(src, c);
        p.run_all([PacketSpec::tcp(src, d, 40000, port, flags).build()]);
        assert_eq!(p.count(src, c), before + 1, "flags {flags:#04x} → counter {}", cnt::NAMES[c]);
    }
    // Unsolicited SYN-ACK and RST (no local socket): zombie / backscatter.
    p.run_all([
        PacketSpec::tcp(src, d, 80, port, SYN | ACK).build(),
        PacketSpec::tcp(src, d, 80, port, RST).build(),
    ]);
    assert_eq!(p.count(src, cnt::UNSOLICITED_SYNACK), 1);
    assert_eq!(p.count(src, cnt::UNSOLICITED_RST), 1);
}

#[test]
fn ipv6_with_extension_headers_and_vlan_tags() {
    let mut p = Prog::new();
    let src6 = v6("fd11::1");
    let mut spec = PacketSpec::linux_syn(src6, v6("fd11::2"), 40000, 8080);
    spec.v6_ext = vec![0, 60, 43];
    p.run_all([spec.build(), spec.build()]);
    assert_eq!(p.count(src6, cnt::SYN), 2, "SYNs behind hop-by-hop, dst-opts and routing headers");
    let src = v4("10.5.0.1");
    for tags in [vec![10u16], vec![100, 200]] {
        let mut s = PacketSpec::nmap_syn(src, v4("10.5.0.2"), 81);
        s.vlans = tags;
        p.run_all([s.build()]);
    }
    assert_eq!(p.count(src, cnt::SYN), 2, "802.1Q and QinQ tagged SYNs");
    assert_eq!(p.stats()[stat::IPV6 as usize], 2);
}

#[test]
fn fragments_srcport_tricks_badsum_udp_icmp_honeyport() {
    let mut p = Prog::new();
    let src = v4("10.6.0.1");
    let d = v4("10.6.0.2");
    let mut first = PacketSpec::nmap_syn(src, d, 80);
    first.frag = Some((true, 0));
    let mut later = PacketSpec::nmap_syn(src, d, 80);
    later.frag = Some((false, 3));
    let mut p53 = PacketSpec::nmap_syn(src, d, 443);
    if let L4::Tcp { sport, .. } = &mut p53.l4 {
        *sport = 53;
    }
    let mut bad = PacketSpec::nmap_syn(src, d, 25);
    bad.bad_checksum = true;
    let udp = PacketSpec { l4: L4::Udp { sport: 5000, dport: closed_port(), payload: vec![0; 8] }, ..PacketSpec::tcp(src, d, 0, 0, 0) };
    let echo = PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(src, d, 0, 0, 0) };
    p.run_all([first.build(), later.build(), p53.build(), bad.build(), udp.build(), echo.build()]);
    let s = p.source(src).expect("source");
    assert_eq!(s.counts[cnt::FRAG_FIRST], 1);
    assert_eq!(s.counts[cnt::FRAG_LATER], 1);
    assert_eq!(s.counts[cnt::SRCPORT_TRICK], 1);
    assert_eq!(s.counts[cnt::BADSUM], 1, "only the corrupted SYN has a bad checksum");
    assert_eq!(s.counts[cnt::UDP_CLOSED], 1);
    assert_eq!(s.counts[cnt::ICMP_ECHO], 1);
    // Honeyport: immediate event on first touch.
    p.events();
    p.run_all([PacketSpec::linux_syn(v4("10.6.0.9"), d, 40001, 31337).build()]);
    let ev = p.events();
    assert!(ev.iter().any(|e| e.hdr.kind == EventKind::Honeyport as u32 && e.dport == 31337), "honeyport event");
    assert_eq!(p.count(v4("10.6.0.9"), cnt::HONEYPORT), 1);
}

#[test]
fn fingerprints_and_tool_hints() {
    let mut p = Prog::new();
    let d = v4("10.7.0.2");
    // nmap: window 1024, MSS only.
    p.run_all([PacketSpec::nmap_syn(v4("10.7.0.1"), d, 22).build()]);
    // zmap: IP ID 54321.
    let mut z = PacketSpec::tcp(v4("10.7.0.3"), d, 40000, 80, SYN);
    z.ip_id = 54321;
    if let L4::Tcp { window, options, .. } = &mut z.l4 {
        *window = 65535;
        *options = vec![2, 4, 5, 0xb4];
    }
    // masscan: TTL 255, IP ID = (dst ^ dport ^ seq) & 0xffff.
    let mut m = PacketSpec::nmap_syn(v4("10.7.0.4"), d, 443);
    m.ttl = 255;
    let seq = 0xdead_beefu32;
    if let L4::Tcp { seq: s, .. } = &mut m.l4 {
        *s = seq;
    }
    let dst_u32 = u32::from(Ipv4Addr::new(10, 7, 0, 2));
    m.ip_id = ((dst_u32 ^ 443 ^ seq) & 0xffff) as u16;
    // hping3: window 512, no options.
    let mut h = PacketSpec::tcp(v4("10.7.0.5"), d, 2000, 80, SYN);
    if let L4::Tcp { window, .. } = &mut h.l4 {
        *window = 512;
    }
    let linux = PacketSpec::linux_syn(v4("10.7.0.6"), d, 40000, 80);
    p.run_all([z.build(), m.build(), h.build(), linux.build()]);
    // A source's first SYN is held in the first-contact table; its fingerprint is taken and
    // registered from the second SYN on (a spoofed flood source never sends one).
    assert!(p.events().iter().all(|e| e.hdr.kind != EventKind::NewFingerprint as u32));
    p.run_all([PacketSpec::nmap_syn(v4("10.7.0.1"), d, 22).build(), z.build(), m.build(), h.build(), linux.build()]);
    for (ip, hint) in [
        ("10.7.0.1", tool::NMAP),
        ("10.7.0.3", tool::ZMAP),
        ("10.7.0.4", tool::MASSCAN),
        ("10.7.0.5", tool::HPING3),
        ("10.7.0.6", tool::UNKNOWN), // refined to os-stack in userspace (below)
    ] {
        let s = p.source(v4(ip)).expect("source");
        assert_eq!(tool::name(s.tool_hint), tool::name(hint), "tool hint for {ip}");
        assert_eq!(s.n_fp, 1);
    }
    let ev = p.events();
    let fps: Vec<_> = ev.iter().filter(|e| e.hdr.kind == EventKind::NewFingerprint as u32).collect();
    assert_eq!(fps.len(), 5, "one new-fingerprint event per source");
    let mut lin = fps.iter().find(|e| e.src == ip_to_key(v4("10.7.0.6"))).expect("linux fp").fp;
    assert!(lin.parse_options(), "options decode");
    assert_eq!(lin.tool_hint, tool::OS_STACK);
    assert_eq!((lin.mss, lin.wscale, lin.sack_ok, lin.timestamps), (1460, 7, 1, 1));
    assert_eq!(&lin.opts[..5], &[2, 4, 8, 1, 3]);
    // Same shape, different TTL/IP ID: same fingerprint hash (no new event).
    let mut again = PacketSpec::nmap_syn(v4("10.7.0.1"), d, 23);
    again.ttl = 50;
    again.ip_id = 999;
    p.run_all([again.build()]);
    assert!(p.events().iter().all(|e| e.hdr.kind != EventKind::NewFingerprint as u32));
    // A second, different shape from the same source is kept as well.
    p.run_all([PacketSpec::linux_syn(v4("10.7.0.1"), d, 40000, 24).build()]);
    assert_eq!(p.source(v4("10.7.0.1")).expect("source").n_fp, 2);
}

#[test]
fn malformed_packets_pass_and_are_counted_by_reason() {
    let mut p = Prog::new();
    let base = PacketSpec::linux_syn(v4("10.8.0.1"), v4("10.8.0.2"), 1000, 80).build();
    // (A frame shorter than the 14-byte Ethernet header cannot be fed: BPF_PROG_TEST_RUN
    // itself rejects it with EINVAL, as no driver delivers one.)
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (base[..14 + 10].to_vec(), stat::MAL_IPV4),
        ({
            let mut b = base.clone();
            b[14] = 0x44;
            b
        }, stat::MAL_IPV4_IHL),
        (base[..14 + 20 + 10].to_vec(), stat::MAL_TCP),
        ({
            let mut b = base.clone();
            b[14 + 20 + 12] = 0x30;
            b
        }, stat::MAL_TCP_DOFF),
        ({
            let mut b = base.clone();
            b[14 + 20 + 20 + 1] = 0; // MSS option length 0
            b
        }, stat::MAL_TCP_OPTS),
        ({
            let mut b = base.clone();
            b[14 + 20 + 20 + 1] = 1; // option length 1
            b
        }, stat::MAL_TCP_OPTS),
        ({
            let mut b = base.clone();
            b[14 + 20 + 20 + 1] = 40; // overruns the header
            b
        }, stat::MAL_TCP_OPTS),
        ({
            let mut b = base.clone();
            b[12] = 0x81;
            b[13] = 0x00;
            b.truncate(15);
            b
        }, stat::MAL_VLAN),
    ];
    let v6pkt = PacketSpec::linux_syn(v6("fd12::1"), v6("fd12::2"), 1, 2).build();
    let mut ext = PacketSpec::linux_syn(v6("fd12::1"), v6("fd12::2"), 1, 2);
    ext.v6_ext = vec![0];
    let ext = ext.build();
    let mut cases = cases;
    cases.push((v6pkt[..14 + 30].to_vec(), stat::MAL_IPV6));
    cases.push((ext[..14 + 40 + 1].to_vec(), stat::MAL_IPV6_EXT));
    for (pkt, reason) in cases {
        let before = p.stats()[reason as usize];
        assert_eq!(p.run(&pkt), 2, "malformed packet ({}) must pass", stat::NAMES[reason as usize]);
        assert_eq!(p.stats()[reason as usize], before + 1, "counted as {}", stat::NAMES[reason as usize]);
    }
}

/// One probe from each of many sources (a distributed scan the first-contact tier holds without
/// per-source state): the agent reads the memory-mapped table and the engine still sees it.
#[test]
fn one_probe_per_source_scan_reaches_the_distributed_detector() {
    let mut p = Prog::new();
    let d = v4("127.0.0.1");
    // 45 distinct closed ports (the kernel may hand the same ephemeral port out twice).
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 45 {
        let c = closed_port();
        if !ports.contains(&c) {
            ports.push(c);
        }
    }
    let srcs: Vec<IpAddr> = (0..45u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + i))).collect(); // 203.0.113.x
    p.run_all(srcs.iter().zip(&ports).map(|(s, port)| PacketSpec::nmap_syn(*s, d, *port).build()));
    assert_eq!(p.n_sources(), 0, "every source held, none admitted");
    let view = scanwatch::source::live::first_contact::FirstContactView::new(p.ebpf.take_map("FIRST_CONTACT").expect("map"))
        .expect("mmap the first-contact table");
    let mut reader = scanwatch::source::live::first_contact::HeldReader::default();
    let held = reader.read(&view, scanwatch::source::live::first_contact::Listeners::read);
    assert_eq!(held.len(), 45, "every held probe read back: {held:?}");
    assert!(held.iter().all(|h| h.failed && srcs.contains(&h.ip)), "{held:?}");
    assert!(reader.read(&view, scanwatch::source::live::first_contact::Listeners::read).is_empty(), "each handed out once");
    let cfg = scanwatch::config::Config::default_embedded();
    let mut engine = scanwatch::detect::Engine::new(&cfg, "test".into());
    let now = scanwatch::vocab::monotonic();
    let mut alerts = engine.observe_held(now, &held);
    alerts.extend(engine.tick(now + std::time::Duration::from_secs(6)));
    let dist = alerts
        .iter()
        .find(|a| a.kind == scanwatch::alert::AlertKind::DistributedScan)
        .unwrap_or_else(|| panic!("distributed_scan expected: {alerts:#?}"));
    assert_eq!(dist.counts.get("sources"), Some(45));
    assert_eq!(dist.targets.port_count, 45);
}

/// Bare ACKs of real connections take the fast path (one in ACK_SAMPLE is looked up); an ACK
/// scanner is caught by a sampled lookup and from then on every one of its ACKs is looked up.
#[test]
fn bare_acks_are_sampled_until_a_source_is_suspected() {
    let mut p = Prog::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let _server = listener.accept().expect("accept");
    let lo = v4("127.0.0.1");
    let ack =
        PacketSpec::tcp(lo, lo, client.local_addr().expect("addr").port(), listener.local_addr().expect("addr").port(), ACK)
            .build();
    p.run_all((0..64).map(|_| ack.clone()));
    let st = p.stats();
    let sample = scanwatch_common::ACK_SAMPLE;
    assert_eq!(st[stat::ACK_FAST as usize], 64 - 64 / sample, "all but the sampled ones skip the lookup");
    assert_eq!(p.n_sources(), 0, "established ACKs create no state");

    // An ACK scan from a new source: ACK_SEEN is now a multiple of ACK_SAMPLE, so its first
    // probe is sampled, found orphan, and the source suspected: every later probe is looked up.
    let x = v4("10.12.0.1");
    let d = v4("10.12.0.2");
    p.run_all((0..40).map(|_| PacketSpec::tcp(x, d, 40000, closed_port(), ACK).build()));
    assert_eq!(p.count(x, cnt::ACK), 40, "first held then replayed, the other 39 counted");
    assert_eq!(p.stats()[stat::ACK_FAST as usize], 64 - 64 / sample, "no probe of the scanner skipped");
    // The agent's periodic clear: the scanner is sampled again (and suspected again when caught).
    let mut suspect: Array<MapData, u64> =
        Array::try_from(p.ebpf.take_map("SUSPECT_SOURCES").expect("map")).expect("array");
    scanwatch::source::live::filters::clear_suspects(&mut suspect).expect("clear");
    p.run_all((0..sample).map(|_| PacketSpec::tcp(x, d, 40000, closed_port(), ACK).build()));
    assert_eq!(p.count(x, cnt::ACK), 41, "one sampled lookup in {sample}");
    p.run_all([PacketSpec::tcp(x, d, 40000, closed_port(), ACK).build()]);
    assert_eq!(p.count(x, cnt::ACK), 42, "suspected again");
}

#[test]
fn known_source_filter_rebuild_drops_evicted_sources() {
    let mut p = Prog::with(LoadOptions { max_sources: 64, ..LoadOptions::default() });
    let d = v4("10.11.0.1");
    let src = |i: u32| IpAddr::V4(Ipv4Addr::from(0x6600_0000 + i * 13));
    // 500 two-packet sources through a 64-entry SOURCES: each was admitted (bit set), most evicted.
    p.run_all((0..500u32).flat_map(|i| {
        let pkt = PacketSpec::nmap_syn(src(i), d, 80).build();
        [pkt.clone(), pkt]
    }));
    let known_bits = |p: &Prog| -> u32 {
        let m: Array<&MapData, u64> = Array::try_from(p.ebpf.map("KNOWN_SOURCES").expect("map")).expect("array");
        m.iter().map(|w| w.expect("word").count_ones()).sum()
    };
    let before = known_bits(&p);
    assert!(before > 400, "every admitted source set its bit ({before})");
    let live = p.n_sources() as u32;
    let mut known: Array<MapData, u64> = Array::try_from(p.ebpf.take_map("KNOWN_SOURCES").expect("map")).expect("array");
    let set = scanwatch::source::live::filters::rebuild_known_filter(&p.sources, &mut known).expect("rebuild");
    assert!(set <= live && set + 2 >= live, "one bit per live source ({set} bits, {live} live)");
    let after: u32 = known.iter().map(|w| w.expect("word").count_ones()).sum();
    assert_eq!(after, set);
    // A live source keeps being counted on its first packet after the rebuild.
    let k = p.sources.keys()[0];
    let ip = scanwatch::vocab::key_to_ip(&k);
    let syn_before = p.sources.get(&k).expect("state").counts[cnt::SYN];
    p.run_all([PacketSpec::nmap_syn(ip, d, 81).build()]);
    assert_eq!(p.sources.get(&k).expect("state").counts[cnt::SYN], syn_before + 1);
}

#[test]
fn the_unspecified_address_gets_no_state() {
    // `::` is the table's free-slot marker (and only duplicate-address detection sends from it).
    let mut p = Prog::new();
    let d = v6("fd00::1");
    p.run_all((0..3).map(|i| PacketSpec::nmap_syn(v6("::"), d, 80 + i).build()));
    assert_eq!(p.n_sources(), 0);
    let st = p.stats();
    assert_eq!(st[stat::NEW_SOURCES as usize], 0);
    assert_eq!(st[stat::SYN as usize], 3, "still parsed and counted");
    // A real source after it is tracked as usual.
    p.run_all((0..2).map(|_| PacketSpec::nmap_syn(v6("fd00::7"), d, 80).build()));
    assert_eq!(p.count(v6("fd00::7"), cnt::SYN), 2);
}

#[test]
fn a_full_set_evicts_its_least_recently_seen_source() {
    // 16 sets of 4: find five sources of one set (the seed is fixed here so the test can).
    let opts = LoadOptions { max_sources: 64, source_seed: 0x1234_5678, ..LoadOptions::default() };
    let sets = scanwatch_common::src_sets(opts.max_sources);
    let seed = opts.source_seed;
    let set_of = |ip: IpAddr| {
        scanwatch_common::src_set(addr_hash(&ip_to_key(ip).words()), sets, seed)
    };
    let target = set_of(v4("10.20.0.1"));
    let same: Vec<IpAddr> = (1..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a14_0000 + i)))
        .filter(|ip| set_of(*ip) == target)
        .take(5)
        .collect();
    assert_eq!(same.len(), 5);
    let mut p = Prog::with(opts);
    let d = v4("10.9.0.1");
    let admit = |p: &mut Prog, ip: IpAddr| {
        let pkt = PacketSpec::nmap_syn(ip, d, 80).build();
        p.run_all([pkt.clone(), pkt]);
    };
    for ip in &same[..4] {
        admit(&mut p, *ip);
    }
    assert_eq!(p.n_sources(), 4, "four ways, four sources");
    // The first source goes quiet; the other three are seen again a few clock ticks later.
    std::thread::sleep(std::time::Duration::from_millis(30));
    for ip in &same[1..4] {
        p.run_all([PacketSpec::nmap_syn(*ip, d, 81).build()]);
    }
    admit(&mut p, same[4]);
    assert!(p.source(same[0]).is_none(), "the least recently seen source gave its way up");
    for ip in &same[1..] {
        assert!(p.source(*ip).is_some(), "{ip} kept");
    }
    assert_eq!(p.n_sources(), 4);
    let st = p.stats();
    assert_eq!(st[stat::NEW_SOURCES as usize], 5);
    assert_eq!(st[stat::SOURCE_INSERT_FAILED as usize], 0);
    // A source of another set was not touched by any of this.
    let other = (1..1000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a15_0000 + i))).find(|ip| set_of(*ip) != target).expect("another set");
    admit(&mut p, other);
    assert_eq!(p.n_sources(), 5);
    // Only the two sets that held sources are marked, so only their 8 slots are read by sweeps.
    let runs = p.sources.occupied_runs();
    assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), 8, "{runs:?}");
    assert!(runs.iter().any(|r| r.0 <= target as usize * 4 && target as usize * 4 < r.0 + r.1), "{runs:?}");
    assert_eq!(p.count(same[2], cnt::SYN), 3, "the kept sources' state intact");
}

#[test]
fn source_table_bounds_state_under_random_source_flood() {
    // Two SYNs per source get past the first-contact tier: the table itself must bound state.
    let mut p = Prog::with(LoadOptions { max_sources: 64, ..LoadOptions::default() });
    p.run_all((0..1000u32).flat_map(|i| {
        let pkt = PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::from(0x6400_0000 + i)), v4("10.9.0.1"), 80).build();
        [pkt.clone(), pkt]
    }));
    let live = p.n_sources();
    assert!(live <= 64, "the table keeps at most max_entries ({live})");
    let st = p.stats();
    assert_eq!(st[stat::NEW_SOURCES as usize], 1000);
    assert!(st[stat::NEW_SOURCES as usize] - live as u64 >= 936, "evictions are derivable from counters");
    assert_eq!(st[stat::SYN as usize], 2000, "the program kept working through the flood");
}

#[test]
fn new_fingerprint_events_are_shed_past_the_budget_and_counted() {
    // A budget of 3 per CPU per 100 ms window: of 50 new two-SYN sources (all in one window:
    // the test runs take microseconds), 3 send their fingerprint event, 47 are shed and
    // counted, and every fingerprint is still in the map for the sweep.
    let mut p = Prog::new();
    let full = XdpConfig::default_config();
    loader::write_config(&mut p.ebpf, &XdpConfig { fp_event_budget: 3, ..full }).expect("config");
    p.events();
    p.run_all((0..50u32).flat_map(|i| {
        let pkt = PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::from(0x6400_0100 + i)), v4("10.9.0.1"), 80).build();
        [pkt.clone(), pkt]
    }));
    let st = p.stats();
    assert_eq!(st[stat::NEW_FINGERPRINTS as usize], 50);
    let fp_events = p.events().iter().filter(|e| e.hdr.kind == EventKind::NewFingerprint as u32).count() as u64;
    assert!((1..=3).contains(&fp_events), "at most the budget is sent ({fp_events})");
    assert_eq!(st[stat::FP_EVENTS_SHED as usize] + fp_events, 50, "every new fingerprint is sent or counted as shed");
    let fps: BpfHashMap<_, FpKey, FpValue> = BpfHashMap::try_from(p.ebpf.map(scanwatch_common::MAP_FINGERPRINTS).expect("map")).expect("fingerprints");
    assert_eq!(fps.keys().filter(|k| k.is_ok()).count(), 50, "shed events lose no fingerprint");

    // A threshold event still gets through after the budget is spent.
    let s = v4("10.10.7.7");
    p.run_all((1..=30u16).map(|port| PacketSpec::nmap_syn(s, v4("10.9.0.1"), port).build()));
    assert!(p.events().iter().any(|e| e.hdr.kind == EventKind::Threshold as u32 && e.src == ip_to_key(s)));

    // Budget 0 = no limit.
    loader::write_config(&mut p.ebpf, &XdpConfig { fp_event_budget: 0, ..full }).expect("config");
    let shed = p.stats()[stat::FP_EVENTS_SHED as usize];
    p.run_all((0..20u32).flat_map(|i| {
        let pkt = PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::from(0x6400_0200 + i)), v4("10.9.0.1"), 80).build();
        [pkt.clone(), pkt]
    }));
    assert_eq!(p.stats()[stat::FP_EVENTS_SHED as usize], shed);
    assert_eq!(p.events().iter().filter(|e| e.hdr.kind == EventKind::NewFingerprint as u32).count(), 20);
}

#[test]
fn full_ring_buffer_is_counted_not_silent() {
    // Smallest ring (one page): honeyport events from many sources overflow it.
    let mut p = Prog::with(LoadOptions { ringbuf_bytes: 4096, honeyports_tcp: vec![31337], ..LoadOptions::default() });
    p.run_all((0..200u32).map(|i| {
        PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::from(0x0a0a_0000 + i)), v4("10.9.0.1"), 31337).build()
    }));
    let st = p.stats();
    assert!(st[stat::EVENTS_DROPPED as usize] > 0, "drops counted");
    assert_eq!(st[stat::EVENTS as usize] + st[stat::EVENTS_DROPPED as usize], 200, "every event is either delivered or counted (one honeyport event per source)");
}

#[test]
fn outbound_programs_pass_the_verifier_including_kprobe_variant() {
    let mut p = Prog::new();
    for name in [
        scanwatch_common::PROG_TP_CONNECT,
        scanwatch_common::PROG_TP_CONNECT_EXIT,
        scanwatch_common::PROG_TP_SENDTO,
        scanwatch_common::PROG_TP_SENDMSG,
        scanwatch_common::PROG_TP_SENDMMSG,
        scanwatch_common::PROG_TP_SOCKET,
        scanwatch_common::PROG_TP_SOCK_STATE,
        scanwatch_common::PROG_KP_CONNECT,
    ] {
        loader::load_program(&mut p.ebpf, name).unwrap_or_else(|e| panic!("{name} rejected: {e}"));
    }
}

/// An Ethernet ARP frame: op 1 = request, 2 = reply.
fn arp(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 9, 0x08, 0x06];
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn arp_who_has_sweeps_count_host_fan_out() {
    let mut p = Prog::new();
    p.run_all((100..160u8).map(|h| arp(1, [192, 168, 50, 7], [192, 168, 50, h])));
    let s = p.source(v4("192.168.50.7")).expect("ARP sender tracked");
    assert_eq!(s.counts[cnt::ARP], 60);
    let hosts = hll_estimate(&s.host_hll);
    assert!((hosts - 60.0).abs() / 60.0 < 0.10, "distinct ARP targets {hosts}");
    assert_eq!(s.n_sample, 0, "ARP has no ports");
    // Replies, gratuitous ARP and duplicate-address probes are not host discovery.
    p.run_all([
        arp(2, [192, 168, 50, 8], [192, 168, 50, 7]),
        arp(1, [192, 168, 50, 9], [192, 168, 50, 9]),
        arp(1, [0, 0, 0, 0], [192, 168, 50, 10]),
    ]);
    assert!(p.source(v4("192.168.50.8")).is_none() && p.source(v4("192.168.50.9")).is_none());
    assert!(p.source(v4("0.0.0.0")).is_none());
    let before = p.stats()[stat::MAL_ARP as usize];
    let mut bad = arp(1, [192, 168, 50, 7], [192, 168, 50, 1]);
    bad[14 + 4] = 8; // hardware address length 8: not Ethernet/IPv4 ARP
    assert_eq!(p.run(&bad), 2);
    assert_eq!(p.stats()[stat::MAL_ARP as usize], before + 1);
}

/// The listening-port filter: a probe to a TCP port no socket uses skips the socket lookup; a
/// port in use when the filter starts (/proc), a listener opened afterwards and the local port of
/// a later outgoing connection (both marked by the real `sock:inet_sock_set_state` tracepoint)
/// are still looked up, so no outcome is wrong; a listener closed later is looked up and found
/// gone.
#[test]
fn port_filter_skips_lookups_only_where_no_socket_can_be() {
    let mut p = Prog::new();
    let before = TcpListener::bind("127.0.0.1:0").expect("bind");
    let before_port = before.local_addr().expect("addr").port();
    let mut xdp = XdpConfig::default_config();
    let mut ports = scanwatch::source::live::ports::enable(&mut p.ebpf, &mut xdp).expect("filter on");
    assert!(xdp.flags & cfgflag::PORT_FILTER != 0);
    assert!(ports.is_marked(before_port), "a listener from before the start is marked from /proc");
    // Opened during the "scan": marked by the tracepoint when it starts listening.
    let during = TcpListener::bind("127.0.0.1:0").expect("bind");
    let during_port = during.local_addr().expect("addr").port();
    assert!(ports.is_marked(during_port), "the tracepoint marks a new listener");
    let closed = closed_port();
    let src = v4("127.0.0.21");
    let lo = v4("127.0.0.1");
    p.admit(src);
    p.run_all([
        PacketSpec::nmap_syn(src, lo, before_port).build(),
        PacketSpec::nmap_syn(src, lo, during_port).build(),
        PacketSpec::nmap_syn(src, lo, closed).build(),
    ]);
    assert_eq!(p.count(src, cnt::SYN_OPEN), 2, "both listeners found");
    assert_eq!(p.count(src, cnt::SYN_CLOSED), 1);
    // The filter really skips: a live listener whose port is unmarked reads as closed.
    ports.unmark(during_port);
    p.run_all([PacketSpec::nmap_syn(src, lo, during_port).build()]);
    assert_eq!(p.count(src, cnt::SYN_CLOSED), 2, "unmarked port: no lookup");
    ports.mark(during_port);
    // A listener closed during the scan: its port stays marked, the lookup finds it gone.
    drop(during);
    p.run_all([PacketSpec::nmap_syn(src, lo, during_port).build()]);
    assert_eq!(p.count(src, cnt::SYN_CLOSED), 3, "closed listener looked up and found gone");
    // An outgoing connection made after the start: its local port is marked (SYN_SENT), so a
    // FIN/ACK of that live connection is looked up and not taken for a Maimon probe.
    let client = std::net::TcpStream::connect(("127.0.0.1", before_port)).expect("connect");
    let local = client.local_addr().expect("addr").port();
    assert!(ports.is_marked(local), "the tracepoint marks an outgoing connection's port");
    let peer = v4("127.0.0.1");
    p.admit(peer);
    p.run_all([PacketSpec::tcp(peer, lo, before_port, local, FIN | ACK).build()]);
    assert_eq!(p.count(peer, cnt::MAIMON), 0, "a live connection's FIN/ACK is no probe");
    // The same FIN/ACK to an unused port is an orphan without any lookup.
    p.admit(v4("127.0.0.22"));
    p.run_all([PacketSpec::tcp(v4("127.0.0.22"), lo, 40000, closed_port(), FIN | ACK).build()]);
    assert_eq!(p.count(v4("127.0.0.22"), cnt::MAIMON), 1);
}

// ------------------------------------------------------------------------------------------------
// SCTP probes (nmap -sY / -sZ) and IP-protocol scans (nmap -sO).
// ------------------------------------------------------------------------------------------------

const SCTP_INIT: u8 = 1;
const SCTP_ABORT: u8 = 6;
const SCTP_COOKIE_ECHO: u8 = 10;

fn protocols_of(s: &SrcState) -> Vec<u8> {
    (0..=255u8).filter(|p| s.protocols[usize::from(p >> 6)] & (1u64 << (p & 63)) != 0).collect()
}

#[test]
fn sctp_init_and_cookie_echo_are_port_probes() {
    let mut p = Prog::new();
    for (src, d) in [(v4("198.51.100.60"), v4("10.250.0.1")), (v6("2001:db8::60"), v6("fd00::1"))] {
        let sctp_before = p.stats()[stat::SCTP as usize];
        // nmap -sY: INIT (20-byte fixed part + nmap's cookie-preservative parameter) to 3 ports;
        // nmap -sZ: COOKIE ECHO to 2 more.
        let mut pkts: Vec<Vec<u8>> = (1..=3).map(|port| PacketSpec::sctp(src, d, 40000, port, SCTP_INIT, 28).build()).collect();
        pkts.extend((4..=5).map(|port| PacketSpec::sctp(src, d, 40000, port, SCTP_COOKIE_ECHO, 4).build()));
        // An ABORT (or any other first chunk) is not a probe.
        pkts.push(PacketSpec::sctp(src, d, 40000, 9, SCTP_ABORT, 4).build());
        p.run_all(pkts);
        let s = p.source(src).unwrap_or_else(|| panic!("{src} admitted"));
        assert_eq!(s.counts[cnt::SCTP_INIT], 3, "{src}");
        assert_eq!(s.counts[cnt::SCTP_COOKIE], 2, "{src}");
        let mut sample: Vec<u16> = s.sample_ports[..s.n_sample as usize].to_vec();
        sample.sort_unstable();
        assert_eq!(sample, vec![1, 2, 3, 4, 5], "{src}: the probed ports, not the ABORT's");
        assert_eq!(protocols_of(&s), vec![132], "{src}");
        assert_eq!(p.stats()[stat::SCTP as usize], sctp_before + 6);
    }
}

#[test]
fn malformed_sctp_is_counted_and_passes() {
    let mut p = Prog::new();
    let (src, d) = (v4("198.51.100.61"), v4("10.250.0.1"));
    let before = p.stats()[stat::MAL_SCTP as usize];
    // Too short for the common header + a chunk header.
    let short = PacketSpec::ip_proto(src, d, 132, 14).build();
    // First chunk length under 4.
    let mut bad_len = PacketSpec::sctp(src, d, 40000, 80, SCTP_INIT, 20);
    if let L4::Raw { bytes, .. } = &mut bad_len.l4 {
        bytes[14..16].copy_from_slice(&2u16.to_be_bytes());
    }
    // An INIT shorter than its fixed part, and a chunk length beyond the packet.
    let short_init = PacketSpec::sctp(src, d, 40000, 81, SCTP_INIT, 8).build();
    let mut overrun = PacketSpec::sctp(src, d, 40000, 82, SCTP_INIT, 20);
    if let L4::Raw { bytes, .. } = &mut overrun.l4 {
        bytes[14..16].copy_from_slice(&400u16.to_be_bytes());
    }
    p.run_all([short, bad_len.build(), short_init, overrun.build()]);
    assert_eq!(p.stats()[stat::MAL_SCTP as usize], before + 4);
    assert!(p.source(src).is_none(), "malformed packets create no state");
    assert_eq!(p.slot(src).addr, [0, 0], "nor a held first contact");
}

#[test]
fn ip_protocol_scan_sets_one_bit_per_protocol() {
    let mut p = Prog::new();
    let (src, d) = (v4("198.51.100.62"), v4("10.250.0.1"));
    let other_before = p.stats()[stat::OTHER_PROTO as usize];
    // nmap -sO: an empty packet for each protocol it has no header for (here 0..=100 without
    // ICMP, TCP, UDP), an ICMP echo, a UDP datagram to a closed port, a SYN.
    let others: Vec<u8> = (0..=100u8).filter(|p| ![1, 6, 17].contains(p)).collect();
    let mut pkts: Vec<Vec<u8>> = others.iter().map(|pr| PacketSpec::ip_proto(src, d, *pr, 0).build()).collect();
    pkts.push(PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(src, d, 0, 0, 0) }.build());
    pkts.push(PacketSpec { l4: L4::Udp { sport: 40000, dport: closed_port(), payload: Vec::new() }, ..PacketSpec::tcp(src, d, 0, 0, 0) }.build());
    pkts.push(PacketSpec::tcp(src, d, 40000, closed_port(), SYN).build());
    p.run_all(pkts);
    let s = p.source(src).expect("admitted");
    assert_eq!(s.counts[cnt::IP_PROTO] as usize, others.len());
    assert_eq!(protocols_of(&s), (0..=100u8).collect::<Vec<_>>(), "every protocol number sent, once each");
    assert_eq!(p.stats()[stat::OTHER_PROTO as usize], other_before + others.len() as u64);
    // No port or host fan-out from portless protocols beyond the one target.
    assert!(hll_estimate(&s.host_hll) < 1.5);
}

/// Gateway / mirror mode: a packet whose destination is not one of the host's addresses
/// (`LOCAL_ADDRS`) on a gateway interface, or any packet on a mirror interface, gets no socket
/// lookup — a live forwarded connection's FIN-ACK is no Maimon probe, a SYN to a forwarded
/// service no closed-port probe — and goes to the reply ring (`FWD_EVENTS`) for the agent's
/// tracker; traffic for the host keeps the lookup.
#[test]
fn gateway_mode_forwarded_packets_skip_the_lookup_and_go_to_the_reply_ring() {
    use scanwatch::outcome::Seen;
    use scanwatch::source::live::forwarded::{decode_record, FwdStats};
    use scanwatch_common::{ifmode, MAP_FWD_EVENTS, MAP_IFACE_MODES, MAP_LOCAL_ADDRS};

    // Loaded as a gateway-mode agent loads it (the forwarded path compiled in).
    let mut p = Prog::with(LoadOptions { gateway: true, honeyports_tcp: vec![31337, 4444], ..LoadOptions::default() });
    // BPF_PROG_TEST_RUN delivers the packet on the namespace's loopback device.
    let lo = 1u32;
    let (client, remote, local) = (v4("10.79.0.2"), v4("10.80.0.2"), v4("10.250.0.1"));
    let set_mode = |p: &mut Prog, mode: u32| {
        let mut m: BpfHashMap<&mut MapData, u32, u32> =
            BpfHashMap::try_from(p.ebpf.map_mut(MAP_IFACE_MODES).expect("IFACE_MODES")).expect("hash");
        m.insert(lo, mode, 0).expect("insert mode");
    };
    {
        let mut l: BpfHashMap<&mut MapData, SrcKey, u32> =
            BpfHashMap::try_from(p.ebpf.map_mut(MAP_LOCAL_ADDRS).expect("LOCAL_ADDRS")).expect("hash");
        l.insert(ip_to_key(local), 1, 0).expect("insert local");
    }
    set_mode(&mut p, ifmode::GATEWAY);
    p.admit(client);

    // Flag off (every interface in host mode): the maps are not read, nothing is forwarded.
    let port = closed_port();
    p.run_all([PacketSpec::tcp(client, remote, 40000, port, FIN | ACK).build()]);
    assert_eq!(p.stats()[stat::FORWARDED as usize], 0);
    assert_eq!(p.count(client, cnt::MAIMON), 1, "host mode: an orphan FIN-ACK is a Maimon probe");

    let cfg = XdpConfig { flags: XdpConfig::default_config().flags | cfgflag::FORWARDED, ..XdpConfig::default_config() };
    loader::write_config(&mut p.ebpf, &cfg).expect("config");
    let before = p.source(client).expect("admitted").counts;
    p.run_all([
        PacketSpec::tcp(client, remote, 40001, port, FIN | ACK).build(),
        PacketSpec::tcp(client, remote, 40002, port, ACK).build(),
        PacketSpec::tcp(client, remote, 40003, port, SYN).build(),
        PacketSpec::tcp(remote, client, port, 40003, RST | ACK).build(),
        // Established data of a forwarded flow: the fast path, no record.
        {
            let mut d = PacketSpec::tcp(client, remote, 40004, port, ACK | PSH);
            if let L4::Tcp { payload, .. } = &mut d.l4 {
                *payload = vec![1; 20];
            }
            d.build()
        },
    ]);
    let after = p.source(client).expect("admitted").counts;
    assert_eq!(after[cnt::MAIMON], before[cnt::MAIMON], "forwarded FIN-ACK is no Maimon probe");
    assert_eq!(after[cnt::ACK], before[cnt::ACK], "forwarded bare ACK is no ACK probe");
    assert_eq!(after[cnt::SYN], before[cnt::SYN] + 1, "the SYN is still counted (fan-out, fingerprint)");
    assert_eq!((after[cnt::SYN_CLOSED], after[cnt::FAILED]), (before[cnt::SYN_CLOSED], before[cnt::FAILED]), "no lookup verdict");
    let s = p.stats();
    assert_eq!(s[stat::FORWARDED as usize], 4, "{s:?}");
    assert_eq!((s[stat::FWD_RECORDS as usize], s[stat::FWD_DROPPED as usize]), (4, 0), "{s:?}");

    // To the host's own address the lookup still judges.
    p.run_all([PacketSpec::tcp(client, local, 40005, port, SYN).build()]);
    assert_eq!(p.count(client, cnt::SYN_CLOSED), before[cnt::SYN_CLOSED] + 1, "local SYN to a closed port");
    assert_eq!(p.stats()[stat::FORWARDED as usize], 4);

    // The records decode to what the reply tracker needs, in order.
    let mut seen = Vec::new();
    {
        let mut rb = RingBuf::try_from(p.ebpf.map_mut(MAP_FWD_EVENTS).expect("FWD_EVENTS")).expect("ringbuf");
        let mut st = FwdStats::default();
        while let Some(item) = rb.next() {
            if let Some((_, s)) = decode_record(&item, &mut st) {
                seen.push(s);
            }
        }
        assert_eq!(st, FwdStats { records: 4, bad_records: 0, undecoded: 0 });
    }
    let flags: Vec<(u16, u8)> = seen
        .iter()
        .map(|s| match *s {
            Seen::Tcp { dport, flags, .. } => (dport, flags),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(flags, vec![(port, FIN | ACK), (port, ACK), (port, SYN), (40003, RST | ACK)]);

    // Mirror: nothing is for this host, not even its own addresses.
    set_mode(&mut p, ifmode::MIRROR);
    let closed = p.count(client, cnt::SYN_CLOSED);
    p.run_all([PacketSpec::tcp(client, local, 40006, port, SYN).build()]);
    assert_eq!(p.count(client, cnt::SYN_CLOSED), closed);
    assert_eq!(p.stats()[stat::FORWARDED as usize], 5);
}

/// The UDP_PEERS slot of a remote (address, port), as the sendto hook reads it.
fn udp_peer_byte(p: &Prog, ip: IpAddr, port: u16) -> u8 {
    let key = ip_to_key(ip);
    // SAFETY: same size, any bit pattern is valid.
    let w = unsafe { std::mem::transmute::<[u8; 16], [u64; 2]>(key.addr) };
    let (entry, byte) = scanwatch_common::udp_peer_slot(&w, port);
    let arr: Array<&MapData, [u8; scanwatch_common::UDP_PEER_BYTES]> =
        Array::try_from(p.ebpf.map("UDP_PEERS").expect("UDP_PEERS")).expect("array");
    arr.get(&entry, 0).expect("entry")[byte]
}

/// A datagram that reaches a local UDP socket marks its sender (address and port) as a recent
/// peer: the outbound sendto hook then counts the local process's datagrams back to it as
/// replies (a DNS server's answers), not probes. Datagrams to closed ports (a UDP scan) do not.
#[test]
fn udp_to_an_open_socket_marks_the_peer_for_reply_recognition() {
    let mut p = Prog::new();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let open = sock.local_addr().expect("addr").port();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    // `closed` is free again once its socket is dropped above.
    let src = v4("127.0.0.23");
    let d = v4("127.0.0.1");
    let to = |sport: u16, dport: u16| PacketSpec {
        l4: L4::Udp { sport, dport, payload: vec![0; 12] },
        ..PacketSpec::tcp(src, d, 0, 0, 0)
    };
    assert_eq!(udp_peer_byte(&p, src, 40_000), 0, "nothing marked before any packet");
    p.run_all([to(40_000, open).build(), to(40_001, closed).build()]);
    let now = {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: plain libc call with a valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let b = udp_peer_byte(&p, src, 40_000);
    assert!(scanwatch_common::udp_peer_recent(b, now), "the sender to an open socket is a recent peer (byte {b})");
    assert_eq!(udp_peer_byte(&p, src, 40_001), 0, "a datagram to a closed port marks nothing");
    assert_eq!(udp_peer_byte(&p, src, 40_002), 0, "another port of the same host is another peer");
    drop(sock);
}

// ------------------------------------------------------------------------------------------------
// Replay batches: `scanwatch_replay` / `scanwatch_replay_step` run the detector on each frame of
// a packed buffer; the result must be that of one `scanwatch_xdp` run per frame.
// ------------------------------------------------------------------------------------------------

impl Prog {
    /// Load the batch programs and put the step program in the tail-call table (as the replay).
    fn load_batch(&mut self) {
        let mut fd = None;
        for name in [scanwatch_common::PROG_REPLAY_STEP, scanwatch_common::PROG_REPLAY] {
            let p: &mut Xdp = self.ebpf.program_mut(name).expect("batch program").try_into().expect("xdp");
            p.load().unwrap_or_else(|e| panic!("{name} passes the verifier: {e}"));
            if fd.is_none() {
                fd = Some(p.fd().expect("fd").try_clone().expect("clone"));
            }
        }
        let mut pa = aya::maps::ProgramArray::try_from(self.ebpf.map_mut(scanwatch_common::MAP_REPLAY_PROGS).expect("map")).expect("prog array");
        pa.set(0, &fd.expect("step fd"), 0).expect("set step");
    }

    /// One run of the batch entry on a packed buffer: its return value.
    fn run_batch_raw(&mut self, buf: &[u8]) -> u32 {
        let p: &mut Xdp = self.ebpf.program_mut(scanwatch_common::PROG_REPLAY).expect("prog").try_into().expect("xdp");
        p.test_run(TestRunOptions { data_in: Some(buf), repeat: 1, ..TestRunOptions::default() }).expect("test_run").return_value
    }

    /// Run `frames` as the replay does: packed, resubmitting the rest after each stop. Returns
    /// the frames each call ran and the events drained after each call.
    fn run_batched(&mut self, frames: &[Vec<u8>]) -> (Vec<usize>, Vec<Vec<(u32, IpAddr)>>) {
        let (mut ran, mut evs) = (Vec::new(), Vec::new());
        let mut k = 0;
        while k < frames.len() {
            let chunk = &frames[k..frames.len().min(k + scanwatch_common::REPLAY_MAX_FRAMES)];
            let buf = pack(chunk);
            let r = self.run_batch_raw(&buf);
            assert!(
                r > scanwatch_common::REPLAY_RET_DONE && r <= scanwatch_common::REPLAY_RET_DONE + chunk.len() as u32,
                "batch of {} frames returned {r}",
                chunk.len()
            );
            let n = (r - scanwatch_common::REPLAY_RET_DONE) as usize;
            ran.push(n);
            evs.push(self.events().iter().map(|e| (e.hdr.kind, ev_src(e))).collect());
            k += n;
        }
        (ran, evs)
    }
}

fn ev_src(e: &InboundEvent) -> IpAddr {
    scanwatch::vocab::key_to_ip(&e.src)
}

/// The replay's own packing (header + frames last to first).
fn pack(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut metas = Vec::new();
    for f in frames {
        metas.push(scanwatch::replay::source::FrameMeta {
            ts: std::time::Duration::ZERO,
            start: bytes.len() as u32,
            len: f.len() as u32,
            src: None,
            seen: None,
        });
        bytes.extend_from_slice(f);
    }
    let mut buf = Vec::new();
    scanwatch::replay::source::pack(&mut buf, &bytes, &metas);
    buf
}

/// Everything of a source's state but the kernel-clock times.
fn state_sans_times(s: &SrcState) -> Vec<u8> {
    let mut s = *s;
    s.first_seen_ns = 0;
    s.last_seen_ns = 0;
    s.win_start_ns = 0;
    // SAFETY: SrcState is plain old data with explicit padding.
    unsafe { std::slice::from_raw_parts((&raw const s).cast::<u8>(), std::mem::size_of::<SrcState>()) }.to_vec()
}

/// A mix of frames: SYN scans from three sources (the second packet of each admits it and
/// raises a new-fingerprint event), a honeyport hit, UDP, ICMP, ARP, IPv6 and VLAN-tagged
/// probes, and malformed frames each placed right after a well-formed one (in the packed buffer
/// a frame's bytes are followed by the chronologically previous frame: a parser reading past
/// the end of the short frame would find a whole packet there and count it differently).
fn batch_mix() -> Vec<Vec<u8>> {
    let d = v4("10.240.0.1");
    let syn = PacketSpec::nmap_syn(v4("10.241.0.1"), d, 80).build();
    let mut f = Vec::new();
    for i in 0..40u16 {
        let src = v4(&format!("10.241.0.{}", 1 + i % 3));
        f.push(PacketSpec::nmap_syn(src, d, 100 + i).build());
        match i % 8 {
            0 => f.push(syn[..14 + 20 + 10].to_vec()),
            1 => f.push(syn[..14 + 10].to_vec()),
            2 => {
                let mut b = syn.clone();
                b[12] = 0x81;
                b[13] = 0x00;
                b.truncate(15);
                f.push(b);
            }
            3 => f.push(syn[..14].to_vec()),
            4 => {
                let mut p = PacketSpec::tcp(v4("10.242.0.1"), d, 0, 0, 0);
                p.l4 = L4::Udp { sport: 5353, dport: 1000 + i, payload: vec![1; 12] };
                f.push(p.build());
            }
            5 => f.push(PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(v4("10.242.0.2"), v4(&format!("10.240.1.{i}")), 0, 0, 0) }.build()),
            6 => {
                let mut s = PacketSpec::linux_syn(v6("fd13::1"), v6("fd13::2"), 40000, 2000 + i);
                s.vlans = vec![7];
                f.push(s.build());
                let v6pkt = PacketSpec::linux_syn(v6("fd13::1"), v6("fd13::2"), 1, 2).build();
                f.push(v6pkt[..14 + 30].to_vec());
            }
            _ => f.push(arp(1, [10, 243, 0, 1], [10, 243, 0, (i % 200) as u8 + 1])),
        }
    }
    // A honeyport hit (an immediate event) in the middle of the last batch.
    f.insert(f.len() - 5, PacketSpec::nmap_syn(v4("10.241.0.1"), d, 31337).build());
    f
}

#[test]
fn batched_runs_equal_one_run_per_frame() {
    let frames = batch_mix();
    assert!(frames.len() > 2 * scanwatch_common::REPLAY_MAX_FRAMES);
    // One run of the live program per frame, events drained after each.
    let mut one = Prog::new();
    let mut event_frames = Vec::new();
    let mut one_events = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(one.run(f), 2);
        let ev: Vec<(u32, IpAddr)> = one.events().iter().map(|e| (e.hdr.kind, ev_src(e))).collect();
        if !ev.is_empty() {
            event_frames.push(i);
        }
        one_events.extend(ev);
    }
    assert!(event_frames.len() >= 4, "new-fingerprint and honeyport events: {event_frames:?}");
    // The same frames in batches.
    let mut bat = Prog::new();
    bat.load_batch();
    let (ran, evs) = bat.run_batched(&frames);
    eprintln!("frames {} calls {} ran {ran:?}", frames.len(), ran.len());
    // Every frame ran once; a call stops right after a frame that raised an event, else runs
    // its whole batch.
    assert_eq!(ran.iter().sum::<usize>(), frames.len());
    let mut k = 0;
    let mut batch_events = Vec::new();
    for (n, ev) in ran.iter().zip(&evs) {
        let last = k + n - 1;
        if event_frames.contains(&last) {
            assert!(!ev.is_empty(), "frame {last} raised an event alone, none in its batch");
        } else {
            assert!(ev.is_empty(), "events {ev:?} in a call that did not stop at an event frame");
            assert!(*n == scanwatch_common::REPLAY_MAX_FRAMES || last == frames.len() - 1, "a call stopped early at frame {last}: {ran:?}");
        }
        assert!(event_frames.iter().all(|e| *e < k || *e >= last), "call ran past event frame: {k}..={last} {event_frames:?}");
        batch_events.extend(ev.iter().copied());
        k += n;
    }
    assert!(ran.len() < frames.len() / 3, "{ran:?}");
    assert_eq!(one_events, batch_events, "the same events, in the same order");
    // Every counter the same: malformed frames counted by the same reason, nothing read across.
    let (a, b) = (one.stats(), bat.stats());
    for (i, name) in stat::NAMES.iter().enumerate() {
        assert_eq!(a[i], b[i], "stat {name} differs: one run per frame {} batched {}", a[i], b[i]);
    }
    // Five of each (the 14-byte frames are IPv4 ones with no IPv4 header: five more).
    for (r, k) in [(stat::MAL_TCP, 5), (stat::MAL_IPV4, 10), (stat::MAL_VLAN, 5), (stat::MAL_IPV6, 5)] {
        assert_eq!(b[r as usize], k, "{} counted once per malformed frame", stat::NAMES[r as usize]);
    }
    assert_eq!(b[stat::PACKETS as usize], frames.len() as u64);
    // The same per-source state (but the kernel-clock times).
    assert_eq!(one.n_sources(), bat.n_sources());
    for ip in ["10.241.0.1", "10.241.0.2", "10.241.0.3", "10.242.0.1", "10.242.0.2", "10.243.0.1"].map(v4).into_iter().chain([v6("fd13::1")]) {
        let (x, y) = (one.source(ip), bat.source(ip));
        assert_eq!(x.is_some(), y.is_some(), "{ip}");
        if let (Some(x), Some(y)) = (x, y) {
            assert!(state_sans_times(&x) == state_sans_times(&y), "state of {ip} differs");
        }
    }
}

#[test]
fn batch_limits_and_refusals() {
    let mut p = Prog::new();
    p.load_batch();
    // A batch filling the linear test-run buffer exactly runs whole: 32 frames, all event-free
    // (UDP to one port from a source already admitted: no threshold crossed), the last one
    // padded up to REPLAY_MAX_BYTES.
    let src = v4("10.244.0.1");
    p.admit(src);
    let n = scanwatch_common::REPLAY_MAX_FRAMES;
    let udp = |port: u16, pad: usize| {
        let mut s = PacketSpec::tcp(src, v4("10.244.0.2"), 0, 0, 0);
        s.l4 = L4::Udp { sport: 999, dport: port, payload: vec![0; pad] };
        s.build()
    };
    let mut frames: Vec<Vec<u8>> = (0..n as u16 - 1).map(|_| udp(3000, 0)).collect();
    let used = scanwatch_common::REPLAY_HDR_LEN + frames.iter().map(Vec::len).sum::<usize>();
    let last_len = scanwatch_common::REPLAY_MAX_BYTES - used;
    frames.push(udp(3000, last_len - udp(3000, 0).len()));
    let buf = pack(&frames);
    assert_eq!(buf.len(), scanwatch_common::REPLAY_MAX_BYTES);
    let before = p.stats();
    assert_eq!(p.run_batch_raw(&buf), scanwatch_common::REPLAY_RET_DONE + n as u32, "a full batch runs whole");
    let after = p.stats();
    assert_eq!(after[stat::PACKETS as usize] - before[stat::PACKETS as usize], n as u64);
    assert_eq!(after[stat::UDP as usize] - before[stat::UDP as usize], n as u64);
    assert!(p.events().is_empty());
    // Refused whole, nothing run: a header whose lengths do not add up to the buffer, a frame
    // shorter than an Ethernet header, no frames, more than REPLAY_MAX_FRAMES frames.
    let good = pack(&frames[..3]);
    let mut short = good.clone();
    short.pop();
    let mut runt = good.clone();
    runt[4..6].copy_from_slice(&10u16.to_le_bytes());
    let mut none = good.clone();
    none[0..2].copy_from_slice(&0u16.to_le_bytes());
    let mut many = good.clone();
    many[0..2].copy_from_slice(&(n as u16 + 1).to_le_bytes());
    let before = p.stats();
    for (what, b) in [("short", &short), ("runt", &runt), ("none", &none), ("too many", &many), ("header only", &good[..20].to_vec())] {
        assert_eq!(p.run_batch_raw(b), scanwatch_common::REPLAY_RET_BAD, "{what}");
    }
    assert_eq!(p.stats(), before, "a refused batch runs nothing");
}
