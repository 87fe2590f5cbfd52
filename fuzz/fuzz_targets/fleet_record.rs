//! Fleet record decoder (scanwatch::fleet::record::decode): never panics; what it accepts
//! re-encodes to the same records.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scanwatch::fleet::record::{decode, Encoder, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(b) = decode(data) else { return };
    let mut e = Encoder::new(b.agent, b.site);
    for r in &b.records {
        match r {
            Record::Held(h) => e.held(h),
            Record::Summary(s) => e.summary(s),
            Record::Alert { time_ns, json } => assert!(e.alert(*time_ns, json)),
        }
    }
    let again = e.finish();
    let b2 = decode(&again).expect("re-encoded batch decodes");
    assert_eq!(b2.records, b.records);
});
