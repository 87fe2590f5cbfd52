//! The pcap / pcapng reader and link-layer decoding (`scanwatch replay`) on arbitrary input:
//! never a panic, errors name an offset inside the input, nothing is returned after an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scanwatch::replay::pcap::exercise(data);
});
