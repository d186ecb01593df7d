//! The heap a hook body costs to parse: a counting allocator measures the
//! peak of `providers::parse` on every fixture and on a 4.5 MiB push. The
//! parsers read the few fields they use straight from the bytes; a tree of
//! the whole body would cost several times its size.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use redeploy_operator::hook::{event::EventKind, providers};

/// The system allocator; on a thread that measures, it also counts the bytes
/// allocated since the measure began (less those freed) and their peak.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static IN_USE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(change: isize) {
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let in_use = IN_USE.with(|in_use| {
                in_use.set(in_use.get() + change);
                in_use.get()
            });
            PEAK.with(|peak| peak.set(peak.get().max(in_use)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on to the system allocator.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(isize::try_from(layout.size()).unwrap_or(isize::MAX));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(pointer, layout) };
        count(-isize::try_from(layout.size()).unwrap_or(isize::MAX));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap `parse` held at once on this thread (other tests run on
/// threads of their own and are not counted).
fn peak_heap_of_parse(headers: &HeaderMap, body: &[u8]) -> anyhow::Result<(usize, EventKind)> {
    IN_USE.with(|in_use| in_use.set(0));
    PEAK.with(|peak| peak.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    let event = providers::parse(headers, body);
    MEASURING.with(|measuring| measuring.set(false));
    let peak = usize::try_from(PEAK.with(Cell::get)).unwrap_or_default();
    Ok((peak, event?.kind))
}

fn headers(pairs: &[(&str, &str)]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_str(value)?);
    }
    Ok(headers)
}

const FIXTURES: [(&str, &[(&str, &str)]); 13] = [
    ("azure-devops/git-push.json", &[]),
    ("bitbucket-cloud/repo-push.json", &[("X-Event-Key", "repo:push"), ("X-Request-UUID", "u")]),
    ("bitbucket-server/repo-refs-changed.json", &[("X-Event-Key", "repo:refs_changed"), ("X-Request-Id", "r")]),
    ("dockerhub/push.json", &[]),
    ("gitea/push-event.json", &[("X-Gitea-Event", "push")]),
    ("github/deployment-status.json", &[]),
    ("github/deployment.json", &[("X-GitHub-Event", "deployment")]),
    ("github/ping.json", &[("X-GitHub-Event", "ping")]),
    ("github/push-new-branch.json", &[("X-GitHub-Event", "push")]),
    ("github/push-tag-deleted.json", &[("X-GitHub-Event", "push")]),
    ("gitlab/push-event.json", &[("X-Gitlab-Event", "Push Hook")]),
    ("gitlab/tag-event.json", &[("X-Gitlab-Event", "Tag Push Hook")]),
    ("gogs/push-event.json", &[("X-Gogs-Event", "push")]),
];

/// Parsing a fixture, with its provider's headers or recognised by its
/// shape, holds less heap than the fixture's own size.
#[test]
fn a_fixture_costs_less_heap_than_its_size() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    let mut largest = (0, 0, "");
    for (path, provider_headers) in FIXTURES {
        let body = std::fs::read(root.join(path))?;
        for (how, headers) in [("headers", headers(provider_headers)?), ("shape", HeaderMap::new())] {
            let (peak, _) = peak_heap_of_parse(&headers, &body)?;
            println!("{path} ({} bytes) by {how}: peak heap {peak} bytes", body.len());
            assert!(peak < body.len(), "{path} by {how}: {peak} bytes of heap for a {} byte body", body.len());
            if body.len() > largest.0 {
                largest = (body.len(), peak, path);
            }
        }
    }
    println!("largest fixture {} ({} bytes): peak heap {} bytes", largest.2, largest.0, largest.1);
    Ok(())
}

/// A 4.5 MiB push (a push of many commits) costs a small fraction of its size.
#[test]
fn a_large_push_costs_a_small_fraction_of_its_size() -> anyhow::Result<()> {
    let body = support::large_push(4 * 1024 * 1024 + 512 * 1024)?;
    for (how, headers) in [("headers", headers(&[("X-GitHub-Event", "push")])?), ("shape", HeaderMap::new())] {
        let (peak, kind) = peak_heap_of_parse(&headers, &body)?;
        println!("4.5 MiB GitHub push ({} bytes) by {how}: peak heap {peak} bytes", body.len());
        assert_eq!(kind, EventKind::Push);
        assert!(peak <= body.len() / 64, "by {how}: {peak} bytes of heap for a {} byte body", body.len());
    }
    Ok(())
}
