//! Image tag → digest resolution through the OCI distribution API, for
//! image-based Services with `resolveDigest`.
//!
//! - [`ImageReference::parse`] understands the references users write
//!   (`nginx`, `team/web:stable`, `registry.example.com:5000/team/web:1.2`,
//!   `localhost/web`, `web@sha256:…`) with Docker's defaults: no registry means
//!   Docker Hub (`registry-1.docker.io`, single names under `library/`), no tag
//!   means `latest`.
//! - [`credentials_from_docker_config`] finds a registry's credentials in a
//!   pull Secret's `.dockerconfigjson` (or legacy `.dockercfg`).
//! - [`RegistryClient::resolve_digest`] asks the registry for the tag's current
//!   manifest digest with `HEAD /v2/<repository>/manifests/<tag>`, answering a
//!   `401` challenge with a Bearer token from the registry's token service or
//!   with Basic authentication.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The host Docker Hub's registry API is served from.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// Names of Docker Hub in references and in docker config files.
const DOCKER_HUB_ALIASES: &[&str] =
    &["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"];

/// The manifest media types asked for: a multi-platform image answers with
/// its index (what a Deployment's node pulls first), a single-platform one
/// with its manifest.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The default timeout of each request to a registry or its token service.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest manifest read when the registry does not send its digest (the
/// distribution registry's own limit).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest token service answer read (a token is a few KB).
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// Largest part of an error answer read, to find its message in.
const MAX_ERROR_BODY_BYTES: usize = 8 * 1024;

/// Longest excerpt of an error answer kept in a message (and so in a status).
const MAX_DETAIL_CHARS: usize = 120;

/// Redirects followed per request. Registries rarely redirect a manifest
/// request; a chain longer than this is refused.
const MAX_REDIRECTS: usize = 3;

/// What went wrong while resolving a digest; every message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("{} `{reference}` of `{repository}` does not exist in {registry}", if reference.contains(':') { "manifest" } else { "tag" })]
    NotFound { registry: String, repository: String, reference: String },

    #[error("{}", unauthorized(.registry, .repository, *.with_credentials, .secret.as_deref(), .detail.as_deref()))]
    Unauthorized {
        registry: String,
        repository: String,
        /// Whether credentials were sent (`false`: the registry wants some).
        with_credentials: bool,
        /// The Secret the credentials came from, see [`RegistryError::with_secret`].
        secret: Option<String>,
        detail: Option<String>,
    },

    #[error("cannot reach {registry}: {detail}")]
    Unreachable { registry: String, detail: String },

    #[error("{registry} answered unexpectedly: {detail}")]
    Unexpected { registry: String, detail: String },

    #[error("the docker config is unusable: {0}")]
    BadDockerConfig(String),

    #[error(
        "refusing to send the credentials for `{repository}` to {url} over plain http: credentials go only over \
         https (or to a registry on this machine's loopback)"
    )]
    InsecureTransport { registry: String, repository: String, url: String },
}

impl RegistryError {
    /// Names the Secret the refused credentials came from, so that the message
    /// says which Secret to fix.
    pub fn with_secret(self, name: &str) -> Self {
        match self {
            RegistryError::Unauthorized { registry, repository, with_credentials, detail, .. } => {
                RegistryError::Unauthorized {
                    registry,
                    repository,
                    with_credentials,
                    secret: Some(name.to_owned()),
                    detail,
                }
            }
            other => other,
        }
    }
}

fn unauthorized(
    registry: &str,
    repository: &str,
    with_credentials: bool,
    secret: Option<&str>,
    detail: Option<&str>,
) -> String {
    let mut message = match (with_credentials, secret) {
        (true, Some(secret)) => format!(
            "{registry} refused the credentials of Secret `{secret}` for `{repository}`: check the user name and \
             password or token, and that they may pull `{repository}`"
        ),
        (true, None) => format!(
            "{registry} refused the credentials for `{repository}`: check the user name and password or token, and \
             that they may pull `{repository}`"
        ),
        (false, _) => format!(
            "{registry} requires credentials to read `{repository}` (or the repository does not exist): set \
             `pullSecretRef` to a docker config Secret that can pull it"
        ),
    };
    if let Some(detail) = detail {
        message.push_str(&format!(" ({detail})"));
    }
    message
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
    pub fn parse(reference: &str) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::InvalidReference { reference: reference.to_owned(), reason };
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

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES.iter().any(|alias| alias.eq_ignore_ascii_case(host))
}

fn validate_digest(digest: &str) -> Result<String, String> {
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

/// A registry user name and password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Finds the credentials for `registry` (a host[:port], such as
/// [`ImageReference::registry`]) in the contents of a docker config Secret:
/// `.dockerconfigjson` (`{"auths": {...}}`) or the legacy `.dockercfg` (the
/// `auths` map itself).
///
/// Keys are matched by host and port, ignoring a scheme and a path
/// (`https://index.docker.io/v1/` is Docker Hub, as are `docker.io`,
/// `index.docker.io` and `registry-1.docker.io`); a key whose labels are `*`
/// (`*.example.com`) matches one label. Exact keys win over wildcards. An
/// entry's `auth` (base64 `user:password`) wins over `username`/`password`.
/// `Ok(None)`: no entry for the registry.
pub fn credentials_from_docker_config(json: &[u8], registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let bad = |message: String| RegistryError::BadDockerConfig(message);
    let config: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("it is not valid JSON: {e}")))?;
    let object = config.as_object().ok_or_else(|| bad("it is not a JSON object".into()))?;
    let auths = match object.get("auths") {
        Some(auths) => auths.as_object().ok_or_else(|| bad("`auths` is not a JSON object".into()))?,
        None => object,
    };
    let wanted = normalize_registry_key(registry);
    let entries = || auths.iter().filter(|(_, value)| value.is_object());
    let found = entries()
        .find(|(key, _)| normalize_registry_key(key) == wanted)
        .or_else(|| entries().find(|(key, _)| wildcard_matches(&normalize_registry_key(key), &wanted)));
    let Some((key, value)) = found else { return Ok(None) };
    let entry: DockerAuthEntry =
        serde_json::from_value(value.clone()).map_err(|e| bad(format!("the entry `{key}` is malformed: {e}")))?;
    if let Some(auth) = entry.auth.as_deref().map(str::trim).filter(|auth| !auth.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|_| bad(format!("the `auth` of the entry `{key}` is not base64")))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| bad(format!("the `auth` of the entry `{key}` is not UTF-8")))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("the `auth` of the entry `{key}` does not decode to `user:password`")))?;
        return Ok(Some(Credentials { username: username.to_owned(), password: password.to_owned() }));
    }
    match (entry.username, entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credentials { username, password })),
        _ => Err(bad(format!(
            "the entry `{key}` has neither `auth` nor `username` and `password` (identity tokens and credential \
             helpers are not supported)"
        ))),
    }
}

/// `https://Index.Docker.io/v1/` → `docker.io`; `http://host:5000/v2/` → `host:5000`.
fn normalize_registry_key(key: &str) -> String {
    let key = key.trim();
    let without_scheme = ["https://", "http://"]
        .iter()
        .find_map(|scheme| {
            key.get(..scheme.len()).filter(|p| p.eq_ignore_ascii_case(scheme)).map(|_| &key[scheme.len()..])
        })
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or_default().to_ascii_lowercase();
    if is_docker_hub(&host) { "docker.io".to_owned() } else { host }
}

fn wildcard_matches(pattern: &str, host: &str) -> bool {
    if !pattern.contains('*') {
        return false;
    }
    // `host[:port]`; wildcards only make sense for names, so `[v6]` hosts never match.
    let split = |s: &str| match s.split_once(':') {
        Some((name, port)) => (name.to_owned(), Some(port.to_owned())),
        None => (s.to_owned(), None),
    };
    let ((pattern_host, pattern_port), (host_name, host_port)) = (split(pattern), split(host));
    if pattern_port != host_port {
        return false;
    }
    let (pattern_labels, host_labels): (Vec<_>, Vec<_>) =
        (pattern_host.split('.').collect(), host_name.split('.').collect());
    pattern_labels.len() == host_labels.len()
        && pattern_labels.iter().zip(&host_labels).all(|(p, h)| *p == "*" || p == h)
}

/// One challenge of a `WWW-Authenticate` header: the scheme (lower-case) and
/// its parameters (names lower-case).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more
/// challenges, each a scheme and comma-separated `name=value` or
/// `name="quoted \"value\""` parameters.
fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    fn is_token(c: char) -> bool {
        c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)
    }
    let chars: Vec<char> = value.chars().collect();
    let mut index = 0;
    let skip = |index: &mut usize, what: &dyn Fn(char) -> bool| {
        while *index < chars.len() && what(chars[*index]) {
            *index += 1;
        }
    };
    let token = |index: &mut usize| {
        let start = *index;
        while *index < chars.len() && is_token(chars[*index]) {
            *index += 1;
        }
        chars[start..*index].iter().collect::<String>()
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        skip(&mut index, &|c| c == ',' || c.is_whitespace());
        if index >= chars.len() {
            break;
        }
        let scheme = token(&mut index);
        if scheme.is_empty() {
            index += 1; // not a token: skip the character
            continue;
        }
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new() };
        loop {
            skip(&mut index, &|c| c == ',' || c.is_whitespace());
            let start = index;
            let name = token(&mut index);
            let mut after_name = index;
            skip(&mut after_name, &|c| c == ' ' || c == '\t');
            if name.is_empty() || after_name >= chars.len() || chars[after_name] != '=' {
                index = start; // the next challenge's scheme (or the end)
                break;
            }
            index = after_name + 1;
            skip(&mut index, &|c| c == ' ' || c == '\t');
            let value = if chars.get(index) == Some(&'"') {
                index += 1;
                let mut value = String::new();
                while index < chars.len() && chars[index] != '"' {
                    if chars[index] == '\\' && index + 1 < chars.len() {
                        index += 1;
                    }
                    value.push(chars[index]);
                    index += 1;
                }
                index = (index + 1).min(chars.len()); // the closing quote, when there is one
                value
            } else {
                let start = index;
                while index < chars.len() && chars[index] != ',' && !chars[index].is_whitespace() {
                    index += 1;
                }
                chars[start..index].iter().collect()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        challenges.push(challenge);
    }
    challenges
}

/// How a request is authenticated.
#[derive(Clone)]
enum Authorization {
    Basic(Credentials),
    Bearer(String),
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Asks registries for manifest digests.
///
/// Registries are spoken to over HTTPS, except `localhost`, `127.0.0.0/8` and
/// `[::1]` (as Docker does) and the hosts given to
/// [`RegistryClient::with_insecure_http_hosts`], which get plain HTTP.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    timeout: Duration,
    insecure_http_hosts: Vec<String>,
}

impl Default for RegistryClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryClient {
    /// A client with [`DEFAULT_TIMEOUT`] per request.
    ///
    /// # Panics
    /// When the TLS backend cannot be initialised, as `reqwest::Client::new` does.
    pub fn new() -> Self {
        // reqwest drops the Authorization header on a redirect to another
        // host or port; the policy bounds the chain and refuses a downgrade
        // from https to plain http.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.previous().last().is_some_and(|previous| previous.scheme() == "https")
                && !may_carry_credentials(attempt.url());
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if downgrade {
                attempt.error("a redirect from https to plain http")
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(concat!("redeploy-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(DEFAULT_TIMEOUT)
            .redirect(redirects)
            .build()
            .expect("the TLS backend initialises");
        RegistryClient { http, timeout: DEFAULT_TIMEOUT, insecure_http_hosts: Vec::new() }
    }

    /// Speaks plain HTTP to these registries (`host` or `host:port`, as in
    /// [`ImageReference::registry`]) in addition to the loopback ones.
    pub fn with_insecure_http_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insecure_http_hosts.extend(hosts.into_iter().map(|host| host.into().to_ascii_lowercase()));
        self
    }

    /// Sets the timeout of each request (the registry, and its token service).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `http` or `https` for a registry host[:port].
    pub fn scheme(&self, registry: &str) -> &'static str {
        let registry = registry.to_ascii_lowercase();
        let host = match registry.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => registry.split(':').next().unwrap_or_default(),
        };
        let listed = self.insecure_http_hosts.iter().any(|listed| *listed == registry || *listed == host);
        if is_loopback(host) || listed { "http" } else { "https" }
    }

    /// The digest (`sha256:…`) of the manifest `image`'s tag points to now, as
    /// the registry reports it in `Docker-Content-Digest` (or, when it does
    /// not, the sha256 of the manifest it serves). A reference that already
    /// has a digest is answered with it, without asking the registry.
    pub async fn resolve_digest(
        &self,
        image: &ImageReference,
        credentials: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        if let Some(digest) = &image.digest {
            return Ok(digest.clone());
        }
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme(&image.registry),
            image.registry,
            image.repository,
            image.manifest_reference()
        );
        let (response, authorization) = self.send_authenticated(Method::HEAD, &url, image, credentials).await?;
        // Some registries do not answer HEAD: ask with GET instead.
        let fetched_with_get =
            matches!(response.status(), StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED);
        let response = if fetched_with_get {
            self.send(Method::GET, &url, authorization.as_ref(), image).await?
        } else {
            response
        };
        let response = self.check_manifest_status(response, image, credentials.is_some()).await?;
        if let Some(digest) = header_digest(&response, image)? {
            return Ok(digest);
        }
        // No Docker-Content-Digest: hash the manifest the registry serves.
        let response = if fetched_with_get {
            response
        } else {
            let response = self.send(Method::GET, &url, authorization.as_ref(), image).await?;
            self.check_manifest_status(response, image, credentials.is_some()).await?
        };
        let body = read_limited(response, image, self.timeout).await?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }

    /// Sends the request anonymously, and again with the authorization a `401`
    /// challenge asks for. Returns the response and the authorization used.
    async fn send_authenticated(
        &self,
        method: Method,
        url: &str,
        image: &ImageReference,
        credentials: Option<&Credentials>,
    ) -> Result<(reqwest::Response, Option<Authorization>), RegistryError> {
        let response = self.send(method.clone(), url, None, image).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok((response, None));
        }
        if credentials.is_some() {
            ensure_secure(url, image)?;
        }
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(parse_www_authenticate)
            .collect();
        let unauthorized = |detail: Option<String>| RegistryError::Unauthorized {
            registry: image.registry_display().to_owned(),
            repository: image.repository.clone(),
            with_credentials: credentials.is_some(),
            secret: None,
            detail,
        };
        let authorization = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            Authorization::Bearer(self.fetch_token(bearer, image, credentials).await?)
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            match credentials {
                Some(credentials) => Authorization::Basic(credentials.clone()),
                None => return Err(unauthorized(None)),
            }
        } else {
            let offered = challenges.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>().join(", ");
            return Err(unauthorized(Some(if offered.is_empty() {
                "it sent no WWW-Authenticate challenge".to_owned()
            } else {
                format!("it only offers unsupported authentication schemes: {offered}")
            })));
        };
        let response = self.send(method, url, Some(&authorization), image).await?;
        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(unauthorized(None));
        }
        Ok((response, Some(authorization)))
    }

    /// Gets a Bearer token for the challenge from the registry's token service,
    /// anonymously or with basic credentials.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        image: &ImageReference,
        credentials: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let registry = image.registry_display().to_owned();
        let unexpected = |detail: String| RegistryError::Unexpected { registry: registry.clone(), detail };
        let realm = challenge
            .param("realm")
            .ok_or_else(|| unexpected("its Bearer challenge has no realm (token service URL)".into()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| unexpected(format!("its token service URL `{realm}` is invalid: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(unexpected(format!("its token service URL `{realm}` is not http(s)")));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            let default_scope = format!("repository:{}:pull", image.repository);
            for scope in challenge.param("scope").unwrap_or(&default_scope).split_whitespace() {
                query.append_pair("scope", scope);
            }
        }
        // Docker's client sends the registry credentials to whatever realm the
        // registry names, over http too (Docker Hub's token service is another
        // host than its registry). This client sends them to another host as
        // well, but only over https (or to loopback), as it does everything else.
        let mut request = self.http.get(url.clone()).timeout(self.timeout);
        if let Some(credentials) = credentials {
            ensure_secure(url.as_str(), image)?;
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let token_host = url.host_str().unwrap_or_default().to_owned();
        let response = request.send().await.map_err(|e| RegistryError::Unreachable {
            registry: format!("the token service of {registry} ({token_host})"),
            detail: describe(&e, self.timeout),
        })?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(RegistryError::Unauthorized {
                registry: registry.clone(),
                repository: image.repository.clone(),
                with_credentials: credentials.is_some(),
                secret: None,
                detail: Some(format!("its token service answered {status}")),
            });
        }
        if !status.is_success() {
            return Err(unexpected(with_excerpt(format!("its token service answered {status}"), response).await));
        }
        let body = match read_capped(response, MAX_TOKEN_RESPONSE_BYTES).await {
            Ok((body, false)) => body,
            Ok((_, true)) => {
                return Err(unexpected(format!(
                    "its token service answered with more than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                )));
            }
            Err(e) => {
                return Err(RegistryError::Unreachable {
                    registry: format!("the token service of {registry} ({token_host})"),
                    detail: describe(&e, self.timeout),
                });
            }
        };
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unexpected(format!("its token service answered with something else than a token: {e}")))?;
        token
            .token
            .or(token.access_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unexpected("its token service answered without a token".into()))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&Authorization>,
        image: &ImageReference,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.request(method, url).timeout(self.timeout).header(header::ACCEPT, MANIFEST_ACCEPT);
        request = match authorization {
            Some(Authorization::Basic(credentials)) => {
                request.basic_auth(&credentials.username, Some(&credentials.password))
            }
            Some(Authorization::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.map_err(|e| RegistryError::Unreachable {
            registry: image.registry_display().to_owned(),
            detail: describe(&e, self.timeout),
        })
    }

    /// Maps a manifest response's error status to a [`RegistryError`].
    async fn check_manifest_status(
        &self,
        response: reqwest::Response,
        image: &ImageReference,
        with_credentials: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let registry = image.registry_display().to_owned();
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry,
                repository: image.repository.clone(),
                reference: image.manifest_reference().to_owned(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                registry,
                repository: image.repository.clone(),
                with_credentials,
                secret: None,
                detail: None,
            },
            _ => RegistryError::Unexpected {
                registry,
                detail: with_excerpt(format!("HTTP {status} for the manifest of `{image}`"), response).await,
            },
        })
    }
}

fn header_digest(response: &reqwest::Response, image: &ImageReference) -> Result<Option<String>, RegistryError> {
    let Some(value) = response.headers().get("docker-content-digest") else { return Ok(None) };
    let digest = value.to_str().unwrap_or_default().trim();
    validate_digest(digest).map(Some).map_err(|reason| RegistryError::Unexpected {
        registry: image.registry_display().to_owned(),
        detail: format!("its Docker-Content-Digest header is invalid: {reason}"),
    })
}

async fn read_limited(
    mut response: reqwest::Response,
    image: &ImageReference,
    timeout: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::Unexpected {
        registry: image.registry_display().to_owned(),
        detail: format!("the manifest of `{image}` is larger than {MAX_MANIFEST_BYTES} bytes"),
    };
    if response.content_length().is_some_and(|length| length > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| RegistryError::Unreachable {
        registry: image.registry_display().to_owned(),
        detail: describe(&e, timeout),
    })? {
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error with its causes (`connection refused`, a TLS failure).
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f64());
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Whether credentials may travel to `url`: over https, or to loopback.
fn may_carry_credentials(url: &reqwest::Url) -> bool {
    url.scheme() == "https" || url.host_str().is_some_and(|host| is_loopback(host.trim_matches(['[', ']'])))
}

fn ensure_secure(url: &str, image: &ImageReference) -> Result<(), RegistryError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if may_carry_credentials(&parsed) => Ok(()),
        _ => Err(RegistryError::InsecureTransport {
            registry: image.registry_display().to_owned(),
            repository: image.repository.clone(),
            url: url.split('?').next().unwrap_or_default().to_owned(),
        }),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (without brackets).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// At most `cap` bytes of the body, and whether there was more.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// `what`, followed by a short excerpt of an error answer when it has a
/// readable one (see [`error_excerpt`]).
async fn with_excerpt(what: String, response: reqwest::Response) -> String {
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("html"));
    let body = read_capped(response, MAX_ERROR_BODY_BYTES).await.map(|(body, _)| body).unwrap_or_default();
    match error_excerpt(&body, html) {
        Some(excerpt) => format!("{what}: {excerpt}"),
        None => what,
    }
}

/// A short, single-line excerpt of an error answer for a message that ends
/// up in statuses: the first `errors[].message` (or `message`, `details`) of
/// a JSON answer, else the first line of a text answer; none for HTML pages
/// (a proxy's error page says nothing the status code does not). Control
/// characters are dropped, credentials in URLs redacted, and the excerpt cut
/// to [`MAX_DETAIL_CHARS`].
fn error_excerpt(body: &[u8], html: bool) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if html || text.starts_with('<') {
        return None;
    }
    let from_json = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|json| {
        let first_error = json.get("errors").and_then(|errors| errors.get(0)).and_then(|e| e.get("message"));
        let message = first_error.or_else(|| json.get("message")).or_else(|| json.get("details"));
        message.and_then(|m| m.as_str()).map(str::to_owned)
    });
    let line = from_json.unwrap_or_else(|| text.lines().next().unwrap_or_default().to_owned());
    let clean: String = line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = crate::repo::redact_credentials(clean.trim()).into_owned();
    match clean.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => Some(format!("{}…", &clean[..cut])),
        None => Some(clean).filter(|c| !c.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn lookup(config: &serde_json::Value, registry: &str) -> Result<Option<(String, String)>, RegistryError> {
        credentials_from_docker_config(config.to_string().as_bytes(), registry)
            .map(|found| found.map(|c| (c.username, c.password)))
    }

    fn pair(user: &str, password: &str) -> Option<(String, String)> {
        Some((user.into(), password.into()))
    }

    #[test]
    fn reads_docker_config_credentials() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hubuser:hub:pass")},
            "registry.example.com": {"username": "robot$ci", "password": "s3cret", "auth": ""},
            "https://Other.Example.com:5000/v2/": {"auth": b64("other:pw")},
            "*.wild.example": {"auth": b64("wild:pw")},
            "exact.wild.example": {"auth": b64("exact:pw")},
            "both.example": {"auth": b64("from-auth:pw"), "username": "ignored", "password": "ignored"},
        }});
        assert_eq!(lookup(&config, DOCKER_HUB_REGISTRY).unwrap(), pair("hubuser", "hub:pass"));
        assert_eq!(lookup(&config, "docker.io").unwrap(), pair("hubuser", "hub:pass"));
        assert_eq!(lookup(&config, "registry.example.com").unwrap(), pair("robot$ci", "s3cret"));
        assert_eq!(lookup(&config, "REGISTRY.example.com").unwrap(), pair("robot$ci", "s3cret"));
        assert_eq!(lookup(&config, "other.example.com:5000").unwrap(), pair("other", "pw"));
        assert_eq!(lookup(&config, "other.example.com").unwrap(), None, "the port is part of the key");
        assert_eq!(lookup(&config, "a.wild.example").unwrap(), pair("wild", "pw"));
        assert_eq!(lookup(&config, "exact.wild.example").unwrap(), pair("exact", "pw"));
        assert_eq!(lookup(&config, "a.b.wild.example").unwrap(), None, "`*` matches one label");
        assert_eq!(lookup(&config, "both.example").unwrap(), pair("from-auth", "pw"));
        assert_eq!(lookup(&config, "ghcr.io").unwrap(), None);

        let legacy = serde_json::json!({"registry.example.com": {"auth": b64("old:style")}});
        assert_eq!(lookup(&legacy, "registry.example.com").unwrap(), pair("old", "style"));
        let helpers_only = serde_json::json!({"credsStore": "desktop", "auths": {}});
        assert_eq!(lookup(&helpers_only, "docker.io").unwrap(), None);
        let hub_short = serde_json::json!({"auths": {"docker.io": {"auth": b64("u:p")}}});
        assert_eq!(lookup(&hub_short, DOCKER_HUB_REGISTRY).unwrap(), pair("u", "p"));
    }

    #[test]
    fn rejects_unusable_docker_configs() {
        let bad = |config: &[u8], expected: &str| {
            let error = credentials_from_docker_config(config, "r.example").unwrap_err();
            assert!(matches!(error, RegistryError::BadDockerConfig(_)), "{error:?}");
            assert!(error.to_string().contains(expected), "{error} does not mention {expected}");
            assert!(!error.to_string().contains("hunter2"), "{error} leaks a secret");
        };
        bad(b"not json", "not valid JSON");
        bad(b"[]", "not a JSON object");
        bad(br#"{"auths": []}"#, "`auths` is not a JSON object");
        bad(br#"{"auths": {"r.example": {"auth": "%%%hunter2"}}}"#, "not base64");
        let no_colon = format!(r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#, b64("hunter2"));
        bad(no_colon.as_bytes(), "does not decode to `user:password`");
        bad(br#"{"auths": {"r.example": {"identitytoken": "hunter2"}}}"#, "identity tokens");
        bad(br#"{"auths": {"r.example": {"username": "u"}}}"#, "neither `auth` nor");
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let credentials = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }

    fn params(challenge: &Challenge) -> Vec<(&str, &str)> {
        challenge.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn parses_www_authenticate() {
        let hub = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].scheme, "bearer");
        assert_eq!(
            params(&hub[0]),
            [
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/nginx:pull")
            ]
        );

        let basic = parse_www_authenticate(r#"Basic realm="basic-realm""#);
        assert_eq!((basic[0].scheme.as_str(), params(&basic[0])), ("basic", vec![("realm", "basic-realm")]));

        let spaced = parse_www_authenticate(
            r#"BEARER Realm = "https://r.example/token?x=1" , Service=r.example,scope="repository:a/b:pull,push repository:c:pull""#,
        );
        assert_eq!(spaced[0].scheme, "bearer");
        assert_eq!(spaced[0].param("realm"), Some("https://r.example/token?x=1"));
        assert_eq!(spaced[0].param("service"), Some("r.example"));
        assert_eq!(spaced[0].param("scope"), Some("repository:a/b:pull,push repository:c:pull"));

        let several = parse_www_authenticate(
            r#"Basic realm="a, \"quoted\"", Bearer realm="https://t.example", error="invalid_token""#,
        );
        assert_eq!(several.len(), 2);
        assert_eq!(several[0].param("realm"), Some(r#"a, "quoted""#));
        assert_eq!(several[1].scheme, "bearer");
        assert_eq!(params(&several[1]), [("realm", "https://t.example"), ("error", "invalid_token")]);

        let bare = parse_www_authenticate("Negotiate, Basic");
        assert_eq!(bare.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["negotiate", "basic"]);
        assert!(bare.iter().all(|c| c.params.is_empty()));
        assert!(parse_www_authenticate("").is_empty());
        assert_eq!(parse_www_authenticate(r#"Bearer realm="unterminated"#)[0].param("realm"), Some("unterminated"));
        // A registry's header never panics the parser, however it is cut.
        let header = r#"Bearer realm="https://t.example/\"x\"",service=s ,scope="a b", Basic realm=r, X"#;
        for end in 0..=header.len() {
            parse_www_authenticate(&header[..end]);
        }
    }

    #[test]
    fn credentials_travel_only_over_https_or_to_loopback() {
        let url = |u: &str| reqwest::Url::parse(u).expect("url");
        for ok in
            ["https://registry.example.com/v2/", "http://localhost:5000/v2/", "http://127.0.0.2/t", "http://[::1]:80/t"]
        {
            assert!(may_carry_credentials(&url(ok)), "{ok}");
        }
        for refused in ["http://registry.example.com/v2/", "http://10.0.0.1/token", "ftp://localhost.example/"] {
            assert!(!may_carry_credentials(&url(refused)), "{refused}");
        }
    }

    #[test]
    fn error_answers_are_summarised() {
        assert_eq!(error_excerpt(b"<html><body>oops</body></html>", false), None);
        assert_eq!(error_excerpt(b"oops", true), None, "an HTML content type");
        assert_eq!(error_excerpt(b"   ", false), None);
        let json = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        assert_eq!(error_excerpt(json, false).as_deref(), Some("requested access to the resource is denied"));
        assert_eq!(error_excerpt(br#"{"details":"bad\u0007 scope"}"#, false).as_deref(), Some("bad  scope"));
        assert_eq!(error_excerpt(b"first line\nsecond", false).as_deref(), Some("first line"));
        let long = error_excerpt("x".repeat(10_000).as_bytes(), false).expect("excerpt");
        assert_eq!(long.chars().count(), MAX_DETAIL_CHARS + 1, "cut, with an ellipsis");
        assert_eq!(
            error_excerpt(b"cannot fetch https://u:pw@mirror.example.com/v2/", false).as_deref(),
            Some("cannot fetch https://***@mirror.example.com/v2/")
        );
    }

    #[test]
    fn speaks_http_only_to_loopback_and_listed_registries() {
        let client = RegistryClient::new().with_insecure_http_hosts(["registry.lan:5000", "Mirror.Lan"]);
        for registry in
            ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "registry.lan:5000"]
        {
            assert_eq!(client.scheme(registry), "http", "{registry}");
        }
        assert_eq!(client.scheme("mirror.lan:443"), "http");
        for registry in
            [DOCKER_HUB_REGISTRY, "registry.lan:5001", "localhost.example.com", "10.0.0.1:5000", "[::2]:5000"]
        {
            assert_eq!(client.scheme(registry), "https", "{registry}");
        }
    }

    #[test]
    fn error_messages_say_what_to_fix() {
        let not_found = RegistryError::NotFound {
            registry: "registry.example.com".into(),
            repository: "team/web".into(),
            reference: "x".into(),
        };
        assert_eq!(not_found.to_string(), "tag `x` of `team/web` does not exist in registry.example.com");
        let refused = RegistryError::Unauthorized {
            registry: "registry.example.com".into(),
            repository: "team/web".into(),
            with_credentials: true,
            secret: None,
            detail: None,
        };
        assert!(refused.to_string().starts_with("registry.example.com refused the credentials for `team/web`"));
        assert!(
            refused
                .with_secret("pull-secret")
                .to_string()
                .starts_with("registry.example.com refused the credentials of Secret `pull-secret` for `team/web`")
        );
        let anonymous = RegistryError::Unauthorized {
            registry: "docker.io".into(),
            repository: "team/private".into(),
            with_credentials: false,
            secret: None,
            detail: None,
        };
        assert!(anonymous.to_string().contains("requires credentials to read `team/private`"));
        assert!(anonymous.to_string().contains("pullSecretRef"));
    }
}
