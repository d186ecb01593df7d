//! Bitbucket Cloud's parser: `X-Event-Key` with `X-Request-UUID` (the input's first byte picks the event), the body fuzzed.
#![no_main]

use fuzz_support::{Call, Provider, fuzz_provider};
use libfuzzer_sys::fuzz_target;

const CALLS: &[Call] = &[
    (
        Some(Provider::BitbucketCloud),
        &[
            ("x-event-key", "repo:push"),
            ("x-request-uuid", "afe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f"),
            ("x-hook-uuid", "0fe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f"),
        ],
    ),
    (
        Some(Provider::BitbucketCloud),
        &[("x-event-key", "repo:updated"), ("x-request-uuid", "afe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f")],
    ),
    (
        Some(Provider::BitbucketCloud),
        &[("x-event-key", "pullrequest:created"), ("x-hook-uuid", "0fe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f")],
    ),
];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
