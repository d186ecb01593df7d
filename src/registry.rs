//! Image tag → digest resolution through the OCI distribution API, for
//! image-based Services with `resolveDigest`.
//!
//! - References are parsed by [`crate::image::ImageReference`].
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

use crate::image::{ImageReference, InvalidImageReference, is_docker_hub, validate_digest};

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

impl From<InvalidImageReference> for RegistryError {
    fn from(InvalidImageReference { reference, reason }: InvalidImageReference) -> Self {
        RegistryError::InvalidReference { reference, reason }
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

impl RegistryClient {
    /// A client with [`DEFAULT_TIMEOUT`] per request, on `http`: the
    /// operator's one HTTP client ([`crate::http::build_client`], whose
    /// redirect policy keeps credentials off plain http).
    pub fn new(http: reqwest::Client) -> Self {
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
/// Whether a request to `url` may carry credentials: https, or loopback.
pub(crate) fn may_carry_credentials(url: &reqwest::Url) -> bool {
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
    match crate::text::bounded(&clean, MAX_DETAIL_CHARS) {
        cut if cut.len() < clean.len() => Some(format!("{cut}…")),
        _ => Some(clean).filter(|c| !c.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::DOCKER_HUB_REGISTRY;

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
        let client =
            RegistryClient::new(reqwest::Client::new()).with_insecure_http_hosts(["registry.lan:5000", "Mirror.Lan"]);
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
