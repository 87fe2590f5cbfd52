//! Protocol depth: what the first client payload of a connection says about the client.
//!
//! * [`tls`]: TLS ClientHello parser → JA4 (FoxIO), SNI, ALPN.
//! * [`probes`]: nmap's service-detection probes, byte for byte.
//! * [`payload`]: the first-payload classifier (nmap probes, scanner user agents and NSE
//!   requests, banner grabs, exploit-shaped requests from `[depth.patterns.*]`, TLS, plain HTTP).
//! * [`store`]: the persisted actor store's file I/O (the engine's timeline is pure).
//!
//! Everything here but `store` is pure and total over any input (fuzz targets in `fuzz/`).
pub mod actors;
pub mod payload;
pub mod probes;
pub mod store;
pub mod tls;

pub use payload::{classify, Class, Phase, Verdict};
pub use tls::{parse_client_hello, ClientHello, TlsError};

/// Fuzzing entry point (`fuzz/fuzz_targets/tls_client_hello.rs`, and the unit test replaying its
/// corpus): parse, and fingerprint what parses.
pub fn fuzz_client_hello(data: &[u8]) {
    if let Ok(h) = parse_client_hello(data) {
        let _ = (h.ja4(), h.ja4_r(), h.ja4_o(), h.alpn_strings());
    }
}

/// Fuzzing entry point (`fuzz/fuzz_targets/payload_classify.rs`): the whole input, then its first
/// 256 bytes as a truncated sample of a longer payload, through the default pattern sets.
pub fn fuzz_payload(data: &[u8]) {
    use std::sync::OnceLock;
    static CFG: OnceLock<crate::config::DepthConfig> = OnceLock::new();
    let cfg = CFG.get_or_init(|| crate::config::Config::default_embedded().depth);
    let v = classify(cfg, data, data.len(), true);
    let _ = (v.label(), v.phase());
    let cut = &data[..data.len().min(256)];
    let _ = classify(cfg, cut, data.len() + 1, true).label();
}

#[cfg(test)]
mod fuzz_corpus {
    /// The committed fuzz corpora (and any crash artifacts) replayed through the fuzz entries.
    #[test]
    fn fuzz_corpora_replay_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for (target, run) in [
            ("tls_client_hello", super::fuzz_client_hello as fn(&[u8])),
            ("payload_classify", super::fuzz_payload as fn(&[u8])),
        ] {
            let mut n = 0;
            for dir in [format!("corpus/{target}"), format!("artifacts/{target}")] {
                let Ok(rd) = std::fs::read_dir(root.join(&dir)) else { continue };
                for e in rd.flatten() {
                    let data = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                    run(&data);
                    n += 1;
                }
            }
            assert!(n >= 8, "the seed corpus fuzz/corpus/{target} has {n} files");
        }
    }
}
