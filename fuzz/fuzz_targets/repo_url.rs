//! Repository URL normalising and matching: the input is two URLs separated by
//! a newline (which no URL contains).
#![no_main]

use fuzz_support::{RepoId, two_strings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = two_strings(data, b'\n');
    let id_a = check(&a);
    if let Some(b) = b {
        let id_b = check(&b);
        let same = |x: &Option<RepoId>, y: &Option<RepoId>| matches!((x, y), (Some(x), Some(y)) if x == y);
        assert_eq!(same(&id_a, &id_b), same(&id_b, &id_a), "matching is symmetric");
    }
});

/// Parses `url` and checks the normal form its docs promise; the id, if any.
fn check(url: &str) -> Option<RepoId> {
    let id = RepoId::parse(url);
    assert_eq!(id, RepoId::parse(url), "parsing is deterministic");
    // Case and surrounding blanks are ignored.
    assert_eq!(RepoId::parse(&url.to_ascii_uppercase()), id, "{url:?} upper-cased names another repository");
    assert_eq!(RepoId::parse(&format!(" {url}\t")), id, "{url:?} with blanks around names another repository");
    let id = id?;
    assert!(!id.host.is_empty(), "{url:?}: empty host");
    assert!(!id.host.bytes().any(|b| b.is_ascii_uppercase()), "{url:?}: host {:?} has upper case", id.host);
    assert!(!id.path.bytes().any(|b| b.is_ascii_uppercase()), "{url:?}: path {:?} has upper case", id.path);
    assert!(
        !id.path.is_empty() && id.path.split('/').all(|segment| !segment.is_empty()),
        "{url:?}: path {:?} has an empty part or a slash at an end",
        id.path
    );
    Some(id)
}
