//! The repository URL as BuildKit fetches it: a remote it accepts is
//! well-formed, stable, carries no credentials and names the repository the
//! Service names.
#![no_main]

use fuzz_support::{RepoId, buildkit_remote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let repository = String::from_utf8_lossy(data);
    let remote = match buildkit_remote(&repository) {
        Ok(remote) => remote,
        Err(reason) => {
            assert!(!reason.trim().is_empty(), "a refusal says why");
            return;
        }
    };
    assert!(!remote.contains(|c: char| c.is_whitespace() || c.is_control() || c == '#'), "remote {remote:?}");
    assert_eq!(buildkit_remote(&remote).as_ref(), Ok(&remote), "{repository:?}: the remote is not stable");
    if remote.starts_with("http://") || remote.starts_with("https://") {
        let (_, rest) = remote.split_once("://").unwrap_or_default();
        let authority = rest.split('/').next().unwrap_or_default();
        assert!(!authority.contains('@'), "{repository:?}: credentials in {remote:?}");
        assert!(remote.ends_with(".git"), "{repository:?}: {remote:?} is not a Git context for BuildKit");
    }
    if let Some(id) = RepoId::parse(&repository) {
        assert_eq!(RepoId::parse(&remote), Some(id), "{repository:?}: {remote:?} names another repository");
    }
});
