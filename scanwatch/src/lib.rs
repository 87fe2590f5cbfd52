//! scanwatch agent library. Stages, top to bottom (imports flow down only):
//! `cli` → commands (`pipeline`, `baseline`, `bench`, `check`) → `metrics`, `evidence`, `asn` →
//! `control` (socket protocol, status, clients) → `source/*` → `enrich` → `detect` (pure engine)
//! → `response` → `sinks` → `output` → `alert` → `config` → `vocab`.

pub mod alert;
pub mod asn;
pub mod vocab;
pub mod baseline;
pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod depth;
pub mod control;
pub mod detect;
pub mod enrich;
pub mod fleet;
pub mod evidence;
pub mod hunt;
pub mod loader;
pub mod metrics;
pub mod outcome;
pub mod packet;
pub mod output;
pub mod pipeline;
pub mod replay;
pub mod response;
pub mod sinks;
pub mod sketch;
pub mod source;

/// The compiled eBPF object (built by build.rs), 8-byte aligned for the ELF parser: only the
/// programs the agent runs.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scanwatch"))
}

/// The benchmark's object: the same XDP program plus the bench-only entry points (empty
/// baselines, the rotating-source entry), built with the eBPF crate's `bench` feature.
/// `SCANWATCH_BENCH_OBJECT` (a path) replaces it: for measuring variants of the eBPF program
/// without relinking the agent.
pub fn ebpf_bench_object() -> &'static [u8] {
    if let Some(path) = std::env::var_os("SCANWATCH_BENCH_OBJECT") {
        static OBJ: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
        return OBJ.get_or_init(|| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("SCANWATCH_BENCH_OBJECT {path:?}: {e}"));
            // 8-byte aligned copy for the ELF parser.
            let words: &'static mut [u64] = Vec::leak(vec![0u64; bytes.len().div_ceil(8)]);
            // SAFETY: the u64 buffer covers at least `bytes.len()` bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, bytes.len()) };
            out.copy_from_slice(&bytes);
            out
        });
    }
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scanwatch-bench"))
}
