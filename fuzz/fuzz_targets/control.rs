#![no_main]
//! Inputs a local peer controls: a control-socket request line and an HTTP request head.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scanwatch::control::parse_request(data);
    let _ = scanwatch::metrics::parse_head(data);
});
