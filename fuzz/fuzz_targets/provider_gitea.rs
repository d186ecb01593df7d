//! Gitea's, Forgejo's and Gogs's parser: their event headers (the input's first byte picks which, and the event), the body fuzzed.
#![no_main]

use fuzz_support::{Call, Provider, fuzz_provider};
use libfuzzer_sys::fuzz_target;

/// Seeds (fuzz/run.sh) put Gitea `push` first, then Forgejo `push`, Gogs `push`.
const CALLS: &[Call] = &[
    (
        Some(Provider::Gitea),
        &[
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("x-gogs-event", "push"),
            ("x-github-event", "push"),
        ],
    ),
    (
        Some(Provider::Forgejo),
        &[
            ("x-forgejo-event", "push"),
            ("x-forgejo-delivery", "0b1ec6b4-9fe4-4a2c-9d8e-1f0e3c2b7a55"),
            ("x-gitea-event", "push"),
        ],
    ),
    (Some(Provider::Gogs), &[("x-gogs-event", "push"), ("x-gogs-delivery", "1a2f8c3e-5b7d-4e0f-9a6b-3c4d5e6f7a8b")]),
    (
        Some(Provider::Gitea),
        &[("x-gitea-event", "create"), ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")],
    ),
    (Some(Provider::Forgejo), &[("x-forgejo-event", "delete")]),
];

fuzz_target!(|data: &[u8]| fuzz_provider(CALLS, data));
