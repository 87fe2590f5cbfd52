//! Fleet correlation on a real nats-server (JetStream, file store in a temp dir, started by
//! each test on a free port with per-agent users and publish permissions, stopped by PID).
//!
//! * `sweep_over_four_hosts_*`: four lab hosts (one attacker namespace, four veths), one real
//!   agent on each, the real correlator. Benign clients using a service on every host raise
//!   nothing; an nmap sweep giving each host two probes raises exactly one fleet
//!   `horizontal_scan` naming the four agents (and no agent alerts alone); 44 spoofed one-SYN
//!   sources spread over the four hosts raise one fleet `distributed_scan`.
//! * The other tests publish synthetic agent records (built with the agents' own encoder, as the
//!   agents' NATS users, on the agents' subjects) into the real server: a decoy scan spread over
//!   hosts, the server restarted mid-run, a correlator instance killed, bad input and
//!   authentication failures.
//!
//! Root is required for the lab test (namespaces, XDP); without it it fails loudly.
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use scanwatch::fleet::record::{Encoder, Fp, Held, Summary, MAX_FPS, MAX_PORTS};
use scanwatch::fleet::{shard_of, site_shard, Family, Subjects};
use scanwatch_common::cnt;
use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab, LabHost};
use serde_json::Value;

const SHARDS: u32 = 4;
const HOSTS: usize = 4;

// ------------------------------------------------------------------------------------------------
// nats-server
// ------------------------------------------------------------------------------------------------

/// A nats-server with JetStream on a free port; killed by PID and its store removed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    conf: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn agent_user(i: usize) -> String {
    let perms = format!(
        "permissions: {{ publish: {{ allow: [\"scanwatch.src.*.lab.host{i}\", \"scanwatch.dst.*.lab.host{i}\", \"scanwatch.alert.lab.host{i}\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }}"
    );
    format!("    {{ user: host{i}, password: \"pw-host{i}\", {perms} }}\n")
}

impl Nats {
    fn start() -> Nats {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("swfleet-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nats dir");
        let conf = dir.join("nats.conf");
        let mut users = String::from("    { user: correlator, password: \"corr-secret\" }\n");
        for i in 0..HOSTS {
            users.push_str(&agent_user(i));
        }
        let text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\nauthorization {{\n  users: [\n{users}  ]\n}}\n",
            dir.join("js").display()
        );
        std::fs::write(&conf, text).expect("nats conf");
        let mut n = Nats { child: None, port, dir, conf };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("nats log");
        let child = Command::new("nats-server")
            .args(["-c", &self.conf.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server (Debian package nats-server; cargo xtask setup installs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server not listening on {} within 15 s:\n{}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGTERM by PID, wait for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------------
// configs, correlators, synthetic agent records
// ------------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

fn correlator_config(n: &Nats, password: &str) -> PathBuf {
    write(
        &n.dir,
        &format!("correlator-{password}.toml"),
        &format!(
            "[fleet]\nservers = [\"{}\"]\nuser = \"correlator\"\npassword = \"{password}\"\nsite = \"lab\"\nshards = {SHARDS}\nlease = \"2s\"\nack_wait = \"4s\"\nreplay = \"10m\"\nhost_thresholds = [4, 4, 8, 8]\n",
            n.url()
        ),
    )
}

fn agent_config(n: &Nats, i: usize) -> PathBuf {
    write(
        &n.dir,
        &format!("agent{i}.toml"),
        &format!(
            "[agent]\nhostname = \"host{i}\"\n[fleet]\nservers = [\"{}\"]\nuser = \"host{i}\"\npassword = \"pw-host{i}\"\nsite = \"lab\"\nagent_id = \"host{i}\"\npublish_interval = \"500ms\"\nshards = {SHARDS}\n",
            n.url()
        ),
    )
}

fn start_correlator(n: &Nats, instance: &str) -> AgentProc {
    let cfg = correlator_config(n, "corr-secret");
    AgentProc::start(&scanwatch_bin(), &["fleet", "-c", &cfg.display().to_string(), "--instance", instance])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

async fn js_as(n: &Nats, user: &str, password: &str) -> jetstream::Context {
    let c = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(n.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    jetstream::new(c)
}

/// What one agent would publish about one source: a batch on both record families.
struct AgentBatch {
    host: usize,
    enc: Encoder,
    src: IpAddr,
}

impl AgentBatch {
    fn new(host: usize, src: IpAddr) -> AgentBatch {
        AgentBatch { host, enc: Encoder::new(&format!("host{host}"), "lab"), src }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
}

fn summary(src: IpAddr, syn: u32, closed: u32, ports: &[u16], fp: Option<u32>) -> Summary<'static> {
    let mut counts = [0u32; cnt::N];
    counts[cnt::PACKETS] = syn;
    counts[cnt::SYN] = syn;
    counts[cnt::SYN_CLOSED] = closed;
    counts[cnt::FAILED] = closed;
    counts[cnt::SYN_OPEN] = syn - closed;
    let mut p = [0u16; MAX_PORTS];
    p[..ports.len()].copy_from_slice(ports);
    let mut fps = [Fp::default(); MAX_FPS];
    if let Some(h) = fp {
        fps[0] = Fp { hash: h, initial_ttl: 64, tool: 1, text: "v4:ttl=59/64:df=0:win=1024:mss=1460:ws=-:opts=mss:sack=0:ts=0:plen=0" };
    }
    Summary {
        time_ns: now_ns(),
        src,
        first_seen_ns: 12345,
        counts,
        distinct_ports: ports.len() as f32,
        distinct_hosts: 1.0,
        n_ports: ports.len() as u8,
        ports: p,
        n_fp: u8::from(fp.is_some()),
        fps,
    }
}

/// Publish batches as their agents would (own user, own subjects, both families).
async fn publish(n: &Nats, batches: Vec<AgentBatch>) {
    let subjects = Subjects { prefix: "scanwatch".into() };
    for b in batches {
        let js = js_as(n, &format!("host{}", b.host), &format!("pw-host{}", b.host)).await;
        let agent = format!("host{}", b.host);
        let bytes = b.enc.finish();
        for (f, shard) in [(Family::Src, shard_of(b.src, SHARDS)), (Family::Dst, site_shard("lab", SHARDS))] {
            let subject = subjects.records(f, shard, "lab", &agent);
            // Right after a server restart JetStream may need a moment: retry for a while.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = match js.publish(subject.clone(), bytes.clone().into()).await {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => panic!("publish {subject}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }
}

/// The synthetic records of a sweep giving each of the four hosts two probes from `src`.
fn sweep_batches(src: IpAddr) -> Vec<AgentBatch> {
    (0..HOSTS)
        .map(|h| {
            let mut b = AgentBatch::new(h, src);
            b.enc.held(&Held { time_ns: now_ns(), src, dst: None, dport: Some(22), proto: 6, failed: true, fp_hash: 0 });
            b.enc.summary(&summary(src, 2, 1, &[22, 25], None));
            b
        })
        .collect()
}

fn source_is(v: &Value, ip: &str) -> bool {
    v["source"]["ip"].as_str() == Some(ip)
}

fn first_alerts<'a>(alerts: &'a [Value], ip: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|v| source_is(v, ip) && v["update"] == false).collect()
}

/// Every fleet alert stored in the stream.
async fn stored_alerts(n: &Nats) -> Vec<Value> {
    let js = js_as(n, "correlator", "corr-secret").await;
    let stream = js.get_stream("SCANWATCH").await.expect("stream SCANWATCH");
    let c: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "scanwatch.fleet.alert".into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("alert consumer");
    let mut out = Vec::new();
    loop {
        let mut batch = c.fetch().max_messages(500).expires(Duration::from_millis(500)).messages().await.expect("fetch");
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            out.push(serde_json::from_slice(&m.payload).expect("fleet alert is JSON"));
            got += 1;
        }
        if got == 0 {
            return out;
        }
    }
}

fn wait_alert(c: &AgentProc, what: &str, pred: impl Fn(&Value) -> bool, within: Duration) -> Value {
    c.wait_for(pred, within).unwrap_or_else(|| {
        panic!("no {what} within {within:?}\nalerts:\n{}\ncorrelator stderr:\n{}", dump(&c.alerts()), c.stderr())
    })
}

// ------------------------------------------------------------------------------------------------
// real agents
// ------------------------------------------------------------------------------------------------

/// Root-side /32 routes for spoofed lab sources, so replies stay in the lab veth.
struct Routes {
    dev: String,
    addrs: Vec<String>,
}

impl Drop for Routes {
    fn drop(&mut self) {
        for a in &self.addrs {
            let _ = Command::new("ip").args(["route", "del", &format!("{a}/32"), "dev", &self.dev]).stderr(Stdio::null()).status();
        }
    }
}

fn routes(lab: &Lab, addrs: &[String]) -> Routes {
    for a in addrs {
        let st = Command::new("ip").args(["route", "add", &format!("{a}/32"), "dev", &lab.root_veth]).status().expect("ip route");
        assert!(st.success(), "cannot add route {a} dev {}", lab.root_veth);
    }
    Routes { dev: lab.root_veth.clone(), addrs: addrs.to_vec() }
}

#[test]
fn sweep_over_four_hosts_is_one_fleet_horizontal_scan_benign_clients_nothing_spread_one_probe_sources_one_distributed_scan() {
    let _g = lab_lock();
    let nats = Nats::start();
    let lab = Lab::new();
    let extra: Vec<LabHost> = (1..HOSTS).map(|_| lab.add_host()).collect();
    let veths: Vec<String> = std::iter::once(lab.root_veth.clone()).chain(extra.iter().map(|h| h.root_veth.clone())).collect();
    let targets: Vec<Ipv4Addr> = std::iter::once(lab.target_ip).chain(extra.iter().map(|h| h.target_ip)).collect();
    let nets: Vec<String> = std::iter::once(lab.target_net.clone()).chain(extra.iter().map(|h| h.target_net.clone())).collect();
    let correlator = start_correlator(&nats, "c1");
    let agents: Vec<AgentProc> = (0..HOSTS)
        .map(|i| {
            let cfg = agent_config(&nats, i);
            AgentProc::start(&scanwatch_bin(), &["run", "-c", &cfg.display().to_string(), "-i", &veths[i], "--no-outbound"])
        })
        .collect();
    // A service on every host.
    let services: Vec<_> = std::iter::once(lab.serve_tcp(8080)).chain(extra.iter().map(|h| h.serve_tcp(8080))).collect();

    // --- benign: a second lab address connects to the service on every host, 5 times each ----
    let benign = Ipv4Addr::new(10, 78, lab.id as u8, 3);
    assert_ok(&lab.exec(&["ip", "addr", "add", &format!("{benign}/32"), "dev", &lab.atk_veth]), "benign address");
    let _r = routes(&lab, &[benign.to_string()]);
    let script = format!(
        "import socket\nfor r in range(5):\n  for t in {:?}:\n    s = socket.socket(); s.bind(('{benign}', 0)); s.settimeout(2); s.connect((t, 8080)); s.send(b'hi'); s.close()\nprint('done')\n",
        targets.iter().map(|t| t.to_string()).collect::<Vec<_>>()
    );
    assert_ok(&lab.exec(&["python3", "-c", &script]), "benign clients");
    // The servers count accepted connections on their own threads: allow them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !services.iter().all(|s| s.accepted() >= 5) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let served: Vec<u64> = services.iter().map(|s| s.accepted()).collect();
    assert!(served.iter().all(|n| *n >= 5), "every host served the benign client 5 times: {served:?}");

    // --- the sweep: nmap, two ports on each of the four hosts, one probe per port -----------
    let attacker = lab.attacker_ip.to_string();
    for t in &targets {
        assert!(nets.iter().any(|n| n.starts_with(&format!("{}.{}.{}.", t.octets()[0], t.octets()[1], t.octets()[2]))), "{t} is a lab host");
    }
    let mut args = vec!["nmap", "-sS", "-Pn", "-n", "--max-retries", "0", "-p", "22,25"];
    let tstr: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    args.extend(tstr.iter().map(String::as_str));
    assert_ok(&lab.exec_timeout(60, &args), "nmap sweep");
    let a = wait_alert(
        &correlator,
        "fleet horizontal_scan of the sweep",
        |v| source_is(v, &attacker) && v["kind"] == "horizontal_scan",
        Duration::from_secs(30),
    );
    let agents_seen: Vec<&str> = a["agents"].as_array().expect("agents").iter().filter_map(Value::as_str).collect();
    assert_eq!(agents_seen, vec!["lab/host0", "lab/host1", "lab/host2", "lab/host3"], "{a}");
    assert_eq!(a["targets"]["host_count"], 4, "{a}");

    // --- one SYN from each of 44 spoofed sources, spread over the four hosts (11 each) --------
    let spoofed: Vec<(Ipv4Addr, u16, usize)> =
        (0..44u8).map(|i| (Ipv4Addr::new(10, 78, lab.id as u8, 100 + i), 3000 + u16::from(i), usize::from(i) % HOSTS)).collect();
    let addrs: Vec<String> = spoofed.iter().map(|(s, _, _)| s.to_string()).collect();
    let _sr = routes(&lab, &addrs);
    let atk: Vec<&str> = std::iter::once(lab.atk_veth.as_str()).chain(extra.iter().map(|h| h.atk_veth.as_str())).collect();
    let mut script = String::new();
    for (src, port, h) in &spoofed {
        script.push_str(&format!("hping3 -q -I {} -S -c 1 -a {src} -p {port} {} >/dev/null 2>&1 &\n", atk[*h], targets[*h]));
    }
    script.push_str("wait\n");
    assert_ok(&lab.exec_timeout(60, &["bash", "-c", &script]), "spoofed SYNs");
    let d = wait_alert(
        &correlator,
        "fleet distributed_scan of the spoofed sources",
        |v| v["kind"] == "distributed_scan",
        Duration::from_secs(40),
    );
    assert!(d["targets"]["port_count"].as_u64().unwrap_or(0) >= 40, "{d}");
    assert_eq!(d["agent_count"], 4, "{d}");

    std::thread::sleep(Duration::from_secs(4));
    let mut agent_out = Vec::new();
    for (i, ag) in agents.into_iter().enumerate() {
        let (alerts, stderr) = ag.stop();
        assert!(stderr.contains("fleet: agent host"), "agent {i} published:\n{stderr}");
        agent_out.push((alerts, stderr));
    }
    let (alerts, stderr) = correlator.stop();
    // Exactly one fleet actor per activity; nothing about the benign client.
    assert_eq!(first_alerts(&alerts, &attacker).len(), 1, "one horizontal_scan:\n{}\n{stderr}", dump(&alerts));
    assert!(first_alerts(&alerts, &attacker).iter().all(|v| v["kind"] == "horizontal_scan"), "{}", dump(&alerts));
    assert!(alerts.iter().all(|v| !source_is(v, &benign.to_string())), "benign client alerted:\n{}", dump(&alerts));
    assert_eq!(alerts.iter().filter(|v| v["kind"] == "distributed_scan" && v["update"] == false).count(), 1, "{}", dump(&alerts));
    // No agent saw enough to alert on its own: the sweep is only visible fleet-wide.
    for (i, (alerts, stderr)) in agent_out.iter().enumerate() {
        assert!(
            alerts.iter().all(|v| !source_is(v, &attacker) && v["kind"] != "distributed_scan"),
            "agent {i} alerted alone:\n{}\n{stderr}",
            dump(alerts)
        );
    }
}

// ------------------------------------------------------------------------------------------------
// synthetic agent records into the real server
// ------------------------------------------------------------------------------------------------

#[test]
fn decoy_scan_spread_over_hosts_is_one_cluster_and_bad_input_is_counted() {
    let nats = Nats::start();
    let c = start_correlator(&nats, "c1");
    let decoys: Vec<IpAddr> = (10..14).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))).collect();
    // Each host sees two of the four ports from every decoy source (under decoy_min_ports = 3
    // per host); fleet-wide each source probed the same four ports.
    let mut batches = Vec::new();
    // Three hosts: each source's fleet-wide fan-out (3 hosts, 4 ports) stays under the
    // correlator's per-source thresholds, so only the cluster shows.
    for (h, ports) in [(0usize, [21u16, 22]), (1, [23, 25]), (2, [21, 23])] {
        for src in &decoys {
            let mut b = AgentBatch::new(h, *src);
            b.enc.summary(&summary(*src, 2, 2, &ports, Some(0x5eed_f00d)));
            batches.push(b);
        }
    }
    rt().block_on(async {
        publish(&nats, batches).await;
        // Bad input on host0's own subjects: garbage, a wrong version, a batch claiming host1.
        let js = js_as(&nats, "host0", "pw-host0").await;
        let subj = Subjects { prefix: "scanwatch".into() }.records(Family::Src, 0, "lab", "host0");
        let mut wrong = Encoder::new("host0", "lab").finish();
        wrong[2] = 9;
        let forged = Encoder::new("host1", "lab").finish();
        for bad in [b"not a batch".to_vec(), wrong, forged] {
            js.publish(subj.clone(), bad.into()).await.expect("publish").await.expect("ack");
        }
        // The server's permissions: host0 cannot publish on host1's subjects.
        let other = Subjects { prefix: "scanwatch".into() }.records(Family::Src, 0, "lab", "host1");
        let denied = async {
            match js.publish(other, b"x".to_vec().into()).await {
                Err(_) => true,
                Ok(ack) => ack.await.is_err(),
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(10), denied).await.unwrap_or(true), "host0 published as host1");
    });
    let a = wait_alert(&c, "fleet decoy_cluster", |v| v["kind"] == "decoy_cluster", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, stderr) = c.stop();
    assert_eq!(alerts.iter().filter(|v| v["update"] == false).count(), 1, "one actor:\n{}", dump(&alerts));
    let named: Vec<String> = std::iter::once(a["source"]["ip"].clone())
        .chain(a["source"]["related"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(named.len() >= 3 && named.iter().all(|ip| decoys.iter().any(|d| d.to_string() == *ip)), "{a}");
    // No single host shows the cluster (two ports per source each): it needs two hosts' records.
    assert!(a["agent_count"].as_u64().unwrap_or(0) >= 2, "{a}");
    assert!(stderr.contains("\"bad_magic\":1") && stderr.contains("\"wrong_version\":1") && stderr.contains("\"agent_mismatch\":1"), "rejections counted by reason:\n{stderr}");
}

#[test]
fn nats_restart_mid_run_loses_no_acknowledged_alert() {
    let mut nats = Nats::start();
    let c = start_correlator(&nats, "c1");
    let before = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    rt().block_on(publish(&nats, sweep_batches(before)));
    wait_alert(&c, "alert before the restart", |v| source_is(v, "198.51.100.1"), Duration::from_secs(20));
    let connects = |c: &AgentProc| c.stderr().matches("connected to NATS").count();
    let before_restart = connects(&c);
    nats.restart();
    // The correlator reconnects by itself (and says so).
    let deadline = Instant::now() + Duration::from_secs(30);
    while connects(&c) <= before_restart {
        assert!(Instant::now() < deadline, "no reconnect:\n{}", c.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    rt().block_on(publish(&nats, sweep_batches(after)));
    wait_alert(&c, "alert after the restart", |v| source_is(v, "198.51.100.2"), Duration::from_secs(40));
    let (alerts, stderr) = c.stop();
    let stored = rt().block_on(stored_alerts(&nats));
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert!(first_alerts(&alerts, ip).len() == 1, "{ip}: one alert on stdout:\n{}\n{stderr}", dump(&alerts));
        assert!(stored.iter().any(|v| source_is(v, ip) && v["kind"] == "horizontal_scan"), "{ip}: alert not in the stream after the restart:\n{}", dump(&stored));
    }
}

#[test]
fn killed_correlator_instance_is_taken_over() {
    let nats = Nats::start();
    let c1 = start_correlator(&nats, "c1");
    std::thread::sleep(Duration::from_secs(1));
    let c2 = start_correlator(&nats, "c2");
    // Rebalance: c1 gives back half of the units within a few lease periods (lease 2 s).
    std::thread::sleep(Duration::from_secs(5));
    let first = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    rt().block_on(publish(&nats, sweep_batches(first)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c1.alerts().iter().chain(c2.alerts().iter()).all(|v| !source_is(v, "203.0.113.1")) {
        assert!(Instant::now() < deadline, "no alert before the kill:\nc1 {}\nc2 {}", c1.stderr(), c2.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    c1.signal(libc::SIGKILL);
    // Sources on every source shard, so some belonged to the killed instance.
    let mut later = Vec::new();
    let mut shards = std::collections::BTreeSet::new();
    for i in 2..=250u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
        if shards.insert(shard_of(ip, SHARDS)) {
            later.push(ip);
        }
        if shards.len() == SHARDS as usize {
            break;
        }
    }
    rt().block_on(async {
        for ip in &later {
            publish(&nats, sweep_batches(*ip)).await;
        }
    });
    for ip in &later {
        let s = ip.to_string();
        wait_alert(&c2, &format!("alert for {s} from the surviving instance"), |v| source_is(v, &s), Duration::from_secs(40));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (alerts, stderr) = c2.stop();
    for ip in &later {
        assert_eq!(first_alerts(&alerts, &ip.to_string()).len(), 1, "{ip}:\n{}\n{stderr}", dump(&alerts));
    }
    // c2 started with its half of the 2 x SHARDS units and took the killed instance's half.
    let counters: Value = stderr
        .lines()
        .find_map(|l| l.split_once("counters ").map(|(_, j)| j))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no counters line:\n{stderr}"));
    assert!(counters["units_taken"].as_u64().unwrap_or(0) > u64::from(SHARDS), "{counters}");
}

#[test]
fn authentication_failure_is_a_clear_error_at_start() {
    let nats = Nats::start();
    let cfg = correlator_config(&nats, "wrong-password");
    let out = Command::new(scanwatch_bin()).args(["fleet", "-c", &cfg.display().to_string()]).output().expect("run scanwatch fleet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rejected correlator must fail: {err}");
    assert!(err.contains("authentication failed"), "{err}");
}
