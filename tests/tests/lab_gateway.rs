//! Tier (c): gateway mode. A client namespace reaches a server namespace only through a middle
//! (gateway) namespace that forwards (`net.ipv4.ip_forward=1` set in that namespace, which the
//! test made). The real agent runs inside the gateway namespace with XDP on both of its veths,
//! so it sees every flow in both directions, and no packet is for the gateway itself.
//!
//! * Three benign clients use two real services behind the gateway (python3 -m http.server via
//!   curl, and a TCP echo service with data and FIN): nothing is raised.
//! * A real `nmap -sS` from the client namespace to the server namespace is a vertical scan
//!   whose failure ratio comes from the replies: the closed ports' RSTs are failures, the two
//!   open services' SYN-ACKs successes.
//!
//! LAB.md: every namespace, veth and address is the test's own (10.79.N.0/24 client side,
//! 10.80.N.0/24 server side, N = the lab slot this test claimed); nothing leaves them; the
//! namespaces are deleted on teardown, failures included.
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

/// The three namespaces; dropping it kills what runs in them and deletes them.
struct Topo {
    client: String,
    gw: String,
    server: String,
    /// Gateway-side veth ends (the agent attaches to both).
    gw_client_if: String,
    gw_server_if: String,
    n: u32,
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) -> Output {
    let o = sh(args);
    assert_ok(&o, &format!("{args:?}"));
    o
}

fn kill_ns(ns: &str) {
    let o = sh(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            // SAFETY: kill(2) of a process inside a namespace this test created.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

impl Topo {
    fn new(n: u32) -> Topo {
        let t = Topo {
            client: format!("swgc{n}"),
            gw: format!("swgw{n}"),
            server: format!("swgs{n}"),
            gw_client_if: format!("gwc{n}"),
            gw_server_if: format!("gws{n}"),
            n,
        };
        // Leftovers of a crashed run with the same slot.
        for ns in [&t.client, &t.gw, &t.server] {
            kill_ns(ns);
        }
        for ns in [&t.client, &t.gw, &t.server] {
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (c, g, s) = (t.client.as_str(), t.gw.as_str(), t.server.as_str());
        must(&["ip", "-n", g, "link", "add", &t.gw_client_if, "type", "veth", "peer", "name", "eth0", "netns", c]);
        must(&["ip", "-n", g, "link", "add", &t.gw_server_if, "type", "veth", "peer", "name", "eth0", "netns", s]);
        let (cn, sn) = (format!("10.79.{n}"), format!("10.80.{n}"));
        // Client side: three client addresses and the attacker's.
        for a in ["2", "3", "4", "9"] {
            must(&["ip", "-n", c, "addr", "add", &format!("{cn}.{a}/24"), "dev", "eth0"]);
        }
        must(&["ip", "-n", g, "addr", "add", &format!("{cn}.1/24"), "dev", &t.gw_client_if]);
        must(&["ip", "-n", g, "addr", "add", &format!("{sn}.1/24"), "dev", &t.gw_server_if]);
        must(&["ip", "-n", s, "addr", "add", &format!("{sn}.2/24"), "dev", "eth0"]);
        for (ns, dev) in [(c, "eth0"), (g, t.gw_client_if.as_str()), (g, t.gw_server_if.as_str()), (s, "eth0")] {
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Only the lab prefixes are routed (no default route anywhere).
        must(&["ip", "-n", c, "route", "add", &format!("{sn}.0/24"), "via", &format!("{cn}.1")]);
        must(&["ip", "-n", s, "route", "add", &format!("{cn}.0/24"), "via", &format!("{sn}.1")]);
        // Forwarding on in the gateway namespace only (a per-namespace setting).
        must(&["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let ok = (0..40).any(|_| {
            sh(&["ip", "netns", "exec", c, "ping", "-c", "1", "-W", "1", "-n", &format!("{sn}.2")]).status.success() || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        });
        assert!(ok, "client cannot reach the server through the gateway");
        t
    }

    fn server_ip(&self) -> String {
        format!("10.80.{}.2", self.n)
    }

    fn client_ip(&self, a: u8) -> String {
        format!("10.79.{}.{a}", self.n)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut v = vec!["timeout", "120", "ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.client, &self.gw, &self.server] {
            kill_ns(ns);
        }
    }
}

/// TCP echo service: answers every connection's data, closes when the client does.
const ECHO: &str = "import socketserver,sys\n\
class H(socketserver.StreamRequestHandler):\n    def handle(self):\n        for l in self.rfile:\n            self.wfile.write(l)\n\
socketserver.ThreadingTCPServer.allow_reuse_address=True\n\
socketserver.ThreadingTCPServer((sys.argv[1],int(sys.argv[2])),H).serve_forever()\n";

/// Echo client: `n` connections from `src`, each sending two lines and closing (FIN).
const ECHO_CLIENT: &str = "import socket,sys\n\
src,dst,port,n=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4])\n\
for i in range(n):\n    s=socket.create_connection((dst,port),timeout=5,source_address=(src,0))\n    s.sendall(b'hello %d\\n' % i); s.recv(100); s.sendall(b'bye\\n'); s.recv(100)\n    s.shutdown(socket.SHUT_WR); s.recv(100); s.close()\n";

const HTTP_PORT: &str = "8080";
const ECHO_PORT: &str = "7007";

/// Incidents close 4 s after their last finding, so the scan's final line (with every outcome
/// the replies gave) comes within the test's wait; the first line goes out at the kernel's
/// threshold event, before most replies are in.
const CONFIG: &str = "[alerts]\nclose_after = \"4s\"\nupdate_interval = \"2s\"\n";

fn start_agent(t: &Topo) -> AgentProc {
    let bin = scanwatch_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let cfg = format!("/tmp/scanwatch-lab-gateway-{}.toml", t.n);
    std::fs::write(&cfg, CONFIG).expect("write config");
    let agent = AgentProc::start(
        std::path::Path::new("ip"),
        &["netns", "exec", &t.gw, bin, "run", "-c", &cfg, "-i", &t.gw_client_if, "-i", &t.gw_server_if, "--no-outbound"],
    );
    let err = agent.stderr();
    for i in [&t.gw_client_if, &t.gw_server_if] {
        assert!(
            err.contains(&format!("scanwatch: interface {i}: gateway (detected: ipv4")),
            "{i} detected as a gateway interface:\n{err}"
        );
    }
    assert!(err.contains(&format!("modes: {}=gateway,{}=gateway", t.gw_client_if, t.gw_server_if)), "{err}");
    agent
}

fn wait_port(t: &Topo, port: &str) {
    let ok = (0..50).any(|_| {
        let o = t.exec(&t.client, &["curl", "-s", "-o", "/dev/null", "--max-time", "1", &format!("telnet://{}:{port}", t.server_ip())]);
        // curl's telnet exits 0 or 28 (timeout) once connected; 7 = refused.
        o.status.code() != Some(7) || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(ok, "service on {port} never came up");
}

#[test]
fn gateway_benign_clients_raise_nothing_and_a_syn_scan_through_it_has_a_real_failure_ratio() {
    let _g = lab_lock();
    let lab = Lab::new();
    let t = Topo::new(lab.id);
    let server = t.server_ip();
    let _http = t.spawn(&t.server, &["python3", "-m", "http.server", HTTP_PORT, "--bind", &server]);
    let _echo = t.spawn(&t.server, &["python3", "-c", ECHO, &server, ECHO_PORT]);
    wait_port(&t, HTTP_PORT);
    wait_port(&t, ECHO_PORT);

    let agent = start_agent(&t);

    // Benign: three clients, each 15 HTTP requests (separate connections) and 15 echo sessions.
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for a in [2u8, 3, 4] {
            let (t, server) = (&t, &server);
            s.spawn(move || {
                let src = t.client_ip(a);
                for _ in 0..15 {
                    let o = t.exec(
                        &t.client,
                        &["curl", "-sf", "-o", "/dev/null", "--max-time", "5", "--interface", &src, &format!("http://{server}:{HTTP_PORT}/")],
                    );
                    assert_ok(&o, "curl through the gateway");
                }
                let o = t.exec(&t.client, &["python3", "-c", ECHO_CLIENT, &src, server, ECHO_PORT, "15"]);
                assert_ok(&o, "echo client through the gateway");
            });
        }
    });
    eprintln!("benign traffic: 90 connections through the gateway in {:?}", t0.elapsed());
    // Past the reply tracker's timeout (3 s) and several sweeps.
    std::thread::sleep(Duration::from_secs(6));
    let benign = agent.alerts();
    assert!(benign.is_empty(), "benign clients through the gateway raised alerts:\n{}", dump(&benign));

    // A real SYN scan through the gateway: 300 ports, two of them open.
    let attacker = t.client_ip(9);
    let ports = "1-150,7000-7075,8050-8123";
    let t1 = Instant::now();
    let o = t.exec(&t.client, &["nmap", "-sS", "-n", "-Pn", "-T4", "--max-retries", "1", "-S", &attacker, "-e", "eth0", "-p", ports, &server]);
    assert_ok(&o, "nmap -sS through the gateway");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("{ECHO_PORT}/tcp open")) && out.contains(&format!("{HTTP_PORT}/tcp open")), "nmap saw both services:\n{out}");
    let alert = agent.wait_for(
        |v| v["kind"] == "vertical_scan" && v["source"]["ip"] == attacker.as_str() && v["counts"]["successes"].as_u64().unwrap_or(0) >= 2,
        Duration::from_secs(20),
    );
    let all = agent.alerts();
    let Some(alert) = alert else { panic!("no vertical_scan with outcomes for {attacker}:\n{}", dump(&all)) };
    eprintln!("scan detected {:?} after nmap started; alert: {alert}", t1.elapsed());
    let c = &alert["counts"];
    let (fail, succ) = (c["failures"].as_u64().unwrap_or(0), c["successes"].as_u64().unwrap_or(0));
    let ratio = c["fail_ratio"].as_f64().expect("fail_ratio known");
    eprintln!("failures {fail}, successes {succ}, fail_ratio {ratio}");
    assert!(fail >= 100, "closed ports' RSTs counted as failures: {alert}");
    assert!((2..=4).contains(&succ), "the two open services counted as successes: {alert}");
    assert!(ratio > 0.9 && ratio < 1.0, "a real ratio, neither all-failed nor unknown: {alert}");
    // Nothing about the benign clients, nothing of the stealth / evasion kinds a gateway used
    // to raise for forwarded FIN-ACKs and bare ACKs.
    let clients: Vec<String> = [2u8, 3, 4].iter().map(|a| t.client_ip(*a)).collect();
    let wrong: Vec<&Value> = all
        .iter()
        .filter(|v| {
            clients.iter().any(|c| v["source"]["ip"] == c.as_str())
                || v["kind"] == "stealth_scan"
                || v["kind"] == "evasion"
                || v["source"]["ip"] == server.as_str()
        })
        .collect();
    assert!(wrong.is_empty(), "wrong alerts: {wrong:?}");
    let (_, err) = agent.stop();
    let summary = err.lines().rev().find(|l| l.contains("forwarded_records")).unwrap_or("");
    eprintln!("agent counters: {summary}");
    drop(t);
    drop(lab);
}
