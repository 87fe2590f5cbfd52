//! `scanwatch baseline`: run the live pipeline for a while feeding the baseline learner, then save.
use std::{path::Path, time::Duration};

use crate::{
    config::Config,
    detect::{BaselineLearner, Observer},
    pipeline,
    sinks::SinkSet,
    vocab::monotonic,
};

pub async fn learn(cfg: Config, duration: Duration, output: &Path) -> anyhow::Result<()> {
    let mut cfg = cfg;
    // Learning never blocks anything.
    cfg.xdp.enforce_blocklist = false;
    let learner = BaselineLearner::new(&cfg);
    let mut learner = pipeline::run_live(&cfg, Some(duration), learner, SinkSet::none()).await?;
    Observer::tick(&mut learner, monotonic());
    let b = learner.finish();
    b.save(output).map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    eprintln!("scanwatch: baseline written to {}", output.display());
    Ok(())
}
