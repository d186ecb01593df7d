//! Repository URL matching: every spelling of one repository compares equal.
//!
//! A Service names its repository the way its owner copied it (`https://`,
//! `git@host:owner/repo.git`, `ssh://`), a Git host's payload names it in
//! several other ways (clone, SSH and web URLs). [`RepoId::parse`] reduces each
//! spelling to a host and a path, so that they compare equal:
//!
//! - scheme, user info, port, `.git` suffix, slashes at the ends and case are
//!   ignored (GitHub, GitLab, Bitbucket and Azure DevOps treat owner and
//!   repository names case-insensitively);
//! - the scp-like form `[user@]host:path` (no scheme) and the scheme-less form
//!   `host/path` are understood;
//! - web URLs of a repository's pages are reduced to the repository where the
//!   host's URL layout makes that unambiguous: `github.com/o/r/tree/main`,
//!   GitLab's `group/repo/-/tree/main`, Bitbucket Server's
//!   `projects/P/repos/r/browse` and `users/u/repos/r/browse`;
//! - Bitbucket Server's `scm/` clone prefix is dropped (`/scm/p/r.git` and
//!   `ssh://host:7999/p/r.git` are one repository);
//! - Azure DevOps spellings (`dev.azure.com/org/project/_git/repo`,
//!   `org.visualstudio.com/[DefaultCollection/]project/_git/repo`,
//!   `git@ssh.dev.azure.com:v3/org/project/repo`) become host `dev.azure.com`,
//!   path `org/project/repo`; a URL without a project (`org/_git/repo`) names
//!   the project of the same name as the repository.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use url::Url;

/// What stands for redacted credentials.
pub const REDACTED: &str = "***";

/// `text` (a repository URL, or a message, a log line with URLs in it) with
/// the user info of every `scheme://user:password@host` replaced by `***`:
/// `https://user:token@host/r` becomes `https://***@host/r`. The one place
/// credentials in URLs are redacted, for everything the operator shows
/// (statuses, Events, logs, hook answers, the build's log lines).
///
/// A token often stands alone in the user part (`https://<token>@host`), so
/// the whole user info goes, except an SSH user name without a password
/// (`ssh://git@host/r`), which is not a secret. The scp-like `git@host:r`
/// form carries no password and is left alone.
pub fn redact_credentials(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let authority_start = search + found + 3;
        // The scheme starts after the last character that cannot be in one,
        // which may take more than one byte.
        let scheme_start = text[..search + found]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = text[scheme_start..search + found].to_ascii_lowercase();
        let rest = &text[authority_start..];
        let authority_len = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>`()[]{},;".contains(c))
            .unwrap_or(rest.len());
        search = authority_start + authority_len;
        let Some(at) = rest[..authority_len].rfind('@') else { continue };
        let user_info = &rest[..at];
        let ssh_user = scheme.split('+').any(|part| part == "ssh") && !user_info.contains(':');
        if user_info.is_empty() || ssh_user {
            continue;
        }
        out.push_str(&text[copied..authority_start]);
        out.push_str(REDACTED);
        copied = authority_start + at;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A repository identity: host (lower-case, no port/user) and path (lower-case, no `.git`, no slashes at the ends).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoId {
    pub host: String,
    pub path: String,
}

impl RepoId {
    /// Parses any common spelling of a repository URL; `None` when `url` names no repository.
    pub fn parse(url: &str) -> Option<RepoId> {
        let input = url.trim();
        if input.is_empty() || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let parsed = if input.contains("://") {
            Url::parse(input).ok()?
        } else {
            scp_like(input).or_else(|| schemeless(input))?
        };
        from_url(&parsed)
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// `[user@]host:path` as Git reads it: a `:` before any `/`.
pub struct ScpLike<'a> {
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub path: &'a str,
}

/// Splits the scp-like form, or `None` when `input` is not one. Without a
/// user, a bare `host:path` counts only when the host looks like one (not
/// `C:` or `mailto:`), and `host:1234/path` is a host and port without a scheme.
pub fn split_scp_like(input: &str) -> Option<ScpLike<'_>> {
    let (before, path) = input.split_once(':')?;
    if before.contains('/') || path.starts_with("//") {
        return None;
    }
    let (user, host) = match before.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, before),
    };
    if user.is_none() {
        let first = path.split('/').next().unwrap_or_default();
        let port = path.contains('/') && !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit());
        if port || !looks_like_host(host) {
            return None;
        }
    }
    Some(ScpLike { user, host, path })
}

fn scp_like(input: &str) -> Option<Url> {
    let ScpLike { user, host, path } = split_scp_like(input)?;
    if host.is_empty() || path.trim_matches('/').is_empty() {
        return None;
    }
    let mut url = Url::parse(&format!("ssh://{host}/{}", path.trim_start_matches('/'))).ok()?;
    // Set, not spliced into the string: a `?`, `#` or `@` in the user name must not end the host.
    if let Some(user) = user {
        url.set_username(user).ok()?;
    }
    Some(url)
}

/// `host[:port]/path` without a scheme, read as `https://`.
fn schemeless(input: &str) -> Option<Url> {
    let (authority, path) = input.split_once('/')?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    if !looks_like_host(host) || path.trim_matches('/').is_empty() {
        return None;
    }
    Url::parse(&format!("https://{input}")).ok()
}

fn looks_like_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || (host.contains('.')
            && !host.starts_with('.')
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b >= 0x80))
}

fn from_url(url: &Url) -> Option<RepoId> {
    let host = url.host_str()?.trim_end_matches('.').to_lowercase();
    if host.is_empty() {
        return None;
    }
    // An escaped slash (`%2F`, as in GitLab's `group%2Frepo`) separates parts as a slash does,
    // so that no part is empty and the path has no slash at its ends.
    let mut segments: Vec<String> = url
        .path_segments()?
        .map(|s| percent_decode_str(s).decode_utf8_lossy().to_lowercase())
        .flat_map(|s| s.split('/').filter(|part| !part.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if let Some(last) = segments.last_mut()
        && let Some(stripped) = last.strip_suffix(".git")
    {
        *last = stripped.to_owned();
        if last.is_empty() {
            segments.pop();
        }
    }
    let user = percent_decode_str(url.username()).decode_utf8_lossy().to_lowercase();
    let (host, segments) = normalise(host, &user, segments)?;
    if segments.is_empty() || segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(RepoId { host, path: segments.join("/") })
}

/// Host-specific URL layouts reduced to one repository path.
fn normalise(host: String, user: &str, mut segs: Vec<String>) -> Option<(String, Vec<String>)> {
    const AZURE: &str = "dev.azure.com";
    match host.as_str() {
        "dev.azure.com" => {
            let (org, rest) = segs.split_first()?;
            Some((AZURE.into(), azure(org, rest)))
        }
        "ssh.dev.azure.com" | "vs-ssh.visualstudio.com" if segs.first().is_some_and(|s| s == "v3") => {
            // v3/org/project/repo
            (segs.len() >= 4).then(|| (AZURE.into(), segs[1..4].to_vec()))
        }
        "vs-ssh.visualstudio.com" => {
            // Older SSH form: ssh://org@vs-ssh.visualstudio.com:22/[DefaultCollection/]project/_ssh/repo
            if user.is_empty() {
                return None;
            }
            Some((AZURE.into(), azure(user, &segs)))
        }
        h if h.ends_with(".visualstudio.com") => {
            let org = h.strip_suffix(".visualstudio.com").unwrap_or(h);
            Some((AZURE.into(), azure(org, &segs)))
        }
        // Repositories are exactly owner/name there: anything after is a page of the repository.
        "github.com" | "www.github.com" | "bitbucket.org" => {
            if segs.len() < 2 {
                return None; // an owner or workspace, not a repository
            }
            segs.truncate(2);
            let host = host.trim_start_matches("www.").to_owned();
            Some((host, segs))
        }
        _ => {
            let segs = bitbucket_server(segs);
            Some((host, gitlab_pages(segs)))
        }
    }
}

/// Azure DevOps: `[DefaultCollection/][project/]_git/repo[/...]` below the organisation.
fn azure(org: &str, rest: &[String]) -> Vec<String> {
    let rest = match rest.first() {
        Some(first) if first == "defaultcollection" => &rest[1..],
        _ => rest,
    };
    let marker = rest.iter().position(|s| s == "_git" || s == "_ssh");
    match marker {
        Some(i) if i + 1 < rest.len() => {
            let repo = rest[i + 1].clone();
            let project = if i == 0 { repo.clone() } else { rest[..i].join("/") };
            vec![org.to_owned(), project, repo]
        }
        _ => std::iter::once(org.to_owned()).chain(rest.iter().cloned()).collect(),
    }
}

/// Bitbucket Server / Data Center: `[context/]scm/p/r` (clone), `[context/]projects/P/repos/r[/browse...]`
/// and `[context/]users/u/repos/r[/browse...]` (web) become `p/r` and `~u/r`, as the SSH URL names them.
fn bitbucket_server(segs: Vec<String>) -> Vec<String> {
    const PAGES: &[&str] = &["browse", "commits", "branches", "pull-requests", "compare", "settings", "raw"];
    for i in 0..segs.len() {
        let tail = &segs[i..];
        match tail {
            [scm, project, repo] if scm == "scm" => return vec![project.clone(), repo.clone()],
            [kind, owner, repos, repo, rest @ ..]
                if repos == "repos"
                    && (kind == "projects" || kind == "users")
                    && rest.first().is_none_or(|page| PAGES.contains(&page.as_str())) =>
            {
                let owner = if kind == "users" { format!("~{owner}") } else { owner.clone() };
                return vec![owner, repo.clone()];
            }
            _ => {}
        }
    }
    segs
}

/// GitLab (and Gitea-style) pages live below a `-` segment: `group/sub/repo/-/tree/main`.
fn gitlab_pages(mut segs: Vec<String>) -> Vec<String> {
    if let Some(i) = segs.iter().position(|s| s == "-")
        && i >= 2
    {
        segs.truncate(i);
    }
    segs
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_credentials;

    /// Found by the `provider_by_shape` fuzz target: a character of more than
    /// one byte just before a scheme split it mid-character (a panic).
    #[test]
    fn a_multi_byte_character_before_the_scheme_is_kept_whole() {
        assert_eq!(redact_credentials("\u{5fa}https://u:p@h/r"), "\u{5fa}https://***@h/r");
        assert_eq!(redact_credentials("é://u:p@h"), "é://***@h");
        assert_eq!(redact_credentials("\u{5fa}ps://github.c@ome/x"), "\u{5fa}ps://***@ome/x");
    }

    #[test]
    fn credentials_in_urls_are_redacted_wherever_they_stand() {
        for (input, expected) in [
            ("https://user:secret@github.com/o/r", "https://***@github.com/o/r"),
            ("https://ghp_token@github.com/o/r.git", "https://***@github.com/o/r.git"),
            ("HTTP://oauth2:glpat-x@gitlab.example.com:8443/g/r", "HTTP://***@gitlab.example.com:8443/g/r"),
            ("git://u:p@host/r", "git://***@host/r"),
            ("ssh://git:secret@host/r", "ssh://***@host/r"),
            (
                "building https://a:b@h/r at main; then https://c@h2/r failed",
                "building https://***@h/r at main; then https://***@h2/r failed",
            ),
            ("\"https://a:b@h/r\"", "\"https://***@h/r\""),
            ("https://a:p%40ss@h/r", "https://***@h/r"),
        ] {
            assert_eq!(redact_credentials(input), expected, "{input}");
        }
        for kept in [
            "https://github.com/o/r",
            "ssh://git@host:7999/p/r.git",
            "git@github.com:o/r.git",
            "no URL here, only user@example.com",
            "https://host/path/with@at",
            "://@",
            "",
        ] {
            assert_eq!(redact_credentials(kept), kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `a` and `b` name the same repository. Unparsable URLs match nothing, not even themselves.
    fn same_repository(a: &str, b: &str) -> bool {
        match (RepoId::parse(a), RepoId::parse(b)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    fn id(host: &str, path: &str) -> Option<RepoId> {
        Some(RepoId { host: host.into(), path: path.into() })
    }

    #[test]
    fn parses_to_host_and_path() {
        let cases: &[(&str, Option<RepoId>)] = &[
            ("https://github.com/O/R", id("github.com", "o/r")),
            ("git@github.com:O/R.git", id("github.com", "o/r")),
            ("  https://github.com/O/R  ", id("github.com", "o/r")),
            ("https://github.com/O/R/tree/main/src", id("github.com", "o/r")),
            ("https://gitlab.com/group/sub/repo.git", id("gitlab.com", "group/sub/repo")),
            ("https://gitlab.com/group/sub/repo/-/tree/main", id("gitlab.com", "group/sub/repo")),
            ("http://localhost:3000/unknwon/webhooks.git", id("localhost", "unknwon/webhooks")),
            ("localhost:3000/unknwon/webhooks", id("localhost", "unknwon/webhooks")),
            ("git@localhost:example/example.git", id("localhost", "example/example")),
            ("git@myhost:team/repo", id("myhost", "team/repo")),
            ("git@host:/srv/git/repo.git", id("host", "srv/git/repo")),
            (
                "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
                id("server.bitbucket.local", "~gopher/webhook-test"),
            ),
            ("https://dev.azure.com/org/My%20Project/_git/Repo", id("dev.azure.com", "org/my project/repo")),
            (
                "https://fabrikam.visualstudio.com/DefaultCollection/_git/Fabrikam",
                id("dev.azure.com", "fabrikam/fabrikam/fabrikam"),
            ),
            ("ssh://git@github.com./O/R", id("github.com", "o/r")),
            // Not repositories.
            ("", None),
            ("   ", None),
            ("not a url", None),
            ("https://", None),
            ("https://github.com", None),
            ("https://github.com/", None),
            ("https://github.com/owner", None),
            ("https://github.com/.git", None),
            ("github.com", None),
            ("O/R", None),
            ("file:///srv/git/repo.git", None),
            ("mailto:someone@example.com", None),
            ("C:\\src\\repo", None),
            ("a:b", None),
            ("git@:o/r", None),
            ("git@github.com:", None),
            ("https://github.com/o/r\n", id("github.com", "o/r")),
            ("https://github.com/o /r", None),
            // Found by the repo_url fuzz target: an escaped slash left a slash at the end, or an empty part.
            ("https://h.example/a/b%2F", id("h.example", "a/b")),
            ("https://h.example/a%2F%2Fb", id("h.example", "a/b")),
            ("https://h.example/a/b%2F.git", id("h.example", "a/b")),
            ("https://gitlab.com/group%2Fsub/repo", id("gitlab.com", "group/sub/repo")),
            ("https://h.example/%2F", None),
            // Found by the buildkit_remote fuzz target: a `?` in an scp-like user name ended the host.
            ("x?@github.com:o/r", id("github.com", "o/r")),
            ("a@b?@github.com:O/R.git", id("github.com", "o/r")),
        ];
        for (url, want) in cases {
            assert_eq!(&RepoId::parse(url), want, "RepoId::parse({url:?})");
        }
    }

    /// Each group names one repository: every member matches every other.
    const SAME: &[&[&str]] = &[
        &[
            "https://github.com/O/R",
            "https://github.com/O/R.git",
            "git@github.com:O/R.git",
            "ssh://git@github.com:22/O/R",
            "HTTPS://GitHub.com/o/r/",
            "http://user:pass@github.com/O/R",
            "git://github.com/O/R.git",
            "github.com/O/R",
            "git+ssh://git@github.com/O/R.git",
            "https://github.com/O/R.git/",
            "https://github.com/O/R/blob/main/README.md",
        ],
        &[
            "https://bitbucket.org/team/repo",
            "git@bitbucket.org:team/repo.git",
            "https://user@bitbucket.org/team/repo.git",
            "https://bitbucket.org/Team/Repo/branch/master",
        ],
        &[
            "https://host.example/scm/proj/repo.git",
            "ssh://git@host.example:7999/proj/repo.git",
            "https://host.example/projects/PROJ/repos/repo/browse",
            "https://host.example/projects/PROJ/repos/repo",
            "https://host.example/projects/PROJ/repos/repo/browse/src/main.rs",
            "https://host.example/bitbucket/scm/proj/repo.git",
            "https://host.example/bitbucket/projects/PROJ/repos/repo/browse",
        ],
        // Bitbucket Server personal repositories (the fixture's three spellings).
        &[
            "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
            "ssh://git@server.bitbucket.local:7999/~gopher/webhook-test.git",
            "https://server.bitbucket.local/users/gopher/repos/webhook-test/browse",
        ],
        &[
            "https://gitlab.com/group/sub/repo.git",
            "git@gitlab.com:group/sub/repo.git",
            "https://gitlab.com/Group/Sub/Repo",
            "https://gitlab.com/group/sub/repo/-/merge_requests/1",
        ],
        // Self-hosted GitLab and Gitea/Gogs: HTTP on one port, SSH on another.
        &[
            "http://example.com/mike/diaspora.git",
            "git@example.com:mike/diaspora.git",
            "http://example.com/mike/diaspora",
        ],
        &[
            "http://localhost:3000/unknwon/webhooks.git",
            "ssh://unknwon@localhost:2222/unknwon/webhooks.git",
            "http://localhost:3000/unknwon/webhooks",
        ],
        &[
            "https://dev.azure.com/org/project/_git/repo",
            "https://org@dev.azure.com/org/project/_git/repo",
            "git@ssh.dev.azure.com:v3/org/project/repo",
            "https://org.visualstudio.com/project/_git/repo",
            "https://org.visualstudio.com/DefaultCollection/project/_git/repo",
            "ssh://org@vs-ssh.visualstudio.com:22/project/_ssh/repo",
            "org@vs-ssh.visualstudio.com:v3/org/project/repo",
            "https://dev.azure.com/Org/Project/_git/Repo?path=/src",
        ],
        // Azure DevOps: the project part may be left out when it is named like the repository.
        &[
            "https://dev.azure.com/fabrikam-fiber-inc/DefaultCollection/_git/Fabrikam-Fiber-Git",
            "https://dev.azure.com/fabrikam-fiber-inc/_git/Fabrikam-Fiber-Git",
            "https://fabrikam-fiber-inc.visualstudio.com/DefaultCollection/_git/Fabrikam-Fiber-Git",
            "https://fabrikam-fiber-inc.visualstudio.com/Fabrikam-Fiber-Git/_git/Fabrikam-Fiber-Git",
            "git@ssh.dev.azure.com:v3/fabrikam-fiber-inc/Fabrikam-Fiber-Git/Fabrikam-Fiber-Git",
        ],
        &["https://dev.azure.com/org/My%20Project/_git/repo", "git@ssh.dev.azure.com:v3/org/My%20Project/repo"],
    ];

    #[test]
    fn spellings_of_one_repository_match() {
        for group in SAME {
            for a in *group {
                for b in *group {
                    assert!(same_repository(a, b), "{a} should name the same repository as {b}");
                }
            }
        }
    }

    #[test]
    fn different_repositories_never_match() {
        for (i, group) in SAME.iter().enumerate() {
            for other in &SAME[i + 1..] {
                for a in *group {
                    for b in *other {
                        assert!(!same_repository(a, b), "{a} should not match {b}");
                    }
                }
            }
        }
        let pairs = [
            // Other host, same path.
            ("https://github.com/o/r", "https://gitlab.com/o/r"),
            ("https://github.com/o/r", "https://bitbucket.org/o/r"),
            ("git@github.com:o/r.git", "git@github.example.com:o/r.git"),
            // Same host, other path.
            ("https://github.com/o/r", "https://github.com/o/r2"),
            ("https://github.com/o/r", "https://github.com/o2/r"),
            ("https://github.com/o/r", "https://github.com/o"),
            ("https://github.com/o/r", "https://github.com/r/o"),
            ("https://gitlab.com/group/sub/repo", "https://gitlab.com/group/repo"),
            ("https://gitlab.com/group/sub/repo", "gitlab.com/group/repo"),
            ("https://gitlab.com/group/sub/repo", "https://gitlab.com/sub/repo"),
            ("https://dev.azure.com/org/project/_git/repo", "https://dev.azure.com/org/other/_git/repo"),
            ("https://dev.azure.com/org/project/_git/repo", "https://dev.azure.com/org2/project/_git/repo"),
            ("https://org.visualstudio.com/project/_git/repo", "https://org2.visualstudio.com/project/_git/repo"),
            ("https://host.example/scm/proj/repo.git", "https://host.example/scm/proj/other.git"),
            ("https://host.example/projects/PROJ/repos/repo/browse", "https://host.example/users/proj/repos/repo"),
            ("https://host.example/scm/proj/repo.git", "https://other.example/scm/proj/repo.git"),
            // `.git` only ends a URL: a repository named `r.git.bak` is not `r`.
            ("https://github.com/o/r.git.bak", "https://github.com/o/r"),
            // Garbage matches nothing, not even itself.
            ("", ""),
            ("not a url", "not a url"),
            ("https://", "https://"),
            ("https://github.com/o/r", ""),
            ("", "https://github.com/o/r"),
            ("https://github.com/o/r", "not a url"),
        ];
        for (a, b) in pairs {
            assert!(!same_repository(a, b), "{a:?} should not match {b:?}");
            assert!(!same_repository(b, a), "{b:?} should not match {a:?}");
        }
    }
}
