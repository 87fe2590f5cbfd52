//! Tier (c), outbound UDP: busy but benign UDP processes must raise no `outbound_scan`, and a
//! real UDP port scan from a local process must (the control that shows the detector is alive).
//!
//! * a media-like sender: one python process sends 200,000 datagrams to one lab address:port;
//! * a DNS-like server: a real UDP server (python, minimal DNS answers) in the agent's namespace
//!   answers queries from 528 client (address, port) pairs of the lab namespace — 16 client
//!   addresses, 33 sockets each — whose queries cross the watched veth; it replies to each;
//! * the control: python in the lab namespace sends one datagram to each of ports 1–300 of the
//!   lab target and is reported as `outbound_scan` attributed to that process.
//!
//! The agent's hooks are system-wide and other engineers' tests may run at the same time, so every
//! assertion is filtered by the process this test started (its tgid) or by this lab's addresses.
//! LAB.md: the clients and scanners run inside the lab namespace, every address is the lab slot's
//! own (10.77.N.0/24 target side, 10.78.N.0/24 client side, its routes on the lab veth, deleted
//! with it).
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scanwatch_tests::{
    assert_ok, dump, expect_alert, finish_child, is_outbound, lab_lock, proc_of, start_lab_agent, Lab,
};
use serde_json::Value;

/// An outbound alert naming process `pid` (tgid), or a task it forked.
fn names_process(v: &Value, pid: u32) -> bool {
    v["direction"] == "outbound"
        && (proc_of(v)["tgid"].as_u64() == Some(u64::from(pid)) || proc_of(v)["ppid"].as_u64() == Some(u64::from(pid)))
}

/// A UDP sink on `addr` in the root namespace (the agent's), counting what it reads.
struct Sink {
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(addr: (Ipv4Addr, u16)) -> Sink {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("cannot bind UDP {addr:?}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let (got, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (g2, s2) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                if s.recv_from(&mut buf).is_ok() {
                    g2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Sink { got, stop, thread: Some(thread) }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Media-like sender: 200,000 32-byte datagrams, unconnected sendto, one destination.
const MEDIA_SENDER: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
d=(sys.argv[1],int(sys.argv[2])); b=b'm'*32; n=0
for i in range(200000):
    s.sendto(b,d); n+=1
print('sent',n,flush=True)
"#;

#[test]
fn udp_heavy_sender_to_one_peer_raises_nothing() {
    let _g = lab_lock();
    let lab = Lab::new();
    let port = 9400;
    let sink = Sink::start((lab.target_ip, port));
    let agent = start_lab_agent(&lab);
    let t = lab.target_ip.to_string();
    lab.assert_targets(&t);
    let child = lab.spawn(&["/usr/bin/python3", "-c", MEDIA_SENDER, &t, &port.to_string()]);
    let pid = child.id();
    let out = finish_child(child, 120);
    assert_ok(&out, "media-like UDP sender");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 200000"), "{out:?}");
    std::thread::sleep(Duration::from_secs(4));
    let got = sink.got.load(Ordering::Relaxed);
    assert!(got >= 10_000, "the datagrams crossed the lab veth: the sink read only {got}");
    let (alerts, stderr) = agent.stop();
    let bad: Vec<&Value> = alerts
        .iter()
        .filter(|v| names_process(v, pid) || v["source"]["ip"] == lab.attacker_ip.to_string())
        .collect();
    assert!(bad.is_empty(), "a UDP stream to one peer raised alerts (sink read {got}):\n{bad:#?}\n{stderr}");
    eprintln!("media-like sender: 200000 datagrams sent, {got} read by the sink, no alert");
}

/// DNS-like server: answers every query with the question echoed and one A record (QR, RA set).
const DNS_SERVER: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind((sys.argv[1],int(sys.argv[2])))
print('ready',flush=True)
while True:
    q,a=s.recvfrom(512)
    if len(q)<12: continue
    r=q[:2]+b'\x81\x80'+q[4:6]+b'\x00\x01\x00\x00\x00\x00'+q[12:]+b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04'+bytes([10,77,0,53])
    s.sendto(r,a)
"#;

/// DNS clients: `per` sockets on each source address, one A query each, counts the answers.
const DNS_CLIENTS: &str = r#"import socket,struct,sys
srv=(sys.argv[1],int(sys.argv[2])); srcs=sys.argv[3].split(','); per=int(sys.argv[4])
socks=[]
for a in srcs:
    for j in range(per):
        c=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); c.bind((a,0)); c.settimeout(2); socks.append(c)
ok=0; pairs=set()
for i,c in enumerate(socks):
    name=b''.join(bytes([len(l)])+l for l in [b'host%d'%i,b'lab',b'example'])+b'\x00'
    q=struct.pack('>HHHHHH',i&0xffff,0x0100,1,0,0,0)+name+b'\x00\x01\x00\x01'
    c.sendto(q,srv); pairs.add(c.getsockname())
    try:
        r=c.recv(512)
        if r[:2]==q[:2] and r[2]&0x80: ok+=1
    except socket.timeout: pass
print('clients',len(pairs),'answered',ok,flush=True)
"#;

#[test]
fn dns_like_server_answering_500_clients_is_not_an_outbound_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let n = lab.id;
    // 16 client addresses in the lab namespace (10.78.N.10-25) with a root-side route on the lab
    // veth (deleted with it), so the server's answers go back into the lab.
    let srcs: Vec<String> = (10..26).map(|h| format!("10.78.{n}.{h}")).collect();
    for a in &srcs {
        let o = Command::new("ip").args(["-n", &lab.netns, "addr", "add", &format!("{a}/32"), "dev", &lab.atk_veth]).output().expect("ip");
        assert_ok(&o, "client address");
    }
    let o = Command::new("ip").args(["route", "add", &format!("10.78.{n}.0/24"), "dev", &lab.root_veth]).output().expect("ip");
    assert_ok(&o, "root-side route to the clients");

    let agent = start_lab_agent(&lab);
    let srv_ip = lab.target_ip.to_string();
    lab.assert_targets(&srv_ip);
    // The server runs in the agent's (root) namespace, bound to the lab target address.
    let mut server = Command::new("/usr/bin/python3")
        .args(["-c", DNS_SERVER, &srv_ip, "53"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the DNS-like server");
    let spid = server.id();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().expect("piped")), &mut line).expect("read");
    assert_eq!(line.trim(), "ready", "DNS-like server did not start");

    // The clients run as `nobody`: the agent groups short-lived processes by (uid, executable,
    // parent), and the server and the clients are both python3 children of this test.
    let child = lab.spawn_as("nobody", &["/usr/bin/python3", "-c", DNS_CLIENTS, &srv_ip, "53", &srcs.join(","), "33"]);
    let out = finish_child(child, 120);
    assert_ok(&out, "DNS clients");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nums: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(nums.len() == 2 && nums[0] >= 500 && nums[1] >= 500, "528 clients, ≥ 500 answered: {text}");
    std::thread::sleep(Duration::from_secs(5));
    let _ = server.kill();
    let _ = server.wait();
    let (alerts, stderr) = agent.stop();
    let bad: Vec<&Value> = alerts.iter().filter(|v| names_process(v, spid)).collect();
    assert!(
        bad.is_empty(),
        "the DNS-like server (pid {spid}, {text}) was reported as scanning its clients:\n{}\n{stderr}",
        dump(&bad.into_iter().cloned().collect::<Vec<_>>())
    );
    eprintln!("dns-like server: {}, no alert names it", text.trim());
}

/// The control: one datagram to each of ports 1-300 of the target, unconnected sendto.
const UDP_SCAN: &str = r#"import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
for p in range(1,301):
    s.sendto(b'probe',(sys.argv[1],p))
print('done',flush=True)
"#;

/// Run `script` (a python UDP scan of ports 1-300 of the lab target) and check it is an
/// `outbound_scan` attributed to that python process with a sensible port count.
fn assert_udp_scan_attributed(script: &str, what: &str) {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = lab.target_ip.to_string();
    lab.assert_targets(&t);
    let child = lab.spawn(&["/usr/bin/python3", "-c", script, &t]);
    let pid = child.id();
    assert_ok(&finish_child(child, 60), what);
    let a = expect_alert(
        agent.wait_for(|v| is_outbound(v) && proc_of(v)["tgid"].as_u64() == Some(u64::from(pid)), Duration::from_secs(10)),
        &format!("outbound_scan for the {what}"),
        &agent,
    );
    let p = proc_of(&a);
    assert!(p["exe"].as_str().unwrap_or("").contains("python3"), "{a}");
    assert_eq!(p["uid"].as_u64(), Some(0), "{a}");
    assert_eq!(a["direction"], "outbound", "{a}");
    let hosts = a["targets"]["sample_hosts"].as_array().expect("sample_hosts");
    assert!(hosts.iter().all(|h| h.as_str() == Some(t.as_str())), "targets are the lab host: {a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let ports = alerts
        .iter()
        .filter(|v| is_outbound(v) && proc_of(v)["tgid"].as_u64() == Some(u64::from(pid)))
        .filter_map(|v| v["targets"]["port_count"].as_f64())
        .fold(0.0, f64::max);
    assert!(ports > 0.45 * 300.0 && ports <= 1.3 * 300.0, "port_count {ports} for 300 ports:\n{}", dump(&alerts));
}

#[test]
fn udp_port_scan_from_a_local_process_is_an_attributed_outbound_scan() {
    assert_udp_scan_attributed(UDP_SCAN, "python UDP port scan");
}

/// The same scan through sendmsg(2) (the call DNS / QUIC servers and some tools use for
/// unconnected datagrams): the sendmsg hook judges its destination like sendto's.
const UDP_SCAN_SENDMSG: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in range(1, 301):
    s.sendmsg([b'probe'], [], 0, (sys.argv[1], p))
print('done',flush=True)
"#;

#[test]
fn udp_port_scan_with_sendmsg_is_an_attributed_outbound_scan() {
    assert_udp_scan_attributed(UDP_SCAN_SENDMSG, "python sendmsg UDP port scan");
}
