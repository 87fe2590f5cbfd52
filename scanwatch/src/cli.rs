//! Command line: thin dispatch to subcommands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, XdpModeSetting};

#[derive(Parser)]
#[command(name = "scanwatch", version, about = "eBPF/XDP network-scan detector with process attribution")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and attach the programs; write findings to the configured sinks (stdout by
    /// default) until Ctrl-C / SIGTERM.
    Run {
        #[command(flatten)]
        agent: AgentFlags,
        /// Stop after this long (`30s`, `5m`; a bare number is seconds).
        #[arg(long, value_parser = duration_arg)]
        duration: Option<Duration>,
    },
    /// Print which kernel features exist, which hook each program would use and the mode
    /// (host / gateway / mirror) of each interface `run` would watch. Changes nothing.
    Check {
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Learn what normal looks like on this host for a while, then save it (used by `run` for novelty).
    Baseline {
        #[command(flatten)]
        agent: AgentFlags,
        /// Learning time (`1h`, `30m`; a bare number is seconds).
        #[arg(long, default_value = "1h", value_parser = duration_arg)]
        duration: Duration,
        /// Where to write the baseline (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Fleet correlator over NATS JetStream (README "Fleet"); `fleet bench` measures it.
    Fleet(crate::fleet::cli::FleetArgs),
    /// The running agent's hooks, counters, response state and top sources / processes (over its
    /// root-only control socket).
    Status(crate::control::client::StatusArgs),
    /// The status, refreshed live in the terminal.
    Top(crate::control::client::TopArgs),
    /// The running agent's block list: list, add, del.
    Block {
        #[command(subcommand)]
        cmd: crate::control::client::BlockCmd,
    },
    /// Per-packet cost of the XDP program via BPF_PROG_TEST_RUN against an empty-program baseline.
    Bench {
        /// Runs per packet shape (kernel repeat count), 1 or more.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Instead of the table: the wall time of N BPF_PROG_TEST_RUN calls of the empty XDP
        /// program, one nmap-style SYN (58 bytes) each, timed in user space (the floor of `replay`'s cost
        /// per packet); prints one JSON object.
        #[arg(long, value_name = "N")]
        call_floor: Option<u32>,
    },
    /// Replay pcap/pcapng captures through the real XDP program; alerts as JSON lines on stdout,
    /// a summary on stderr. Captures are read in the order given ("-" = standard input).
    Replay {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Host role (overrides `agent.role`).
        #[arg(long)]
        role: Option<String>,
        /// Only packets at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = crate::replay::parse_time)]
        since: Option<Duration>,
        /// Only packets before this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = crate::replay::parse_time)]
        until: Option<Duration>,
        /// How long a probe waits for its answer in the capture before it counts as unanswered
        /// (`3s`, `500ms`; a bare number is seconds).
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        reply_timeout: Duration,
        /// No progress bar (it is only drawn when stderr is a terminal anyway).
        #[arg(long)]
        quiet: bool,
    },
    /// Hunt Zeek conn.logs (TSV or JSON, gzip or not; `-` = stdin) for scans with the agent's
    /// detection engine on the log's own timeline. Alerts as JSON lines on stdout (or the
    /// per-source feature table with --table); a summary on stderr.
    Hunt {
        /// conn.log files; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
        /// TOML config merged over the embedded defaults (roles, allowlists, baseline, windows).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Host role (`agent.role`).
        #[arg(long)]
        role: Option<String>,
        /// Print the per-source feature table on stdout instead of alerts.
        #[arg(long)]
        table: bool,
        #[arg(long, value_enum, default_value = "tsv")]
        table_format: crate::hunt::table::TableFormat,
        /// Write the alert JSON lines to this file (with --table, the only place they go).
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// Skip records before this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Skip records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// How long a record may trail the newest timestamp and still be placed in order
        /// (conn.log lines are written when connections end), e.g. `5m`.
        #[arg(long, value_parser = duration_arg)]
        reorder: Option<Duration>,
        /// Most sources held at once (default: `xdp.max_sources`); the least recently seen are evicted.
        #[arg(long)]
        max_sources: Option<usize>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the embedded default configuration.
    Default,
    /// Validate a configuration file; errors name the bad key.
    Check { file: PathBuf },
}

/// The agent's configuration flags: the command line is the last configuration layer, over the
/// embedded defaults and the file; each flag sets the configuration key its help names.
#[derive(Args, Default)]
struct AgentFlags {
    /// TOML config merged over the embedded defaults (`scanwatch config default` prints them).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Interface to watch, repeatable (`agent.interfaces`; default: the default-route interface).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Host role (`agent.role`).
    #[arg(long)]
    role: Option<String>,
    /// XDP attach mode (`agent.xdp_mode`): auto = native, falling back to generic.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeSetting>,
    /// Do not attach the outbound (process) hooks (`agent.outbound = false`).
    #[arg(long)]
    no_outbound: bool,
}

impl AgentFlags {
    /// The flags as a configuration layer.
    fn overrides(&self) -> toml::Table {
        let mut agent = toml::Table::new();
        if !self.interfaces.is_empty() {
            agent.insert(
                "interfaces".into(),
                toml::Value::Array(self.interfaces.iter().cloned().map(toml::Value::String).collect()),
            );
        }
        if let Some(r) = &self.role {
            agent.insert("role".into(), toml::Value::String(r.clone()));
        }
        if let Some(m) = self.xdp_mode {
            let name = match m {
                XdpModeSetting::Auto => "auto",
                XdpModeSetting::Native => "native",
                XdpModeSetting::Skb => "skb",
            };
            agent.insert("xdp_mode".into(), toml::Value::String(name.into()));
        }
        if self.no_outbound {
            agent.insert("outbound".into(), toml::Value::Boolean(false));
        }
        let mut t = toml::Table::new();
        if !agent.is_empty() {
            t.insert("agent".into(), toml::Value::Table(agent));
        }
        t
    }

    fn load(&self) -> anyhow::Result<Config> {
        let cfg = Config::load_layers(self.config.as_deref(), &self.overrides())?;
        for w in &cfg.warnings {
            eprintln!("scanwatch: warning: {w}");
        }
        Ok(cfg)
    }
}

/// A duration with a unit (`500ms`, `3s`, `15m`, `2h`, `7d`); a bare number is seconds.
fn duration_arg(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    crate::vocab::parse_duration(s)
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scanwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run { agent, duration } => {
            let cfg = agent.load()?;
            // SIGHUP re-reads the same layers: the embedded defaults, the file, the flags.
            let reload: crate::pipeline::Reloader = Box::new(move || agent.load());
            runtime()?.block_on(crate::pipeline::run_reloadable(cfg, duration, Some(reload)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(a) => {
            crate::control::client::status(&a, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Top(a) => {
            crate::control::client::top(&a, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Block { cmd } => {
            crate::control::client::block(&cmd, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { agent } => {
            let cfg = agent.load()?;
            crate::check::print_report(&mut std::io::stdout().lock(), &cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { cmd: ConfigCmd::Default } => {
            print!("{}", crate::config::DEFAULT_CONFIG_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { cmd: ConfigCmd::Check { file } } => match Config::load(&file) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("{}: warning: {w}", file.display());
                }
                // Files the configuration refers to must exist and parse, or `run` would fail.
                if let Some(b) = &cfg.agent.baseline {
                    if let Err(e) = crate::detect::Baseline::load(b) {
                        eprintln!("{}: agent.baseline: {}: {e}", file.display(), b.display());
                        return Ok(ExitCode::FAILURE);
                    }
                }
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Baseline { agent, duration, output } => {
            let cfg = agent.load()?;
            runtime()?.block_on(crate::baseline::learn(cfg, duration, &output))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { files, config, role, since, until, reply_timeout, quiet } => {
            let flags = AgentFlags { config, role, ..AgentFlags::default() };
            let cfg = flags.load()?;
            anyhow::ensure!(!reply_timeout.is_zero(), "--reply-timeout: must be longer than zero");
            let opts = crate::replay::ReplayOptions { files, since, until, progress: !quiet, reply_timeout };
            let sinks = crate::sinks::SinkSet::build(&cfg.sinks)?;
            let summary = crate::replay::run(&cfg, &opts, sinks)?;
            eprintln!("scanwatch: replay: {}", summary.line());
            eprintln!("scanwatch: replay summary {}", summary.to_json());
            for e in &summary.reader.errors {
                eprintln!("scanwatch: error: {e}");
            }
            Ok(if summary.reader.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Fleet(a) => crate::fleet::cli::run(a),
        Cmd::Hunt { files, config, role, table, table_format, alerts, since, until, reorder, max_sources } => {
            use std::io::IsTerminal;
            let flags = AgentFlags { config, role, ..AgentFlags::default() };
            let cfg = flags.load()?;
            let opts = crate::hunt::HuntOptions {
                inputs: files.iter().map(|f| crate::hunt::input::Input::from_arg(f)).collect(),
                table: table.then_some(table_format),
                alerts_file: alerts,
                since_us: since.as_deref().map(crate::hunt::parse_time_arg).transpose().map_err(|e| e.context("--since"))?,
                until_us: until.as_deref().map(crate::hunt::parse_time_arg).transpose().map_err(|e| e.context("--until"))?,
                reorder,
                max_sources,
                progress: std::io::stderr().is_terminal(),
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let report = crate::hunt::run(&cfg, &opts, &mut out, &mut std::io::stderr().lock())?;
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench { call_floor: Some(n), .. } => {
            println!("{}", crate::bench::call_floor(n)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { repeat, json, call_floor: None } => {
            let report = crate::bench::run(repeat)?;
            println!("{}", report.table());
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&report.to_json())?)?;
                println!("written {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
