//! Any text through the sanitiser and back, whole and streamed in arbitrary pieces:
//! nothing may panic, and restoring must give back exactly the input.
//!
//!     cargo fuzz run sanitize

#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use ragway::sanitize::{PiiSanitizer, Policy, Sanitizer, StreamRestorer, Vault};

/// Built once: compiling the detectors takes milliseconds.
static SANITIZER: LazyLock<PiiSanitizer> =
    LazyLock::new(|| PiiSanitizer::new(Policy::default(), b"fuzz".to_vec()));

fuzz_target!(|input: (String, Vec<u8>)| {
    let (text, cuts) = input;
    let sanitizer = &*SANITIZER;
    let mut vault = Vault::new();
    let clean = sanitizer
        .sanitize_text(&text, &mut vault)
        .expect("the sanitiser never fails on text");
    assert_eq!(vault.restore(&clean), text);

    // Stream the sanitised answer cut at the given byte offsets (moved to char
    // boundaries).
    let vault = Arc::new(vault);
    let mut stream = StreamRestorer::new(vault);
    let mut sent = String::new();
    let mut at = 0;
    for &cut in &cuts {
        let mut point = (at + usize::from(cut)).min(clean.len());
        while !clean.is_char_boundary(point) {
            point += 1;
        }
        sent.push_str(&stream.push(&clean[at..point]));
        at = point;
    }
    sent.push_str(&stream.push(&clean[at..]));
    sent.push_str(&stream.finish());
    assert_eq!(sent, text);
});
