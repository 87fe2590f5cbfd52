//! Tier (b), protocol depth: the real XDP program through BPF_PROG_TEST_RUN. Connections to a
//! real listener on loopback (the socket lookup must find it): the first data segment becomes a
//! `PayloadEvent` with the bytes sent, a TLS record is split into 256-byte chunks, later data
//! emits nothing, a FIN before data is a close without data, a bare RST (SYN-scan teardown)
//! only clears, and `first_payload: false` turns it all off. Needs root (CAP_BPF).
use std::net::{IpAddr, Ipv4Addr, TcpListener};

use aya::{
    maps::RingBuf,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use scanwatch::{
    loader::{self, LoadOptions},
    packet::{PacketSpec, L4, ACK, FIN, PSH, RST},
};
use scanwatch_common::{EventHeader, EventKind, PayloadEvent, PAYLOAD_SAMPLE};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn load(first_payload: bool) -> Ebpf {
    assert_eq!(unsafe { libc::geteuid() }, 0, "BPF_PROG_TEST_RUN tests need root (CAP_BPF)");
    let mut ebpf = loader::load(&LoadOptions { first_payload, ..LoadOptions::default() }).expect("load eBPF object");
    loader::xdp_program(&mut ebpf).expect("XDP program passes the verifier");
    {
        // How much of the verifier's 1,000,000-instruction budget the program uses (printed with
        // --nocapture): every new path multiplies the states the verifier explores.
        let p: &Xdp = ebpf.program(scanwatch_common::PROG_XDP).expect("prog").try_into().expect("xdp");
        eprintln!("verified instructions (first_payload={first_payload}): {:?}", p.info().ok().and_then(|i| i.verified_instruction_count()));
    }
    ebpf
}

fn run(ebpf: &mut Ebpf, pkt: &[u8]) {
    let p: &mut Xdp = ebpf.program_mut(scanwatch_common::PROG_XDP).expect("prog").try_into().expect("xdp");
    let r = p.test_run(TestRunOptions { data_in: Some(pkt), repeat: 1, ..TestRunOptions::default() }).expect("test_run");
    assert_eq!(r.return_value, 2, "XDP_PASS");
}

fn payload_events(ebpf: &mut Ebpf) -> Vec<PayloadEvent> {
    let mut rb = RingBuf::try_from(ebpf.map_mut("EVENTS").expect("EVENTS")).expect("ringbuf");
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        // SAFETY: records are written by the program; the header is read first, unaligned.
        let hdr: EventHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if hdr.kind == EventKind::Payload as u32 {
            assert!(item.len() >= std::mem::size_of::<PayloadEvent>(), "short payload record");
            // SAFETY: length checked; POD.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
    }
    out
}

fn syn(sport: u16, dport: u16) -> Vec<u8> {
    PacketSpec::linux_syn(LO, LO, sport, dport).build()
}

fn seg(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut p = PacketSpec::tcp(LO, LO, sport, dport, flags);
    if let L4::Tcp { payload, .. } = &mut p.l4 {
        *payload = data.to_vec();
    }
    p.build()
}

#[test]
fn first_payload_is_sampled_once_per_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut e = load(true);
    // The source's first SYN is held by the first-contact tier; from the second on, SYNs to the
    // open port mark their connections pending.
    for sport in [41000, 41001, 41002, 41003, 41004] {
        run(&mut e, &syn(sport, port));
    }
    let _ = payload_events(&mut e);

    let req = b"GET / HTTP/1.0\r\n\r\n";
    run(&mut e, &seg(41001, port, ACK | PSH, req));
    run(&mut e, &seg(41001, port, ACK | PSH, b"second segment"));
    let ev = payload_events(&mut e);
    assert_eq!(ev.len(), 1, "one event for the first payload, none for later data");
    assert_eq!((ev[0].sport, ev[0].dport, ev[0].closed, ev[0].chunk), (41001, port, 0, 0));
    assert_eq!(ev[0].payload_len as usize, req.len());
    assert_eq!(&ev[0].data[..usize::from(ev[0].sample_len)], req);

    // A TLS record of 600 bytes: three chunks, the bytes in order.
    let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x53];
    tls.extend((0..595u32).map(|i| (i % 251) as u8));
    run(&mut e, &seg(41002, port, ACK | PSH, &tls));
    let ev = payload_events(&mut e);
    assert_eq!(ev.iter().map(|x| (x.chunk, x.sample_len)).collect::<Vec<_>>(), [(0, 256), (1, 256), (2, 88)]);
    let joined: Vec<u8> = ev.iter().flat_map(|x| x.data[..usize::from(x.sample_len)].to_vec()).collect();
    assert_eq!(joined, tls);
    assert_eq!(PAYLOAD_SAMPLE, 256);

    // Closed without data (banner grab): FIN|ACK. A bare RST (SYN-scan teardown): nothing.
    run(&mut e, &seg(41003, port, FIN | ACK, b""));
    run(&mut e, &seg(41004, port, RST, b""));
    run(&mut e, &seg(41004, port, ACK | PSH, b"late data"));
    let ev = payload_events(&mut e);
    assert_eq!(ev.len(), 1, "only the FIN close is reported");
    assert_eq!((ev[0].sport, ev[0].closed, ev[0].sample_len, ev[0].payload_len), (41003, 1, 0, 0));

    // A connection never marked (closed port: no listener) is never sampled.
    let closed_port = port.wrapping_add(1);
    run(&mut e, &syn(41005, closed_port));
    run(&mut e, &seg(41005, closed_port, ACK | PSH, req));
    assert!(payload_events(&mut e).is_empty());
    drop(listener);
}

#[test]
fn first_payload_off_at_load_time() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut e = load(false);
    for sport in [42000, 42001] {
        run(&mut e, &syn(sport, port));
    }
    run(&mut e, &seg(42001, port, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"));
    run(&mut e, &seg(42001, port, FIN | ACK, b""));
    assert!(payload_events(&mut e).is_empty());
    drop(listener);
}
