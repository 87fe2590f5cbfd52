//! Zeek conn.log parser (TSV and JSON) and everything a record reaches: classification, the
//! per-source state, the reorder buffer, the detection engine and the feature table.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    scanwatch::hunt::fuzz_connlog(data);
});
