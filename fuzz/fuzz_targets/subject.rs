//! Fuzzes subject parsing: any text in, never a panic, and counters within b4's 4 digits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = patchbay_mail::subject::parse(&text);
    if let Some((n, total)) = s.counter {
        assert!(n <= 9999 && total <= 9999);
    }
    let _ = s.normalized_title();
});
