//! What a build container reports in its termination message.
#![no_main]

use fuzz_support::parse_termination_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = String::from_utf8_lossy(data);
    let outcome = match parse_termination_message(&message) {
        Ok(outcome) => outcome,
        Err(error) => {
            assert!(!error.to_string().trim().is_empty(), "a refusal says why");
            return;
        }
    };
    let commit = &outcome.commit;
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "commit {commit:?}"
    );
    let image = &outcome.image;
    assert!(!image.is_empty() && !image.contains(|c: char| c.is_whitespace() || c.is_control()), "image {image:?}");
    if let Some(digest) = &outcome.digest {
        assert!(digest.contains(':') && digest.trim() == digest, "digest {digest:?}");
    }
    // What was read, written back as the contract's JSON, reads the same.
    let written = serde_json::json!({ "commit": commit, "image": image, "digest": outcome.digest }).to_string();
    assert_eq!(parse_termination_message(&written).ok(), Some(outcome), "{written} reads otherwise");
});
