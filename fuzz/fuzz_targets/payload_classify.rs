#![no_main]
//! Any bytes through the first-payload classifier, whole and as a truncated sample.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scanwatch::depth::fuzz_payload(data);
});
