//! Docker Hub's parser: it sends no provider header, so the body's shape selects it (seeded with its push).
#![no_main]

use fuzz_support::{Call, fuzz_provider};
use libfuzzer_sys::fuzz_target;

const CALLS: &[Call] = &[(None, &[("user-agent", "Go-http-client/1.1")])];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
