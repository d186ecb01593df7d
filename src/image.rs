//! Image references: one parser for what Services deploy (`spec.image`),
//! what builds push to (`spec.build.image`), what registries report pushed and
//! what the registry client resolves.
//!
//! [`ImageReference::parse`] understands the references users write
//! (`nginx`, `team/web:stable`, `registry.example.com:5000/team/web:1.2`,
//! `localhost/web`, `[::1]:5000/web`, `web@sha256:…`) with Docker's defaults: no
//! registry means Docker Hub (`registry-1.docker.io`, single names under
//! `library/`), no tag means `latest`; it refuses what a registry or a node
//! would refuse (upper-case repositories, whitespace, schemes, bad digests).

use std::fmt;
use std::net::Ipv6Addr;

/// The host Docker Hub's registry API is served from.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// Names of Docker Hub in references and in docker config files.
const DOCKER_HUB_ALIASES: &[&str] =
    &["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"];

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{reference}`: {reason}")]
pub struct InvalidImageReference {
    pub reference: String,
    pub reason: String,
}

/// A parsed image reference.
///
/// `registry` is the host (and port) the distribution API is asked at
/// (`registry-1.docker.io` for Docker Hub); `repository` the full repository
/// path (`library/nginx`). `tag` is `None` only when the reference has a
/// digest; a reference with neither has the tag `latest`.
#[derive(Clone, Debug)]
pub struct ImageReference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// The name part as the user wrote it (`nginx`, `docker.io/team/web`), for [`ImageReference::pinned`].
    name: String,
}

impl PartialEq for ImageReference {
    /// Equal when they name the same image, however they were spelled.
    fn eq(&self, other: &Self) -> bool {
        self.registry == other.registry
            && self.repository == other.repository
            && self.tag == other.tag
            && self.digest == other.digest
    }
}

impl Eq for ImageReference {}

impl fmt::Display for ImageReference {
    /// The user's spelling of the name, with the tag and digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl ImageReference {
    /// Parses `[registry/]repository[:tag][@digest]` with Docker's rules: the
    /// first path segment is a registry when it contains `.` or `:`, is
    /// `localhost`, or has upper-case letters; otherwise the image is on Docker
    /// Hub, where a single-segment name is under `library/`.
    pub fn parse(reference: &str) -> Result<Self, InvalidImageReference> {
        let bad = |reason: String| InvalidImageReference { reference: reference.to_owned(), reason };
        if reference.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace".into()));
        }
        if reference.contains("://") {
            return Err(bad("it has a URL scheme; write `host[:port]/repository:tag` without `https://`".into()));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(validate_digest(digest).map_err(bad)?)),
            None => (reference, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => (&rest[..colon], Some(&rest[colon + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(bad)?;
        }
        if name.is_empty() {
            return Err(bad("it has no repository name".into()));
        }
        if name.len() > 255 {
            return Err(bad("the name is longer than 255 characters".into()));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                validate_domain(first).map_err(bad)?;
                (Some(first), path)
            }
            _ => (None, name),
        };
        validate_path(path).map_err(bad)?;
        let docker_hub = domain.is_none_or(is_docker_hub);
        let repository = if docker_hub && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
        let registry = match domain {
            Some(domain) if !docker_hub => domain.to_owned(),
            _ => DOCKER_HUB_REGISTRY.to_owned(),
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(ImageReference { registry, repository, tag, digest, name: name.to_owned() })
    }

    /// Parses the repository a build pushes to (`spec.build.image`):
    /// `[registry/]repository` with neither tag nor digest, as each build is
    /// tagged with its commit.
    pub fn parse_repository(repository: &str) -> Result<Self, InvalidImageReference> {
        let bad = |reason: &str| InvalidImageReference { reference: repository.to_owned(), reason: reason.to_owned() };
        if repository.contains('@') {
            return Err(bad("it has a digest: give the repository only, e.g. registry.example.com/team/web"));
        }
        let parsed = ImageReference::parse(repository)?;
        if parsed.name != repository {
            return Err(bad(
                "it has a tag: give the repository only (e.g. registry.example.com/team/web); each build is tagged \
                 with its commit SHA",
            ));
        }
        Ok(parsed)
    }

    /// The image a registry's push event names: its repository as the
    /// registry spells it (Docker Hub's web paths `u/<namespace>/<name>` and
    /// `_/<name>` included) and the pushed tag, if any.
    pub fn pushed(repository: &str, tag: Option<&str>) -> Result<Self, InvalidImageReference> {
        let repository = repository.trim();
        let mut image = match docker_hub_web_path(repository) {
            Some(reference) => ImageReference::parse(&reference),
            None => ImageReference::parse(repository),
        }
        .map_err(|error| InvalidImageReference { reference: repository.to_owned(), ..error })?;
        if let Some(tag) = tag.map(str::trim).filter(|t| !t.is_empty()) {
            validate_tag(tag)
                .map_err(|reason| InvalidImageReference { reference: format!("{repository}:{tag}"), reason })?;
            image.tag = Some(tag.to_owned());
        }
        Ok(image)
    }

    /// The tag, `latest` when the reference names a digest only.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// Whether both name the same repository and tag (digests aside): what a
    /// registry push of `self` redeploys. Registry host names are
    /// case-insensitive.
    pub fn same_tag_as(&self, other: &ImageReference) -> bool {
        self.registry.eq_ignore_ascii_case(&other.registry)
            && self.repository == other.repository
            && self.tag_or_latest() == other.tag_or_latest()
    }

    /// The repository and tag in the one spelling every equal reference has:
    /// `docker.io/library/nginx:latest`, `registry.example.com:5000/team/web:v2`
    /// (the registry host as written: host names compare case-insensitively).
    pub fn canonical(&self) -> String {
        format!("{}/{}:{}", self.registry_display(), self.repository, self.tag_or_latest())
    }

    /// The reference pinned to `digest`: the name as the user wrote it, without
    /// the tag: `registry.example.com/team/web@sha256:…`, `nginx@sha256:…`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name)
    }

    /// The name part as the user wrote it (no tag, no digest).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the manifest is asked for by: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The registry as users call it: `docker.io` for Docker Hub.
    pub fn registry_display(&self) -> &str {
        if self.registry == DOCKER_HUB_REGISTRY { "docker.io" } else { &self.registry }
    }
}

/// `docker.io/<namespace>/<name>` for Docker Hub's web paths
/// `[hub/]u/<namespace>/<name>` and `[hub/]_/<name>` (official images); a
/// Docker Hub repository is never three components deep, nor named `_`.
fn docker_hub_web_path(reference: &str) -> Option<String> {
    let path = match reference.split_once('/') {
        Some((host, path)) if is_docker_hub(host) => path,
        _ => reference,
    };
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["u", namespace, name] => Some(format!("docker.io/{namespace}/{name}")),
        ["_", name] => Some(format!("docker.io/library/{name}")),
        _ => None,
    }
}

/// Whether `host` is one of Docker Hub's names.
pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES.iter().any(|alias| alias.eq_ignore_ascii_case(host))
}

/// Checks an OCI digest (`sha256:` and 64 lower-case hex digits, or `sha512:` and 128); the error is a reason.
pub fn validate_digest(digest: &str) -> Result<String, String> {
    let (algorithm, hex) =
        digest.split_once(':').ok_or_else(|| format!("the digest `{digest}` is not `sha256:<64 hex digits>`"))?;
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("the digest algorithm `{algorithm}` is not supported (use sha256)")),
    };
    if hex.len() != length || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("the digest `{digest}` is not `{algorithm}:` followed by {length} lower-case hex digits"));
    }
    Ok(digest.to_owned())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if bytes.is_empty() {
        return Err("the tag after `:` is empty".into());
    }
    if bytes.len() > 128 {
        return Err(format!("the tag `{tag}` is longer than 128 characters"));
    }
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err(format!(
            "the tag `{tag}` may only have letters, digits, `_`, `.` and `-`, and must not start with `.` or `-`"
        ));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = || format!("the registry `{domain}` is not a valid host[:port]");
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(bad)?;
        address.parse::<Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |label: &str| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(format!("the port of the registry `{domain}` is not a number from 0 to 65535"));
    }
    Ok(())
}

/// Repository path components: `[a-z0-9]+` runs joined by `.`, `_`, `__` or
/// dashes, as the distribution spec requires.
fn validate_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err("the repository has an empty path component (`//`, or `/` at an end)".into());
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("the repository name `{path}` must be lower-case"));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
        let mut index = 0;
        while ok && index < bytes.len() {
            if alnum(bytes[index]) {
                index += 1;
                continue;
            }
            let start = index;
            while index < bytes.len() && !alnum(bytes[index]) {
                index += 1;
            }
            let separator = &component[start..index];
            ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        }
        if !ok {
            return Err(format!(
                "the repository path component `{component}` may only have lower-case letters and digits, joined by \
                 `.`, `_`, `__` or dashes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parsed(reference: &str) -> (String, String, Option<String>, Option<String>) {
        let image = ImageReference::parse(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        (image.registry, image.repository, image.tag, image.digest)
    }

    #[test]
    fn parses_references() {
        let hub = DOCKER_HUB_REGISTRY;
        let digest_ref = format!("team/web@{D}");
        let tagged_digest = format!("registry.example.com/web:1.0@{D}");
        type Expected<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let table: Vec<(&str, Expected)> = vec![
            ("nginx", (hub, "library/nginx", Some("latest"), None)),
            ("nginx:1.27-alpine", (hub, "library/nginx", Some("1.27-alpine"), None)),
            ("team/web", (hub, "team/web", Some("latest"), None)),
            ("team/web:stable", (hub, "team/web", Some("stable"), None)),
            ("docker.io/nginx", (hub, "library/nginx", Some("latest"), None)),
            ("docker.io/library/nginx:1", (hub, "library/nginx", Some("1"), None)),
            ("index.docker.io/team/web:v2", (hub, "team/web", Some("v2"), None)),
            ("registry-1.docker.io/team/web", (hub, "team/web", Some("latest"), None)),
            ("registry.example.com/team/web:stable", ("registry.example.com", "team/web", Some("stable"), None)),
            ("registry.example.com/web", ("registry.example.com", "web", Some("latest"), None)),
            ("host:5000/a/b:tag", ("host:5000", "a/b", Some("tag"), None)),
            ("host:5000/a/b", ("host:5000", "a/b", Some("latest"), None)),
            ("localhost/x", ("localhost", "x", Some("latest"), None)),
            ("localhost:5000/x:dev", ("localhost:5000", "x", Some("dev"), None)),
            ("127.0.0.1:5000/a/b/c:1.0.0", ("127.0.0.1:5000", "a/b/c", Some("1.0.0"), None)),
            ("[::1]:5000/x:y", ("[::1]:5000", "x", Some("y"), None)),
            ("Registry/x", ("Registry", "x", Some("latest"), None)),
            ("ghcr.io/o-r/my_app__x.y:v1_2", ("ghcr.io", "o-r/my_app__x.y", Some("v1_2"), None)),
            ("quay.io/a--b/c", ("quay.io", "a--b/c", Some("latest"), None)),
            (&digest_ref, (hub, "team/web", None, Some(D))),
            (&tagged_digest, ("registry.example.com", "web", Some("1.0"), Some(D))),
        ];
        for (reference, (registry, repository, tag, digest)) in table {
            assert_eq!(
                parsed(reference),
                (registry.into(), repository.into(), tag.map(Into::into), digest.map(Into::into)),
                "{reference}"
            );
        }
    }

    #[test]
    fn rejects_bad_references() {
        let cases = [
            ("", "empty"),
            (" nginx", "whitespace"),
            ("nginx latest", "whitespace"),
            ("https://registry.example.com/web", "scheme"),
            ("nginx:", "tag after `:` is empty"),
            ("nginx:.hidden", "tag `.hidden`"),
            ("nginx:-x", "tag `-x`"),
            ("nginx:a/b", "port of the registry `nginx:a`"),
            ("Nginx", "must be lower-case"),
            ("docker.io/Team/web", "must be lower-case"),
            ("team//web", "empty path component"),
            ("team/web/", "empty path component"),
            ("/web", "empty path component"),
            ("registry.example.com/", "empty path component"),
            ("team/-web", "`-web`"),
            ("team/web.", "`web.`"),
            ("team/we..b", "`we..b`"),
            ("team/we___b", "`we___b`"),
            ("web@sha256:abc", "64 lower-case hex"),
            ("web@md5:0123", "algorithm `md5`"),
            ("web@latest", "not `sha256:<64 hex digits>`"),
            ("reg_istry.com/web", "not a valid host"),
            ("-registry.com/web", "not a valid host"),
            ("host:99999/web", "port"),
            ("host:/web", "port"),
            ("[::1/web", "not a valid host"),
            ("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "no repository"),
        ];
        for (reference, expected) in cases {
            let error = ImageReference::parse(reference).expect_err(reference).to_string();
            assert!(error.starts_with(&format!("invalid image reference `{reference}`: ")), "{reference}: {error}");
            assert!(error.contains(expected), "{reference}: {error} does not mention {expected}");
        }
        let long = format!("registry.example.com/{}", "a".repeat(250));
        assert!(ImageReference::parse(&long).unwrap_err().to_string().contains("longer than 255"));
    }

    #[test]
    fn pins_in_the_users_spelling() {
        let cases = [
            ("nginx", "nginx"),
            ("nginx:1.27", "nginx"),
            ("docker.io/library/nginx:1.27", "docker.io/library/nginx"),
            ("registry.example.com/team/web:stable", "registry.example.com/team/web"),
            ("localhost:5000/x", "localhost:5000/x"),
        ];
        for (reference, name) in cases {
            let image = ImageReference::parse(reference).unwrap();
            assert_eq!(image.pinned(D), format!("{name}@{D}"), "{reference}");
            assert_eq!(ImageReference::parse(&image.pinned(D)).unwrap().digest.as_deref(), Some(D));
        }
        let pinned_before = ImageReference::parse(&format!("web:1@{D}")).unwrap();
        let other = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        assert_eq!(pinned_before.pinned(other), format!("web@{other}"));
        assert_eq!(pinned_before.to_string(), format!("web:1@{D}"));
        assert_eq!(ImageReference::parse("nginx").unwrap().to_string(), "nginx:latest");
        assert_eq!(pinned_before.manifest_reference(), D);
    }

    #[test]
    fn spellings_of_one_image_are_equal() {
        let nginx = ImageReference::parse("nginx").unwrap();
        assert_eq!(nginx, ImageReference::parse("docker.io/library/nginx:latest").unwrap());
        assert_eq!(nginx.registry_display(), "docker.io");
        assert_ne!(nginx, ImageReference::parse("nginx:1").unwrap());
    }

    #[test]
    fn build_repositories_have_neither_tag_nor_digest() {
        for (repository, reason) in [
            ("registry.example.com/acme/web:latest", "has a tag"),
            ("web:1.0", "has a tag"),
            ("localhost:5000/web:dev", "has a tag"),
            (&format!("registry.example.com/acme/web@{D}") as &str, "has a digest"),
            ("registry.example.com/Acme/web", "lower-case"),
            ("", "empty"),
        ] {
            let error = ImageReference::parse_repository(repository).expect_err(repository).to_string();
            assert!(error.contains(reason), "{repository}: {error}");
        }
        for (repository, registry, path) in [
            ("web", DOCKER_HUB_REGISTRY, "library/web"),
            ("localhost:5000/web", "localhost:5000", "web"),
            ("[::1]:5000/team/web", "[::1]:5000", "team/web"),
            ("registry.example.com:5000/a_b/c__d/e--f/g.h", "registry.example.com:5000", "a_b/c__d/e--f/g.h"),
        ] {
            let image = ImageReference::parse_repository(repository).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((image.registry.as_str(), image.repository.as_str()), (registry, path), "{repository}");
        }
    }

    #[test]
    fn pushes_match_the_references_that_deploy_them() {
        let cases = [
            ("nginx", None, "docker.io/library/nginx:latest"),
            ("nginx", Some("1.25"), "docker.io/library/nginx:1.25"),
            ("library/nginx", Some(" "), "docker.io/library/nginx:latest"),
            ("svendowideit/testhook", Some("latest"), "docker.io/svendowideit/testhook:latest"),
            ("registry.hub.docker.com/u/svendowideit/testhook", None, "docker.io/svendowideit/testhook:latest"),
            ("u/svendowideit/testhook", None, "docker.io/svendowideit/testhook:latest"),
            ("registry-1.docker.io/_/nginx", None, "docker.io/library/nginx:latest"),
            ("localhost:5000/web", None, "localhost:5000/web:latest"),
            ("Registry.Example.com/team/web", Some("V2"), "Registry.Example.com/team/web:V2"),
            ("ghcr.io/o/r/sub", Some("1"), "ghcr.io/o/r/sub:1"),
        ];
        for (repository, tag, canonical) in cases {
            let pushed = ImageReference::pushed(repository, tag).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(pushed.canonical(), canonical, "{repository} {tag:?}");
        }
        let deployed = |reference: &str| ImageReference::parse(reference).unwrap_or_else(|e| panic!("{e}"));
        let pushed = ImageReference::pushed("nginx", Some("1.25")).unwrap_or_else(|e| panic!("{e}"));
        for reference in ["nginx:1.25", "docker.io/library/nginx:1.25", &format!("index.docker.io/nginx:1.25@{D}")] {
            assert!(pushed.same_tag_as(&deployed(reference)), "{reference}");
        }
        for reference in ["nginx", "nginx:1.26", "ghcr.io/library/nginx:1.25", "team/nginx:1.25"] {
            assert!(!pushed.same_tag_as(&deployed(reference)), "{reference}");
        }
        // A digest-only reference counts as `latest`, as Docker reads it when it is pulled by tag.
        let latest = ImageReference::pushed("nginx", None).unwrap_or_else(|e| panic!("{e}"));
        assert!(latest.same_tag_as(&deployed(&format!("nginx@{D}"))));
        for garbage in ["", " ", "a b", "ghcr.io/", "team/Web"] {
            assert!(ImageReference::pushed(garbage, None).is_err(), "{garbage:?}");
        }
        assert!(ImageReference::pushed("nginx", Some("-x")).is_err());
    }

    fn reference() -> impl Strategy<Value = String> {
        let registry = proptest::sample::select(
            &[
                "",
                "docker.io/",
                "index.docker.io/",
                "localhost/",
                "localhost:5000/",
                "registry.example.com:5000/",
                "Registry.Example.com/",
                "ghcr.io/",
                "127.0.0.1:5000/",
                "[::1]:5000/",
            ][..],
        );
        let component = "[a-z0-9]{1,6}((\\.|_|__|-+)[a-z0-9]{1,6})?";
        let path = proptest::collection::vec(component, 1..4).prop_map(|parts| parts.join("/"));
        let tag = proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}");
        let digest = proptest::option::of("[0-9a-f]{64}");
        (registry, path, tag, digest).prop_map(|(registry, path, tag, digest)| {
            let tag = tag.map(|t| format!(":{t}")).unwrap_or_default();
            let digest = digest.map(|d| format!("@sha256:{d}")).unwrap_or_default();
            format!("{registry}{path}{tag}{digest}")
        })
    }

    proptest! {
        /// What a Service may deploy is what the registry client resolves, its
        /// repository is what a build may push to, and a push of it matches it.
        #[test]
        fn every_deployable_reference_is_resolvable_buildable_and_matched(reference in reference()) {
            let image = ImageReference::parse(&reference).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let reparsed = ImageReference::parse(&image.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&reparsed, &image);
            let canonical = ImageReference::parse(&image.canonical()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(canonical.same_tag_as(&image), "{} is not {}", image.canonical(), reference);
            let repository = ImageReference::parse_repository(image.name()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!((&repository.registry, &repository.repository), (&image.registry, &image.repository));
            // Docker Hub's web paths are read as such in a push (see `pushed`).
            prop_assume!(!(image.registry == DOCKER_HUB_REGISTRY && image.repository.starts_with("u/")));
            let pushed = ImageReference::pushed(image.name(), image.tag.as_deref())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(pushed.same_tag_as(&image));
        }

        /// Whatever string the planner accepts as a Service's image, the
        /// build accepts its repository and the registry client its reference.
        #[test]
        fn any_accepted_string_has_a_buildable_repository(reference in "[a-zA-Z0-9./:@_\\-\\[\\]]{1,40}") {
            if let Ok(image) = ImageReference::parse(&reference) {
                prop_assert!(ImageReference::parse_repository(image.name()).is_ok(), "{}", reference);
                prop_assert!(!image.repository.is_empty() && !image.registry.is_empty());
            }
        }
    }
}
