//! Project tasks: `setup` (install everything, idempotently), `run` (setup + build + start the
//! agent), `test` (setup + build + every test tier), `bench` (XDP per-packet cost).
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};

mod bench_hunt;
mod bench_outbound;
mod rng;
mod deb;
use clap::{Parser, Subcommand};

mod bench_replay;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, bpf-linker, the rustc-web toolchain link,
    /// tracefs/bpffs mounts. Idempotent.
    Setup,
    /// Setup, build, then `scanwatch run` with the embedded default config (extra args are passed on).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, run every test tier (unit, BPF_PROG_TEST_RUN, lab end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release binary and package it as a .deb (binary, systemd unit, default
    /// configuration under /etc/scanwatch/) in target/deb/. Needs only cargo and dpkg-deb.
    Deb {
        /// Package an already built binary instead of building one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Output directory (default: <target dir>/deb).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Setup, build, then the XDP benchmark (writes target/bench.json).
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
    /// Build, then `scanwatch replay` vs `tcpdump -r FILE -w /dev/null` on the same generated
    /// capture (packets/s of both and the ratio, same run).
    BenchReplay {
        /// Packets in the generated capture (<target dir>/bench-replay-N.pcap, reused when present).
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Interleaved rounds; the fastest of each side counts.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Use this capture instead of generating one.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// A local nats-server with JetStream for a fleet demo, in the foreground (Ctrl-C stops it):
    /// agents and `scanwatch fleet` with `fleet.servers = ["nats://127.0.0.1:4222"]`.
    Nats {
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// JetStream store directory (default: target/nats).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Setup, build, then the fleet correlator benchmark against a private nats-server on a free
    /// port (writes target/bench-fleet.json).
    BenchFleet {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
    },
    /// Build, generate a Zeek conn.log (default 5,000,000 records), run `scanwatch hunt` and the
    /// classic pandas T1046 hunt on it; print wall time, records/s, peak RSS and the ratios.
    BenchHunt {
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
    },
    /// What the agent's outbound hooks cost a UDP sender: datagrams/s of one process (one peer,
    /// 1,000 peers round-robin, a DNS-like server replying to 1,000 clients; at full speed and
    /// paced) without and with the agent in the same run, and the agent's CPU, in two lab
    /// namespaces it makes and deletes (writes target/bench-outbound.json). The agent is
    /// $SCANWATCH_BIN, else the release build (built first).
    BenchOutbound {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Rounds (each: every row without the agent, then with it); the best rate counts.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Datagrams/s of the paced rows.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Extra argument for `scanwatch run -i swob-s0` (repeatable), e.g.
        /// `--agent-arg=--no-outbound` for the cost of the XDP program alone.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// bench-outbound's sender (run inside the bench's namespace): unconnected UDP sendto for a
    /// fixed time, prints one JSON line.
    #[command(hide = true)]
    UdpBlast {
        #[arg(long, value_enum)]
        mode: bench_outbound::Mode,
        /// Destination (first of `peers` consecutive addresses for `rr`; ignored for `dns`).
        #[arg(long)]
        dst: std::net::Ipv4Addr,
        /// Destination port (`dns`: the port bound and answered from).
        #[arg(long)]
        port: u16,
        /// Peers of `rr`; queries awaited by `dns`.
        #[arg(long, default_value_t = 1000)]
        peers: u32,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Datagrams/s (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            build(&root)?;
            let bin = root.join("target/release/scanwatch");
            let mut cmd = Command::new(&bin);
            cmd.arg("run").args(&args);
            eprintln!("xtask: starting {} run {} (Ctrl-C detaches everything)", bin.display(), args.join(" "));
            use std::os::unix::process::CommandExt;
            Err(cmd.exec()).context("exec scanwatch")
        }
        Cmd::Test { args } => {
            setup()?;
            build(&root)?;
            let t = Instant::now();
            let status = Command::new("cargo")
                .current_dir(&root)
                .env("SCANWATCH_BIN", root.join("target/release/scanwatch"))
                .args(["test", "--release", "--workspace", "--exclude", "scanwatch-ebpf", "--features", "scanwatch-tests/privileged,scanwatch/privileged-tests"])
                .args(&args)
                .status()
                .context("running cargo test")?;
            eprintln!("xtask: tests took {:.0} s", t.elapsed().as_secs_f64());
            if !status.success() {
                bail!("tests failed ({status})");
            }
            Ok(())
        }
        Cmd::Nats { port, store } => {
            apt_install(&["nats-server"])?;
            let store = store.unwrap_or_else(|| root.join("target/nats"));
            eprintln!("xtask: nats-server with JetStream on nats://127.0.0.1:{port}, store {} (Ctrl-C stops it)", store.display());
            use std::os::unix::process::CommandExt;
            Err(Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&store)
                .exec())
            .context("exec nats-server")
        }
        Cmd::BenchFleet { records } => {
            setup()?;
            build(&root)?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let store = std::env::temp_dir().join(format!("scanwatch-bench-nats-{}", std::process::id()));
            let mut server = nats_server(port, &store)?;
            let res = run(Command::new(target_dir(&root).join("release/scanwatch"))
                .args(["fleet", "bench", "--records", &records.to_string(), "--server", &format!("nats://127.0.0.1:{port}"), "--json"])
                .arg(root.join("target/bench-fleet.json")));
            // Stopped by PID (our child), store removed.
            let _ = server.kill();
            let _ = server.wait();
            let _ = std::fs::remove_dir_all(&store);
            res
        }
        Cmd::BenchHunt { records } => bench_hunt::bench_hunt(&root, records),
        Cmd::BenchOutbound { secs, rounds, rate, agent_args } => {
            let target = target_dir(&root);
            let bin = match std::env::var_os("SCANWATCH_BIN") {
                Some(b) => PathBuf::from(b),
                None => {
                    build(&root)?;
                    target.join("release/scanwatch")
                }
            };
            bench_outbound::run(&root, &target, &bin, &bench_outbound::Opts { secs, rounds, rate, agent_args })
        }
        Cmd::UdpBlast { mode, dst, port, peers, secs, rate } => {
            bench_outbound::blast(bench_outbound::Blast { mode, dst, port, peers, secs, rate })
        }
        Cmd::Deb { binary, out } => {
            let bin = match binary {
                Some(b) => b,
                None => {
                    build(&root)?;
                    target_dir(&root).join("release/scanwatch")
                }
            };
            let out = out.unwrap_or_else(|| target_dir(&root).join("deb"));
            let deb = deb::build(&root, &bin, &out)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::BenchReplay { packets, rounds, file } => {
            build(&root)?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            bench_replay::run(&target, &target.join("release/scanwatch"), packets, rounds, file)
        }
        Cmd::Bench { repeat } => {
            setup()?;
            build(&root)?;
            let out = root.join("target/bench.json");
            run(Command::new(root.join("target/release/scanwatch"))
                .args(["bench", "--repeat", &repeat.to_string(), "--json"])
                .arg(&out))
        }
    }
}

/// Start nats-server with JetStream; the caller stops it by PID.
fn nats_server(port: u16, store: &Path) -> Result<std::process::Child> {
    std::fs::create_dir_all(store).with_context(|| format!("creating {}", store.display()))?;
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .spawn()
        .context("starting nats-server (Debian package nats-server)")?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed().as_secs() > 15 {
            bail!("nats-server not listening on 127.0.0.1:{port} after 15 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(child)
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn build(root: &Path) -> Result<()> {
    let t = Instant::now();
    run(Command::new("cargo").current_dir(root).args(["build", "--release", "-p", "scanwatch"]))?;
    eprintln!("xtask: build took {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Toolchain packages (rustc-web is Debian's newer Rust, with its own library sources for
/// `-Z build-std=core`), then the LLVM matching rustc-web for bpf-linker, then the lab tools.
const TOOLCHAIN_PKGS: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "zlib1g-dev", "libzstd-dev"];
const LAB_PKGS: &[&str] = &[
    "nmap", "masscan", "zmap", "hping3", "tcpdump", "iproute2", "iputils-ping", "python3", "curl", "util-linux",
    "procps", "strace", "nats-server", "rsyslog", "tshark", "netcat-openbsd", "parallel",
];

fn setup() -> Result<()> {
    let t = Instant::now();
    // SAFETY: geteuid has no preconditions.
    let euid = output(Command::new("id").arg("-u")).map(|s| s.trim().to_string()).unwrap_or_default();
    if euid != "0" {
        bail!("setup needs root (it installs Debian packages, mounts tracefs/bpffs, and scanwatch loads eBPF): run as root");
    }
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian_like = Path::new("/etc/debian_version").exists()
        || os.lines().any(|l| (l.starts_with("ID=") || l.starts_with("ID_LIKE=")) && l.contains("debian"));
    if !debian_like {
        bail!("setup supports Debian-family systems only (apt + Debian's rustc-web); /etc/os-release says otherwise");
    }
    apt_install(TOOLCHAIN_PKGS)?;
    let llvm = llvm_major()?;
    apt_install(&[&format!("llvm-{llvm}-dev"), &format!("libpolly-{llvm}-dev")])?;
    apt_install(LAB_PKGS)?;
    install_bpf_linker(llvm)?;
    link_toolchain()?;
    mount_if_missing("/sys/kernel/tracing", "tracefs", "nodev")?;
    mount_if_missing("/sys/fs/bpf", "bpf", "bpf")?;
    eprintln!("xtask: setup complete in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    // Package lists on a fresh machine are often stale (older rustc-web, no llvm-N): refresh first.
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

/// LLVM major version rustc-web is linked against (bpf-linker must use the same).
fn llvm_major() -> Result<String> {
    let v = output(Command::new("/usr/bin/rustc").arg("-vV")).context("running /usr/bin/rustc -vV (rustc-web)")?;
    let line = v.lines().find(|l| l.starts_with("LLVM version:")).context("rustc -vV printed no LLVM version")?;
    let major = line.trim_start_matches("LLVM version:").trim().split('.').next().unwrap_or("").to_string();
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        bail!("cannot parse LLVM version from `{line}`");
    }
    Ok(major)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

fn install_bpf_linker(llvm: String) -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute)");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--no-default-features"])
        .args(["--features", &format!("llvm-{llvm}")]))
}

fn link_toolchain() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is needed on PATH")?;
    if list.lines().any(|l| l.split_whitespace().next() == Some("rust-web")) {
        return Ok(());
    }
    eprintln!("xtask: registering Debian's rustc-web as rustup toolchain `rust-web`");
    run(Command::new("rustup").args(["toolchain", "link", "rust-web", "/usr"]))
}

fn mount_if_missing(path: &str, fstype: &str, source: &str) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(path)) {
        return Ok(());
    }
    eprintln!("xtask: mounting {fstype} at {path}");
    run(Command::new("mount").args(["-t", fstype, source, path]))
}
