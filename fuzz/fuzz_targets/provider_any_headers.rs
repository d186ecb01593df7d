//! Any headers, any body: `Name: value` lines, an empty line, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_support::fuzz_any_headers(data));
