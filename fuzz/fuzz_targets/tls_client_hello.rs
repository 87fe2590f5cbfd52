#![no_main]
//! Any bytes through the ClientHello parser and JA4 (never a panic).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scanwatch::depth::fuzz_client_hello(data);
});
