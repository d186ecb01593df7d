//! GitHub's parser: `X-GitHub-Event` (the input's first byte picks the event), the body fuzzed.
#![no_main]

use fuzz_support::{Call, Provider, fuzz_provider};
use libfuzzer_sys::fuzz_target;

/// Seeds (fuzz/run.sh) put `push` first, then `ping`, `deployment`, `deployment_status`.
const CALLS: &[Call] = &[
    (
        Some(Provider::GitHub),
        &[("x-github-event", "push"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    ),
    (
        Some(Provider::GitHub),
        &[("x-github-event", "ping"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    ),
    (
        Some(Provider::GitHub),
        &[("x-github-event", "deployment"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    ),
    (
        Some(Provider::GitHub),
        &[("x-github-event", "deployment_status"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    ),
    (
        Some(Provider::GitHub),
        &[("x-github-event", "create"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    ),
];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
