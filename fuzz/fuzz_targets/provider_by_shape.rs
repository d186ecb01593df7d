//! Calls without provider headers: every body-shape detector and the generic `{"repository","ref","sha"}` parser (seeded with every fixture).
#![no_main]

use fuzz_support::{Call, fuzz_provider};
use libfuzzer_sys::fuzz_target;

const CALLS: &[Call] = &[(None, &[])];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
