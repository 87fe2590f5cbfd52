//! Tier (c), protocol depth: real services in the root namespace (Python's `http.server` and
//! `openssl s_server`), real clients and scanners in the lab's attacker namespace, the real agent
//! on the root-side veth (first payloads from XDP).
//!
//! * `masscan_nmap_sv_then_traversal_across_a_restart_is_a_transition`: masscan (discovery) →
//!   `nmap -sV` against HTTP and TLS (`enumeration`) → agent restart (actor store on disk) →
//!   a path-traversal request → one `transition` with the three phases, discovery from before
//!   the restart.
//! * `curl_and_python_tls_clients_have_distinct_ja4_and_browsing_is_quiet`: two extra lab
//!   sources, one using curl and one Python, each enumerating (zgrab user agent), doing a TLS
//!   handshake and a traversal: their `transition` alerts carry one JA4 each, different, and
//!   Python's equals the JA4 of a ClientHello Python writes offline with the same settings; a
//!   third source browsing pages over HTTP and TLS with curl raises nothing; a fourth source
//!   with curl's JA4 and the same TCP fingerprint, no scan of its own, sends a traversal: its
//!   `transition` carries the curl source's enumeration (JA4 + TCP fingerprint cluster).
//!
//! * `nmap_default_scripts_and_http_title_ssl_cert_are_enumeration`: `nmap -sC` and
//!   `nmap --script http-title,ssl-cert` against the HTTP and TLS services: `enumeration` from each
//!   source, its evidence naming the Nmap Scripting Engine.
//! * `local_nmap_sweep_version_scan_and_nse_traversal_is_one_process_timeline`: the agent's
//!   outbound hooks (no XDP payloads involved): one local `nmap -sT -sV --script http-passwd`
//!   process sweeps 300 ports (`outbound_scan`), probes the HTTP service's version (`enumeration`)
//!   and sends NSE's traversal requests — one `transition` with the three phases, carrying the
//!   nmap process.
//!
//! The first-contact tier holds a new source's first SYN, so each source makes one warm-up
//! connection first (its payload is not seen; documented in the README).
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

const HTTP_PORT: u16 = 8080;
const TLS_PORT: u16 = 8443;
const WAIT: Duration = Duration::from_secs(30);

/// A server process in the root namespace, killed (by pid) on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Working directory with a few pages and a self-signed certificate.
fn site(lab: &Lab) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scanwatch-depth-{}-{}", std::process::id(), lab.id));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("site dir");
    for p in ["index.html", "a.html", "b.html", "c.html"] {
        std::fs::write(dir.join(p), format!("<html><body>{p}</body></html>\n")).expect("page");
    }
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=lab.test"])
        .current_dir(&dir)
        .output()
        .expect("openssl req");
    assert_ok(&out, "openssl req");
    dir
}

fn services(lab: &Lab, dir: &Path) -> (Service, Service) {
    let t = lab.target_ip.to_string();
    let http = Command::new("python3")
        .args(["-m", "http.server", &HTTP_PORT.to_string(), "--bind", &t])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let tls = Command::new("openssl")
        .args(["s_server", "-accept", &format!("{t}:{TLS_PORT}"), "-cert", "c.pem", "-key", "k.pem", "-WWW", "-quiet"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let (http, tls) = (Service(http), Service(tls));
    // Both listening before anything connects.
    for port in [HTTP_PORT, TLS_PORT] {
        let addr = std::net::SocketAddr::from((lab.target_ip, port));
        let up = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "service on {addr} did not come up");
    }
    (http, tls)
}

fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("scanwatch.toml");
    std::fs::write(
        &cfg,
        format!("[depth]\nstore_path = \"{}\"\nsave_interval = \"1s\"\n", dir.join("actors.json").display()),
    )
    .expect("config");
    cfg
}

fn start_agent(lab: &Lab, cfg: &Path) -> AgentProc {
    AgentProc::start(
        &scanwatch_bin(),
        &["run", "--interface", &lab.root_veth, "--no-outbound", "--config", &cfg.to_string_lossy()],
    )
}

fn from(v: &Value, ip: &str) -> bool {
    v["source"]["ip"].as_str() == Some(ip)
}

fn phases(v: &Value) -> Vec<String> {
    v["depth"]["phases"].as_array().map_or(Vec::new(), |p| p.iter().filter_map(|x| x["phase"].as_str().map(String::from)).collect())
}

fn ja4s(v: &Value) -> Vec<String> {
    v["depth"]["ja4"].as_array().map_or(Vec::new(), |p| p.iter().filter_map(|x| x.as_str().map(String::from)).collect())
}

/// Extra source addresses in the attacker namespace, routed back through the lab veth.
fn add_source(lab: &Lab, last: u8) -> String {
    let ip = Ipv4Addr::new(10, 78, lab.id as u8, last).to_string();
    assert_ok(&lab.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", &lab.atk_veth]), "add source address");
    let out = Command::new("ip").args(["route", "replace", &format!("{ip}/32"), "dev", &lab.root_veth]).output().expect("ip route");
    assert_ok(&out, "route to extra source");
    ip
}

fn curl(lab: &Lab, src: &str, extra: &[&str], url: &str) {
    let mut args = vec!["curl", "-sk", "--max-time", "10", "-o", "/dev/null", "--interface", src];
    args.extend_from_slice(extra);
    args.push(url);
    assert_ok(&lab.exec_timeout(20, &args), &format!("curl {url}"));
}

#[test]
fn masscan_nmap_sv_then_traversal_across_a_restart_is_a_transition() {
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = site(&lab);
    let _svc = services(&lab, &dir);
    let cfg = config(&dir);
    let t = lab.target_ip.to_string();
    let me = lab.attacker_ip.to_string();

    let agent = start_agent(&lab, &cfg);
    // Discovery: masscan over 300 ports including the two services.
    assert_ok(&lab.masscan("1-300,8080,8443", &format!("{t}/32"), 5000), "masscan");
    let scan = agent.wait_for(|v| from(v, &me) && v["kind"] == "vertical_scan", WAIT);
    scanwatch_tests::expect_alert(scan, "vertical_scan from masscan", &agent);
    // Enumeration: nmap's version detection against both services.
    let out = lab.nmap(&["-sV", "-Pn", "-n", "-p", "8080,8443"], &t);
    assert_ok(&out, "nmap -sV");
    let en = agent.wait_for(|v| from(v, &me) && v["kind"] == "enumeration", WAIT);
    let en = scanwatch_tests::expect_alert(en, "enumeration from nmap -sV", &agent);
    assert!(en["depth"]["phases"].to_string().contains("nmap:"), "enumeration names nmap probes: {en}");
    let (before, err) = agent.stop();
    assert!(before.iter().all(|a| a["kind"] != "transition"), "no transition before the exploit:\n{}", dump(&before));
    let stored = std::fs::read_to_string(dir.join("actors.json")).unwrap_or_else(|e| panic!("actor store not written: {e}\n{err}"));
    assert!(stored.contains(&me), "the store holds the attacker: {stored}");

    // A new agent process (fresh kernel maps, store from disk), then the exploit-shaped request.
    let agent = start_agent(&lab, &cfg);
    curl(&lab, &me, &[], &format!("http://{t}:{HTTP_PORT}/"));
    curl(&lab, &me, &["--path-as-is"], &format!("http://{t}:{HTTP_PORT}/../../../../etc/passwd"));
    let tr = agent.wait_for(|v| from(v, &me) && v["kind"] == "transition", WAIT);
    let tr = scanwatch_tests::expect_alert(tr, "transition after the restart", &agent);
    assert_eq!(phases(&tr), ["discovery", "enumeration", "exploitation"], "{tr}");
    assert_eq!(tr["severity"], "critical", "{tr}");
    assert!(tr["depth"]["phases"][0]["evidence"].to_string().contains("vertical_scan"), "{tr}");
    assert!(tr["depth"]["phases"][2]["evidence"].to_string().contains("path_traversal"), "{tr}");
    let first_scan = tr["depth"]["phases"][0]["first"].as_str().unwrap_or_default().to_string();
    assert!(first_scan <= en["time"].as_str().unwrap_or_default().to_string(), "discovery precedes enumeration: {tr}");
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// JA4 of the ClientHello Python's `ssl` writes with the settings of the lab's Python client,
/// produced offline (memory BIO) and parsed by the agent's parser.
fn python_ja4_offline() -> String {
    let script = "import ssl\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\n\
i, o = ssl.MemoryBIO(), ssl.MemoryBIO()\ns = ctx.wrap_bio(i, o, server_hostname='lab.test')\n\
try:\n    s.do_handshake()\nexcept ssl.SSLWantReadError:\n    pass\nprint(o.read().hex())\n";
    let out = Command::new("python3").args(["-c", script]).output().expect("python3");
    assert_ok(&out, "python ClientHello");
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
    scanwatch::depth::parse_client_hello(&bytes).expect("python ClientHello parses").ja4()
}

const PY_CLIENT: &str = r#"
import http.client, socket, ssl, sys
src, host = sys.argv[1], sys.argv[2]
def get(path, ua):
    c = http.client.HTTPConnection(host, 8080, timeout=10, source_address=(src, 0))
    c.request("GET", path, headers={"User-Agent": ua})
    c.getresponse().read()
    c.close()
get("/", "Python-urllib/3.11")
get("/", "Mozilla/5.0 zgrab/0.x")
get("/a.html", "Mozilla/5.0 zgrab/0.x")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((host, 8443), timeout=10, source_address=(src, 0))
t = ctx.wrap_socket(s, server_hostname="lab.test")
t.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
t.recv(100)
t.close()
get("/../../../../etc/passwd", "Python-urllib/3.11")
"#;

#[test]
fn curl_and_python_tls_clients_have_distinct_ja4_and_browsing_is_quiet() {
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = site(&lab);
    let _svc = services(&lab, &dir);
    let cfg = config(&dir);
    let t = lab.target_ip.to_string();
    let (c_src, p_src, b_src, d_src) = (add_source(&lab, 3), add_source(&lab, 4), add_source(&lab, 5), add_source(&lab, 8));
    let agent = start_agent(&lab, &cfg);

    // curl: warm-up, two banner-grab requests (zgrab user agent), a TLS fetch, a traversal.
    let http = format!("http://{t}:{HTTP_PORT}");
    curl(&lab, &c_src, &[], &format!("{http}/"));
    curl(&lab, &c_src, &["-A", "Mozilla/5.0 zgrab/0.x"], &format!("{http}/"));
    curl(&lab, &c_src, &["-A", "Mozilla/5.0 zgrab/0.x"], &format!("{http}/a.html"));
    curl(&lab, &c_src, &[], &format!("https://{t}:{TLS_PORT}/index.html"));
    curl(&lab, &c_src, &["--path-as-is"], &format!("{http}/../../../../etc/passwd"));
    // Python: the same story with its own HTTP and TLS stacks.
    let out = lab.exec_timeout(60, &["python3", "-c", PY_CLIENT, &p_src, &t]);
    assert_ok(&out, "python client");
    // Benign browsing: pages over HTTP and TLS.
    curl(&lab, &b_src, &[], &format!("{http}/"));
    for p in ["index.html", "a.html", "b.html", "c.html"] {
        curl(&lab, &b_src, &[], &format!("{http}/{p}"));
        curl(&lab, &b_src, &[], &format!("https://{t}:{TLS_PORT}/{p}"));
    }

    let c = agent.wait_for(|v| from(v, &c_src) && v["kind"] == "transition", WAIT);
    let c = scanwatch_tests::expect_alert(c, "transition from the curl source", &agent);
    let p = agent.wait_for(|v| from(v, &p_src) && v["kind"] == "transition", WAIT);
    let p = scanwatch_tests::expect_alert(p, "transition from the Python source", &agent);
    for a in [&c, &p] {
        assert_eq!(phases(a), ["enumeration", "exploitation"], "{a}");
        assert_eq!(a["severity"], "high", "{a}");
    }
    let (cj, pj) = (ja4s(&c), ja4s(&p));
    assert_eq!(cj.len(), 1, "one TLS client from the curl source: {c}");
    assert_eq!(pj.len(), 1, "one TLS client from the Python source: {p}");
    assert_ne!(cj[0], pj[0], "curl and Python have different JA4s");
    assert_eq!(pj[0], python_ja4_offline(), "Python's JA4 in the alert equals its offline ClientHello's");
    assert!(pj[0].starts_with("t13d") && cj[0].starts_with("t13i"), "SNI sent by Python, not by curl to an address: {cj:?} {pj:?}");
    eprintln!("JA4 curl {} / python {}", cj[0], pj[0]);

    // A fourth source with curl's TLS stack and the same kernel TCP stack, no scan of its own:
    // its ClientHello puts it in the curl source's JA4 + TCP fingerprint cluster, so its
    // traversal joins the curl source's enumeration (the benign source is in the cluster too,
    // but adds no phase and is not named).
    curl(&lab, &d_src, &[], &format!("{http}/"));
    curl(&lab, &d_src, &[], &format!("https://{t}:{TLS_PORT}/index.html"));
    curl(&lab, &d_src, &["--path-as-is"], &format!("{http}/../../../../etc/passwd"));
    let d = agent.wait_for(|v| from(v, &d_src) && v["kind"] == "transition", WAIT);
    let d = scanwatch_tests::expect_alert(d, "transition from the curl-cluster source", &agent);
    assert_eq!(phases(&d), ["enumeration", "exploitation"], "{d}");
    let cluster = d["depth"]["cluster"].as_str().unwrap_or_default();
    assert!(cluster.starts_with(&format!("ja4:{}+tcp:", cj[0])), "cluster of curl's JA4: {d}");
    assert_eq!(d["source"]["related"], serde_json::json!([c_src]), "the curl source's phases joined: {d}");

    std::thread::sleep(Duration::from_secs(2));
    let (alerts, _) = agent.stop();
    let benign: Vec<&Value> = alerts.iter().filter(|a| from(a, &b_src)).collect();
    assert!(benign.is_empty(), "benign browsing raised alerts:\n{}", benign.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn nse_evidence(v: &Value) -> bool {
    v["depth"]["phases"].to_string().to_ascii_lowercase().contains("nmap scripting engine")
}

#[test]
fn nmap_default_scripts_and_http_title_ssl_cert_are_enumeration() {
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = site(&lab);
    let _svc = services(&lab, &dir);
    let cfg = config(&dir);
    let t = lab.target_ip.to_string();
    let (sc_src, title_src) = (add_source(&lab, 6), add_source(&lab, 7));
    let agent = start_agent(&lab, &cfg);
    let http = format!("http://{t}:{HTTP_PORT}/");
    for src in [&sc_src, &title_src] {
        curl(&lab, src, &[], &http); // warm-up (first contact)
    }
    let ports = format!("{HTTP_PORT},{TLS_PORT}");
    let out = lab.nmap(&["-sT", "-Pn", "-n", "-sC", "-p", &ports, "-S", &sc_src, "-e", &lab.atk_veth], &t);
    assert_ok(&out, "nmap -sC");
    eprintln!("nmap -sC:\n{}", String::from_utf8_lossy(&out.stdout));
    let a = agent.wait_for(|v| from(v, &sc_src) && v["kind"] == "enumeration", WAIT);
    let a = scanwatch_tests::expect_alert(a, "enumeration from nmap -sC", &agent);
    assert!(nse_evidence(&a), "evidence names the Nmap Scripting Engine: {a}");
    let out = lab.nmap(
        &["-sT", "-Pn", "-n", "--script", "http-title,ssl-cert", "-p", &ports, "-S", &title_src, "-e", &lab.atk_veth],
        &t,
    );
    assert_ok(&out, "nmap --script http-title,ssl-cert");
    let out_s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out_s.contains("http-title") && out_s.contains("ssl-cert"), "both scripts ran:\n{out_s}");
    let b = agent.wait_for(|v| from(v, &title_src) && v["kind"] == "enumeration", WAIT);
    let b = scanwatch_tests::expect_alert(b, "enumeration from nmap --script http-title,ssl-cert", &agent);
    assert!(nse_evidence(&b), "evidence names the Nmap Scripting Engine: {b}");
    // ssl-cert's ClientHello is fingerprinted.
    let ja4 = ja4s(&b);
    assert!(ja4.iter().any(|j| j.starts_with('t')), "nmap's TLS ClientHello has a JA4: {b}");
    eprintln!("nmap --script http-title,ssl-cert: {}", b["depth"]);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for a spawned child, SIGKILLed after `secs`.
fn finish(mut child: Child, secs: u64) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().expect("wait for lab child")
}

#[test]
fn local_nmap_sweep_version_scan_and_nse_traversal_is_one_process_timeline() {
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = site(&lab);
    let _svc = services(&lab, &dir);
    let cfg = config(&dir);
    let t = lab.target_ip.to_string();
    // Outbound hooks on: the agent attributes the local nmap process.
    let agent = AgentProc::start(&scanwatch_bin(), &["run", "--interface", &lab.root_veth, "--config", &cfg.to_string_lossy()]);
    // Version detection of the TLS service alone takes nmap over a minute (its SSL probes wait
    // out their timeouts against `s_server -WWW`): the sweep covers the HTTP service only.
    let ports = format!("1-300,{HTTP_PORT}");
    let child = lab.spawn(&[
        "nmap", "-sT", "-sV", "--script", "http-passwd", "-p", &ports, "-T4", "-n", "-Pn", "--host-timeout", "90s", &t,
    ]);
    let pid = child.id();
    let out = finish(child, 120);
    assert_ok(&out, "nmap -sT -sV --script http-passwd");
    eprintln!("nmap:\n{}", String::from_utf8_lossy(&out.stdout));
    let mine = |v: &Value| v["source"]["process"]["tgid"].as_u64() == Some(u64::from(pid));
    let tr = agent.wait_for(|v| mine(v) && v["kind"] == "transition", WAIT);
    let tr = scanwatch_tests::expect_alert(tr, "transition for the local nmap process", &agent);
    assert_eq!(tr["direction"], "outbound", "{tr}");
    assert!(tr["source"]["process"]["exe"].as_str().unwrap_or_default().ends_with("/nmap"), "{tr}");
    assert_eq!(phases(&tr), ["discovery", "enumeration", "exploitation"], "{tr}");
    assert_eq!(tr["severity"], "critical", "{tr}");
    let ph = &tr["depth"]["phases"];
    assert!(ph[0]["evidence"].to_string().contains("outbound_scan"), "{tr}");
    assert!(ph[1]["evidence"].to_string().contains("nmap:"), "version probes: {tr}");
    assert!(ph[2]["evidence"].to_string().contains("path_traversal"), "{tr}");
    let (alerts, _) = agent.stop();
    let kinds: Vec<&str> = alerts.iter().filter(|v| mine(v)).filter_map(|v| v["kind"].as_str()).collect();
    for k in ["outbound_scan", "enumeration", "transition"] {
        assert!(kinds.contains(&k), "{k} for the nmap process: {kinds:?}\n{}", dump(&alerts));
    }
    let en = alerts.iter().find(|v| mine(v) && v["kind"] == "enumeration").expect("enumeration");
    assert_eq!(en["direction"], "outbound", "{en}");
    let _ = std::fs::remove_dir_all(&dir);
}
