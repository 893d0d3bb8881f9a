//! Fuzzes the mail parser: any bytes in, a `Parsed` out, never a panic; plus the mbox splitter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = patchbay_mail::parse(data);
    // What the store relies on: an id always exists and is bracketed.
    assert!(p.message_id.starts_with('<') && p.message_id.ends_with('>'));
    let _ = p.refs_nearest_first();
    for m in patchbay_mail::MboxReader::new(data) {
        let _ = m.map(|m| patchbay_mail::parse(&m.raw));
    }
});
