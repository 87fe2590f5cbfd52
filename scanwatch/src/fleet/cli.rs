//! `scanwatch fleet [bench]` arguments (one variant in the main command line).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::Family;
use crate::config::Config;

#[derive(Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    cmd: Option<FleetCmd>,
    /// TOML config ([fleet] and [detect] apply to the fleet view).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// NATS server URL (repeatable; overrides fleet.servers).
    #[arg(long = "server", global = true)]
    servers: Vec<String>,
    /// Instance id (default: random).
    #[arg(long)]
    instance: Option<String>,
    /// Only this family of work units (default: both).
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    Src,
    Dst,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Generate records into a real NATS stream and measure the correlator with one and two instances.
    Bench {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 200)]
        agents: u32,
        #[arg(long, default_value_t = 20_000)]
        sources: u32,
        #[arg(long, default_value_t = 2000)]
        per_message: u32,
        /// Sources each agent watches per shard.
        #[arg(long, default_value_t = 200)]
        window: u32,
        /// Agent time the generated records span, in seconds.
        #[arg(long, default_value_t = 120)]
        span: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(a: FleetArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default_embedded(),
    };
    if !a.servers.is_empty() {
        cfg.fleet.servers = a.servers.clone();
    }
    match a.cmd {
        Some(FleetCmd::Bench { records, agents, sources, per_message, window, span, json }) => {
            let o = super::bench::BenchOptions {
                records,
                agents: agents.max(1),
                sources: sources.max(1),
                per_message: per_message.clamp(1, 20_000),
                window: window.max(1),
                span: Duration::from_secs(span.max(1)),
            };
            let report = super::bench::run(cfg, &o)?;
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&report)?)?;
                println!("written {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            if !cfg.fleet.enabled() {
                anyhow::bail!("fleet.servers is empty: set it in the config or pass --server nats://host:4222");
            }
            let opts = super::correlate::Options {
                instance: a.instance,
                families: match a.family {
                    Some(FamilyArg::Src) => vec![Family::Src],
                    Some(FamilyArg::Dst) => vec![Family::Dst],
                    None => vec![Family::Src, Family::Dst],
                },
                duration: a.duration.map(Duration::from_secs),
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(super::correlate::run(cfg, opts, std::io::stdout().lock()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
