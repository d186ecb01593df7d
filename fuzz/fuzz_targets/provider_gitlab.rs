//! GitLab's parser: `X-Gitlab-Event` (the input's first byte picks the event), the body fuzzed.
#![no_main]

use fuzz_support::{Call, Provider, fuzz_provider};
use libfuzzer_sys::fuzz_target;

/// Seeds (fuzz/run.sh) put `Push Hook` first, then `Tag Push Hook`.
const CALLS: &[Call] = &[
    (
        Some(Provider::GitLab),
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e")],
    ),
    (
        Some(Provider::GitLab),
        &[("x-gitlab-event", "Tag Push Hook"), ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e")],
    ),
    (
        Some(Provider::GitLab),
        &[("x-gitlab-event", "Merge Request Hook"), ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e")],
    ),
    (Some(Provider::GitLab), &[("x-gitlab-event", "System Hook")]),
];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
