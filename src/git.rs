//! Git names as this operator accepts them: the one validator for a ref to
//! build (the hook's `git_ref=`, the refs the planner picks, the build Job),
//! and the commit-id checks every parser and the build share.
//!
//! A ref the hook accepts must be one the build can fetch and that names a
//! branch, a tag or a commit: never a pull or merge request head
//! (`refs/pull/1/head` is code anyone may propose), never a revision
//! expression (`HEAD~1`, `a..b`), never a `#` (BuildKit reads it as the start
//! of the Git context's fragment). So the hook, the planner and
//! `build::render_job` all call [`GitRef::parse`], and nothing answered `202`
//! fails later for a ref the hook could have refused.

use std::fmt;

/// Hex digits of a SHA-1 commit id: the only commit ids the build builds
/// (BuildKit's Git source and `buildkit.sh` take 40 hex digits).
pub const COMMIT_SHA_HEX_DIGITS: usize = 40;
/// Hex digits of a SHA-256 commit id (a repository in SHA-256 mode).
const SHA256_HEX_DIGITS: usize = 64;
/// Longest ref accepted, in bytes.
const MAX_REF_BYTES: usize = 255;
/// Characters Git forbids in refs (`git check-ref-format`), then those the
/// build refuses on top: `#` starts BuildKit's URL fragment, quotes and `$`
/// never reach a shell by design but are refused all the same.
const FORBIDDEN_CHARACTERS: &str = "~^:?*[\\#\"'`$";

/// Whether `value` is a full SHA-1 commit id (40 hex digits, either case):
/// what the build builds without resolving anything.
pub fn is_commit_sha(value: &str) -> bool {
    is_hex_of_length(value, COMMIT_SHA_HEX_DIGITS)
}

/// Whether `value` is the all-zeros id Git hosts send for the missing side
/// of a created or deleted ref.
pub fn is_zero_sha(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && value.bytes().all(|byte| byte == b'0')
}

fn is_hex_of_length(value: &str, digits: usize) -> bool {
    value.len() == digits && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// A ref that may be built: a full commit SHA, a branch, or a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitRef {
    /// A full 40-hex commit id, lower-cased.
    Commit(String),
    /// `refs/heads/<name>`, as given.
    Branch(String),
    /// `refs/tags/<name>`, as given.
    Tag(String),
    /// A bare name: a branch, else a tag (the build looks up
    /// `refs/heads/<name>`, then `refs/tags/<name>`, and nothing else).
    Name(String),
}

/// Why a ref is refused; the reason says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidGitRef {
    pub reason: String,
}

impl GitRef {
    /// Reads `value` (not trimmed: surrounding blanks are refused like any
    /// other whitespace) as a commit SHA, `refs/heads/<name>`,
    /// `refs/tags/<name>` or a bare branch or tag name following
    /// `git check-ref-format --branch`. Refused: other `refs/*`, `HEAD`,
    /// SHA-256 ids (the build cannot build them), revision syntax, `#`.
    pub fn parse(value: &str) -> Result<GitRef, InvalidGitRef> {
        let refuse = |reason: String| Err(InvalidGitRef { reason });
        if value.is_empty() {
            return refuse("it is empty".into());
        }
        if value.len() > MAX_REF_BYTES {
            return refuse(format!("it is {} bytes long, more than {MAX_REF_BYTES}", value.len()));
        }
        if value.chars().any(char::is_whitespace) {
            return refuse("it contains whitespace".into());
        }
        if value.chars().any(char::is_control) {
            return refuse("it contains a control character".into());
        }
        if is_commit_sha(value) {
            return Ok(GitRef::Commit(value.to_ascii_lowercase()));
        }
        if is_hex_of_length(value, SHA256_HEX_DIGITS) {
            return refuse(format!(
                "it is a SHA-256 commit id; the build takes SHA-1 commit ids ({COMMIT_SHA_HEX_DIGITS} hex digits), \
                 branches and tags"
            ));
        }
        if let Some(rest) = value.strip_prefix("refs/") {
            let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
            let make: fn(String) -> GitRef = match kind {
                "heads" => GitRef::Branch,
                "tags" => GitRef::Tag,
                _ => {
                    return refuse(format!(
                        "`refs/{kind}/...` is neither a branch (`refs/heads/...`) nor a tag (`refs/tags/...`)"
                    ));
                }
            };
            if let Some(reason) = name_problem(name) {
                return refuse(reason);
            }
            return Ok(make(value.to_owned()));
        }
        if value == "HEAD" {
            return refuse("`HEAD` is not a branch or tag name: name the branch".into());
        }
        match name_problem(value) {
            Some(reason) => refuse(reason),
            None => Ok(GitRef::Name(value.to_owned())),
        }
    }

    /// The ref as the build receives it.
    pub fn as_str(&self) -> &str {
        match self {
            GitRef::Commit(value) | GitRef::Branch(value) | GitRef::Tag(value) | GitRef::Name(value) => value,
        }
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `git check-ref-format --branch` (plus [`FORBIDDEN_CHARACTERS`])
/// finds wrong with a branch or tag name; blanks and control characters are
/// checked by the caller.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it names no branch or tag after `refs/heads/` or `refs/tags/`".into());
    }
    if let Some(c) = name.chars().find(|c| FORBIDDEN_CHARACTERS.contains(*c)) {
        return Some(format!("it contains `{c}`"));
    }
    for bad in ["..", "@{", "//"] {
        if name.contains(bad) {
            return Some(format!("it contains `{bad}`"));
        }
    }
    if name == "@" {
        return Some("`@` alone is not a ref".into());
    }
    for bad in ["-", "/"] {
        if name.starts_with(bad) {
            return Some(format!("it starts with `{bad}`"));
        }
    }
    for bad in ["/", ".lock", "."] {
        if name.ends_with(bad) {
            return Some(format!("it ends with `{bad}`"));
        }
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return Some("a part between slashes starts with `.`".into());
    }
    if name.split('/').any(|part| part.ends_with(".lock")) {
        return Some("a part between slashes ends with `.lock`".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    #[test]
    fn accepted_refs() {
        let cases = [
            ("main", GitRef::Name("main".into())),
            ("feature/login-page", GitRef::Name("feature/login-page".into())),
            ("v1.2.3", GitRef::Name("v1.2.3".into())),
            ("release_2024.01", GitRef::Name("release_2024.01".into())),
            ("dependabot/npm_and_yarn/lodash-4.17.21", GitRef::Name("dependabot/npm_and_yarn/lodash-4.17.21".into())),
            ("ünïcode", GitRef::Name("ünïcode".into())),
            ("a@b", GitRef::Name("a@b".into())),
            // A short hex name is a valid branch name; the build resolves it like one.
            ("abc1234", GitRef::Name("abc1234".into())),
            ("pull/1/head", GitRef::Name("pull/1/head".into())),
            ("refs/heads/main", GitRef::Branch("refs/heads/main".into())),
            ("refs/heads/feature/x", GitRef::Branch("refs/heads/feature/x".into())),
            ("refs/tags/v1.0.0", GitRef::Tag("refs/tags/v1.0.0".into())),
            (SHA, GitRef::Commit(SHA.into())),
            ("0D1A26E67D8F5EAF1F6BA5C57FC3C7D91AC0FD1C", GitRef::Commit(SHA.into())),
        ];
        for (value, expected) in cases {
            assert_eq!(GitRef::parse(value), Ok(expected), "{value}");
        }
    }

    #[test]
    fn refused_refs() {
        let long = "a".repeat(256);
        let sha256 = "a".repeat(64);
        let cases = [
            ("", "empty"),
            (long.as_str(), "more than 255"),
            ("a b", "whitespace"),
            ("main\n", "whitespace"),
            (" main", "whitespace"),
            ("a\u{7}b", "control"),
            ("a\u{0}b", "control"),
            ("refs/pull/1/head", "`refs/pull/...` is neither a branch"),
            ("refs/merge-requests/1/head", "`refs/merge-requests/...`"),
            ("refs/remotes/origin/main", "`refs/remotes/...`"),
            ("refs/notes/commits", "`refs/notes/...`"),
            ("refs/heads/", "names no branch or tag"),
            ("refs/tags", "names no branch or tag"),
            ("refs/heads/a..b", "`..`"),
            ("refs/heads/-x", "starts with `-`"),
            ("HEAD", "`HEAD` is not a branch"),
            ("HEAD~1", "`~`"),
            ("HEAD^", "`^`"),
            ("main@{1}", "`@{`"),
            ("a..b", "`..`"),
            ("fix#1", "`#`"),
            ("a:b", "`:`"),
            ("a?", "`?`"),
            ("a*", "`*`"),
            ("a[1]", "`[`"),
            ("a\\b", "`\\`"),
            ("a$b", "`$`"),
            ("a'b", "`'`"),
            ("a`b", "contains ```"),
            ("-x", "starts with `-`"),
            ("/x", "starts with `/`"),
            ("x/", "ends with `/`"),
            ("x.lock", "ends with `.lock`"),
            ("x.", "ends with `.`"),
            ("a//b", "`//`"),
            ("a/.hidden", "starts with `.`"),
            (".hidden", "starts with `.`"),
            ("a.lock/b", "ends with `.lock`"),
            ("@", "`@` alone"),
            (sha256.as_str(), "SHA-256"),
        ];
        for (value, why) in cases {
            let error = GitRef::parse(value).expect_err(value);
            assert!(error.to_string().contains(why), "{value:?}: {error}");
        }
    }

    #[test]
    fn commit_and_zero_ids() {
        assert!(is_commit_sha(SHA));
        assert!(is_commit_sha(&SHA.to_uppercase()));
        assert!(!is_commit_sha(&SHA[..39]));
        assert!(!is_commit_sha(&format!("{}g", &SHA[..39])));
        assert!(!is_commit_sha(&"a".repeat(64)));
        assert!(is_zero_sha(&"0".repeat(40)));
        assert!(is_zero_sha(&"0".repeat(64)));
        assert!(is_zero_sha(" 0000 "));
        assert!(!is_zero_sha(""));
        assert!(!is_zero_sha(SHA));
    }
}
