//! Command line: thin dispatch to subcommands.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{collector, config::Config, loader::XdpModeChoice};

#[derive(Parser)]
#[command(name = "scanwatch", version, about = "eBPF/XDP network-scan detector with process attribution")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Skb,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and attach the programs; print alerts as JSON lines on stdout until Ctrl-C.
    Run {
        /// TOML config (default: the embedded one; `scanwatch config default` prints it).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Interface to watch (repeatable). Default: config `agent.interfaces`, else the
        /// default-route interface.
        #[arg(long = "interface", short = 'i')]
        interfaces: Vec<String>,
        /// Host role (overrides `agent.role`).
        #[arg(long)]
        role: Option<String>,
        /// XDP attach mode (overrides `agent.xdp_mode`): auto = native, falling back to generic.
        #[arg(long, value_enum)]
        xdp_mode: Option<Mode>,
        /// Do not attach the outbound (process) hooks.
        #[arg(long)]
        no_outbound: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Print which kernel features exist and which hook each program would use. Changes nothing.
    Check,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Learn what normal looks like on this host for a while, then save it (used by `run` for novelty).
    Baseline {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long = "interface", short = 'i')]
        interfaces: Vec<String>,
        /// Learning time in seconds.
        #[arg(long, default_value_t = 3600)]
        duration: u64,
        /// Where to write the baseline (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Per-packet cost of the XDP program via BPF_PROG_TEST_RUN against an empty-program baseline.
    Bench {
        /// Runs per packet shape (kernel repeat count).
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Hunt Zeek conn.logs (TSV or JSON, gzip or not; `-` = stdin) for scans with the agent's
    /// detection engine on the log's own timeline. Alerts as JSON lines on stdout (or the
    /// per-source feature table with --table); a summary on stderr.
    Hunt {
        /// conn.log files; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Host role (overrides `agent.role`).
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
        #[arg(long)]
        reorder: Option<String>,
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

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default_embedded(),
    })
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
        Cmd::Run { config, interfaces, role, xdp_mode, no_outbound, duration } => {
            let mut cfg = load_config(config.as_ref())?;
            if let Some(r) = role {
                if !cfg.roles.contains_key(&r) {
                    let known: Vec<&str> = cfg.roles.keys().map(String::as_str).collect();
                    anyhow::bail!("--role: unknown role {r:?} (known: {})", known.join(", "));
                }
                cfg.agent.role = r;
            }
            let ifaces = if interfaces.is_empty() { cfg.agent.interfaces.clone() } else { interfaces };
            let mode = match xdp_mode {
                Some(Mode::Native) => XdpModeChoice::Native,
                Some(Mode::Skb) => XdpModeChoice::Skb,
                Some(Mode::Auto) => XdpModeChoice::Auto,
                None => match cfg.agent.xdp_mode {
                    crate::config::XdpModeSetting::Auto => XdpModeChoice::Auto,
                    crate::config::XdpModeSetting::Native => XdpModeChoice::Native,
                    crate::config::XdpModeSetting::Skb => XdpModeChoice::Skb,
                },
            };
            let opts = collector::RunOptions {
                interfaces: ifaces,
                xdp_mode: mode,
                outbound: cfg.agent.outbound && !no_outbound,
                duration: duration.map(Duration::from_secs),
                enforce_blocklist: cfg.xdp.enforce_blocklist,
            };
            runtime()?.block_on(collector::run(cfg, opts, std::io::stdout().lock()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check => {
            crate::check::print_report(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { cmd: ConfigCmd::Default } => {
            print!("{}", crate::config::DEFAULT_CONFIG_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { cmd: ConfigCmd::Check { file } } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Baseline { config, interfaces, duration, output } => {
            let cfg = load_config(config.as_ref())?;
            let ifaces = if interfaces.is_empty() { cfg.agent.interfaces.clone() } else { interfaces };
            runtime()?.block_on(crate::baseline::learn(cfg, ifaces, Duration::from_secs(duration), &output))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Hunt { files, config, role, table, table_format, alerts, since, until, reorder, max_sources } => {
            use std::io::IsTerminal;
            let mut cfg = load_config(config.as_ref())?;
            if let Some(r) = role {
                if !cfg.roles.contains_key(&r) {
                    let known: Vec<&str> = cfg.roles.keys().map(String::as_str).collect();
                    anyhow::bail!("--role: unknown role {r:?} (known: {})", known.join(", "));
                }
                cfg.agent.role = r;
            }
            let opts = crate::hunt::HuntOptions {
                inputs: files.iter().map(|f| crate::hunt::input::Input::from_arg(f)).collect(),
                table: table.then_some(table_format),
                alerts_file: alerts,
                since_us: since.as_deref().map(crate::hunt::parse_time_arg).transpose().map_err(|e| e.context("--since"))?,
                until_us: until.as_deref().map(crate::hunt::parse_time_arg).transpose().map_err(|e| e.context("--until"))?,
                reorder: reorder
                    .as_deref()
                    .map(crate::config::parse_duration)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--reorder: {e}"))?,
                max_sources,
                progress: std::io::stderr().is_terminal(),
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let report = crate::hunt::run(&cfg, &opts, &mut out, &mut std::io::stderr().lock())?;
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench { repeat, json } => {
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
