//! Bitbucket Server's (Data Center's) parser: `X-Event-Key` with `X-Request-Id` (the input's first byte picks the event), the body fuzzed.
#![no_main]

use fuzz_support::{Call, Provider, fuzz_provider};
use libfuzzer_sys::fuzz_target;

const CALLS: &[Call] = &[
    (
        Some(Provider::BitbucketServer),
        &[("x-event-key", "repo:refs_changed"), ("x-request-id", "d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d")],
    ),
    (
        Some(Provider::BitbucketServer),
        &[("x-event-key", "diagnostics:ping"), ("x-request-id", "d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d")],
    ),
    (
        Some(Provider::BitbucketServer),
        &[("x-event-key", "pr:opened"), ("x-request-id", "d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d")],
    ),
];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
