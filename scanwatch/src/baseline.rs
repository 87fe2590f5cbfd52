//! `scanwatch baseline`: run the collector for a while feeding the baseline learner, then save.
use std::{path::Path, time::Duration};

use crate::{
    collector::{self, monotonic, Observer, RunOptions},
    config::Config,
    detect::BaselineLearner,
    loader::XdpModeChoice,
};

pub async fn learn(cfg: Config, interfaces: Vec<String>, duration: Duration, output: &Path) -> anyhow::Result<()> {
    let mut learner = BaselineLearner::new(&cfg);
    let opts = RunOptions {
        interfaces,
        xdp_mode: XdpModeChoice::Auto,
        outbound: cfg.agent.outbound,
        duration: Some(duration),
        enforce_blocklist: false,
    };
    collector::run_with(&cfg, opts, &mut learner, std::io::sink()).await?;
    Observer::tick(&mut learner, monotonic());
    let b = learner.finish();
    b.save(output).map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    eprintln!("scanwatch: baseline written to {}", output.display());
    Ok(())
}
