//! Gateway mode's forwarded-packet records (`scanwatch::source::live::forwarded::decode_record`:
//! the first bytes of a packet another host sent) and the reply tracker they feed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    scanwatch::source::live::forwarded::fuzz_forwarded(data);
});
