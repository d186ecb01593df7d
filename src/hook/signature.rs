//! Signatures beyond the URL token: HMAC over the exact body bytes, or a shared token.
//!
//! # Fail closed
//!
//! An App without any `spec.hook.signatureSecrets` is authenticated by its
//! URL token alone. Once it configures one, every call must carry a valid
//! signature, and the caller cannot choose its way around it: which
//! signature a call must carry is decided by [`requirement`] from what the
//! App configures and the provider the call was *parsed* as (its headers or
//! its shape, both chosen by the caller):
//!
//! 1. the provider's own scheme, when the App has a secret for it (a GitHub
//!    call needs `X-Hub-Signature-256`, and only that);
//! 2. otherwise the generic HMAC (`X-Signature-256: sha256=<hex HMAC-SHA256
//!    of the body>`), when the App has a generic secret: callers without a Git
//!    host (`curl`, CI), Docker Hub, Azure DevOps, a body of no known shape,
//!    an empty or form body, and Git hosts the App has no secret for;
//! 3. otherwise the call is refused (`401`): it cannot be signed in a way
//!    this App checks. Dressing a call up as another provider, or as none,
//!    only ever leads here or to a scheme whose secret the caller lacks.
//!
//! Comparisons are constant-time, and no error message repeats the secret or
//! the signature received.

use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api::{Provider, SecretKeyRef, SignatureSecrets};

/// How a provider proves a call came from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureCheck {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`.
    GitHubSha256,
    /// Bitbucket Cloud and Server: `X-Hub-Signature: sha256=<hex HMAC-SHA256>`.
    BitbucketSha256,
    /// Gitea and Forgejo: `X-Gitea-Signature` or `X-Forgejo-Signature: <hex HMAC-SHA256>`.
    Gitea,
    /// Gogs: `X-Gogs-Signature: <hex HMAC-SHA256>`.
    Gogs,
    /// GitLab: `X-Gitlab-Token` is the secret itself.
    GitLabToken,
    /// Any caller: `X-Signature-256: sha256=<hex HMAC-SHA256>` (as Flux's `generic-hmac`).
    Generic,
}

/// The signature a call must carry, given the App's secrets (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Requirement<'a> {
    /// The App configures no signature secret: the URL token is the credential.
    TokenOnly,
    /// The call must verify with this check against the secret named here.
    Verify(SignatureCheck, &'a SecretKeyRef),
    /// The App requires signatures, and has no secret for any this call could carry.
    Refuse,
}

/// Which signature a call parsed as `provider` must carry (module docs, "Fail closed").
pub fn requirement(secrets: &SignatureSecrets, provider: Provider) -> Requirement<'_> {
    if secrets.is_empty() {
        return Requirement::TokenOnly;
    }
    let own = SignatureCheck::of_provider(provider).and_then(|check| Some((check, check.secret(secrets)?)));
    let generic = || Some((SignatureCheck::Generic, SignatureCheck::Generic.secret(secrets)?));
    match own.or_else(generic) {
        Some((check, secret)) => Requirement::Verify(check, secret),
        None => Requirement::Refuse,
    }
}

/// The signatures an App accepts, for a `401` answer: schemes and headers,
/// never the names of the Secrets holding the keys.
pub fn accepted(secrets: &SignatureSecrets) -> String {
    let described: Vec<&str> = SignatureCheck::ALL
        .into_iter()
        .filter(|check| check.secret(secrets).is_some())
        .map(SignatureCheck::describe)
        .collect();
    if described.is_empty() { "no signatures".to_owned() } else { described.join("; ") }
}

const X_HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";
const X_HUB_SIGNATURE: &str = "X-Hub-Signature";
const X_GITEA_SIGNATURE: &str = "X-Gitea-Signature";
const X_FORGEJO_SIGNATURE: &str = "X-Forgejo-Signature";
const X_GOGS_SIGNATURE: &str = "X-Gogs-Signature";
const X_GITLAB_TOKEN: &str = "X-Gitlab-Token";
const X_SIGNATURE_256: &str = "X-Signature-256";

/// Length of an HMAC-SHA256 in hex digits.
const SHA256_HEX_DIGITS: usize = 64;

impl SignatureCheck {
    /// Every check, the providers' own first, in the order they are described.
    pub const ALL: [SignatureCheck; 6] = [
        SignatureCheck::GitHubSha256,
        SignatureCheck::BitbucketSha256,
        SignatureCheck::GitLabToken,
        SignatureCheck::Gitea,
        SignatureCheck::Gogs,
        SignatureCheck::Generic,
    ];

    /// The provider's own signature, for the providers that sign their calls
    /// (declared with the provider's parser).
    pub fn of_provider(provider: Provider) -> Option<SignatureCheck> {
        super::providers::definition(provider).signature
    }

    /// The App's secret for this check, if it configures one.
    pub fn secret(self, secrets: &SignatureSecrets) -> Option<&SecretKeyRef> {
        match self {
            SignatureCheck::GitHubSha256 => secrets.github.as_ref(),
            SignatureCheck::BitbucketSha256 => secrets.bitbucket.as_ref(),
            SignatureCheck::GitLabToken => secrets.gitlab.as_ref(),
            SignatureCheck::Gitea => secrets.gitea.as_ref(),
            SignatureCheck::Gogs => secrets.gogs.as_ref(),
            SignatureCheck::Generic => secrets.generic.as_ref(),
        }
    }

    /// The field of `spec.hook.signatureSecrets` holding this check's secret.
    pub fn field(self) -> &'static str {
        match self {
            SignatureCheck::GitHubSha256 => "github",
            SignatureCheck::BitbucketSha256 => "bitbucket",
            SignatureCheck::GitLabToken => "gitlab",
            SignatureCheck::Gitea => "gitea",
            SignatureCheck::Gogs => "gogs",
            SignatureCheck::Generic => "generic",
        }
    }

    /// Who sends this signature, and how, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            SignatureCheck::GitHubSha256 => "GitHub calls signed with `X-Hub-Signature-256`",
            SignatureCheck::BitbucketSha256 => "Bitbucket calls signed with `X-Hub-Signature`",
            SignatureCheck::GitLabToken => "GitLab calls carrying `X-Gitlab-Token`",
            SignatureCheck::Gitea => "Gitea and Forgejo calls signed with `X-Gitea-Signature` or `X-Forgejo-Signature`",
            SignatureCheck::Gogs => "Gogs calls signed with `X-Gogs-Signature`",
            SignatureCheck::Generic => {
                "any other call signed with `X-Signature-256: sha256=<hex HMAC-SHA256 of the exact body>`"
            }
        }
    }

    /// The headers this check reads, in the order they are looked for.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            SignatureCheck::GitHubSha256 => &[X_HUB_SIGNATURE_256],
            SignatureCheck::BitbucketSha256 => &[X_HUB_SIGNATURE],
            SignatureCheck::Gitea => &[X_GITEA_SIGNATURE, X_FORGEJO_SIGNATURE],
            SignatureCheck::Gogs => &[X_GOGS_SIGNATURE],
            SignatureCheck::GitLabToken => &[X_GITLAB_TOKEN],
            SignatureCheck::Generic => &[X_SIGNATURE_256],
        }
    }

    /// The prefix before the hex digits, for the checks that have one.
    fn prefix(self) -> Option<&'static str> {
        match self {
            SignatureCheck::GitHubSha256 | SignatureCheck::BitbucketSha256 | SignatureCheck::Generic => Some("sha256="),
            SignatureCheck::Gitea | SignatureCheck::Gogs | SignatureCheck::GitLabToken => None,
        }
    }
}

/// Why a call's signature was refused. No message repeats the secret or the
/// signature received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is absent or blank: answered `401`.
    #[error(
        "the request has no `{header}` header, but this App requires one: configure the same secret \
         in the webhook settings at the Git host"
    )]
    Missing { header: &'static str },
    /// The header is not of the expected form: answered `400`.
    #[error("the `{header}` header is malformed: {reason}")]
    Malformed { header: &'static str, reason: String },
    /// The header is well-formed but does not verify: answered `401`.
    #[error(
        "the `{header}` header does not verify against the secret configured for this App: the webhook \
         at the Git host must use the same secret, and the body must reach the hook unchanged"
    )]
    Mismatch { header: &'static str },
}

impl SignatureError {
    /// The HTTP status the hook answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            SignatureError::Missing { .. } | SignatureError::Mismatch { .. } => StatusCode::UNAUTHORIZED,
            SignatureError::Malformed { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks a call against the App's secret for its provider: an HMAC-SHA256
/// of the exact body bytes, or (GitLab) the token itself. An empty secret
/// never verifies, so a misconfigured App does not accept every call.
pub fn verify(check: SignatureCheck, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let (header, value) = find_header(check, headers)?;
    if check == SignatureCheck::GitLabToken {
        let matches = bool::from(value.ct_eq(secret));
        return if matches && !secret.is_empty() { Ok(()) } else { Err(SignatureError::Mismatch { header }) };
    }
    let expected = decode_signature(check, header, value)?;
    if secret.is_empty() {
        return Err(SignatureError::Mismatch { header });
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch { header })?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch { header })
}

/// The first of the check's headers that is present and not blank.
fn find_header(check: SignatureCheck, headers: &HeaderMap) -> Result<(&'static str, &[u8]), SignatureError> {
    let names = check.headers();
    names
        .iter()
        .find_map(|name| {
            let value = headers.get(*name)?.as_bytes();
            (!value.trim_ascii().is_empty()).then_some((*name, value))
        })
        .ok_or(SignatureError::Missing { header: names[0] })
}

/// The HMAC bytes a signature header carries.
fn decode_signature(check: SignatureCheck, header: &'static str, value: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let malformed = |reason: String| SignatureError::Malformed { header, reason };
    let expected_form = match check.prefix() {
        Some(prefix) => format!("expected `{prefix}` followed by {SHA256_HEX_DIGITS} hex digits"),
        None => format!("expected {SHA256_HEX_DIGITS} hex digits"),
    };
    let value = value.trim_ascii();
    let digits = match check.prefix() {
        Some(prefix) => match value.split_at_checked(prefix.len()) {
            Some((found, digits)) if found.eq_ignore_ascii_case(prefix.as_bytes()) => digits,
            _ => {
                return Err(malformed(format!("{expected_form}, and it does not start with `{prefix}`")));
            }
        },
        None => value,
    };
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed(format!("{expected_form}, and it holds characters that are not hex digits")));
    }
    if digits.len() != SHA256_HEX_DIGITS {
        return Err(malformed(format!("{expected_form}, and it has {} digits", digits.len())));
    }
    hex::decode(digits).map_err(|error| malformed(format!("{expected_form}: {error}")))
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
    use sha2::Sha256;

    use super::{Requirement, SignatureCheck, SignatureError, accepted, requirement, verify};
    use crate::api::{Provider, SecretKeyRef, SignatureSecrets};

    const GITHUB_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/github/push-new-branch.json");
    const BITBUCKET_CLOUD_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/bitbucket-cloud/repo-push.json");
    const BITBUCKET_SERVER_PUSH: &[u8] =
        include_bytes!("../../tests/fixtures/webhooks/bitbucket-server/repo-refs-changed.json");
    const GITEA_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/gitea/push-event.json");
    const GOGS_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/gogs/push-event.json");
    const GITLAB_PUSH: &[u8] = include_bytes!("../../tests/fixtures/webhooks/gitlab/push-event.json");

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const OTHER_SECRET: &[u8] = b"not the configured secret";

    fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn header(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
        headers
    }

    /// The same JSON, re-serialized: other bytes, so another signature.
    fn reserialized(body: &[u8]) -> Vec<u8> {
        let value: serde_json::Value = serde_json::from_slice(body).expect("fixture is JSON");
        let bytes = serde_json::to_vec(&value).expect("JSON serializes");
        assert_ne!(bytes, body);
        bytes
    }

    /// The HMAC checks, each with its header, prefix and a fixture of its provider.
    const HMAC_CASES: [(SignatureCheck, &str, &str, &[u8]); 8] = [
        (SignatureCheck::Generic, "X-Signature-256", "sha256=", b""),
        (SignatureCheck::Generic, "X-Signature-256", "sha256=", GITHUB_PUSH),
        (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", "sha256=", GITHUB_PUSH),
        (SignatureCheck::BitbucketSha256, "X-Hub-Signature", "sha256=", BITBUCKET_CLOUD_PUSH),
        (SignatureCheck::BitbucketSha256, "X-Hub-Signature", "sha256=", BITBUCKET_SERVER_PUSH),
        (SignatureCheck::Gitea, "X-Gitea-Signature", "", GITEA_PUSH),
        (SignatureCheck::Gitea, "X-Forgejo-Signature", "", GITEA_PUSH),
        (SignatureCheck::Gogs, "X-Gogs-Signature", "", GOGS_PUSH),
    ];

    #[test]
    fn good_signature_verifies() {
        for (check, name, prefix, body) in HMAC_CASES {
            let headers = header(name, &format!("{prefix}{}", hmac_hex(SECRET, body)));
            assert_eq!(verify(check, SECRET, &headers, body), Ok(()), "{check:?} {name}");
        }
    }

    #[test]
    fn upper_case_hex_verifies() {
        let signature = hmac_hex(SECRET, GITHUB_PUSH).to_uppercase();
        let headers = header("X-Hub-Signature-256", &format!("sha256={signature}"));
        assert_eq!(verify(SignatureCheck::GitHubSha256, SECRET, &headers, GITHUB_PUSH), Ok(()));
    }

    #[test]
    fn signature_with_another_secret_is_a_mismatch() {
        for (check, name, prefix, body) in HMAC_CASES {
            let headers = header(name, &format!("{prefix}{}", hmac_hex(OTHER_SECRET, body)));
            let error = verify(check, SECRET, &headers, body).unwrap_err();
            assert!(matches!(error, SignatureError::Mismatch { .. }), "{check:?} {name}: {error}");
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn signature_over_other_bytes_is_a_mismatch() {
        for (check, name, prefix, body) in HMAC_CASES {
            if body.is_empty() {
                continue;
            }
            let headers = header(name, &format!("{prefix}{}", hmac_hex(SECRET, &reserialized(body))));
            let error = verify(check, SECRET, &headers, body).unwrap_err();
            assert!(
                matches!(error, SignatureError::Mismatch { header } if header == name),
                "{check:?} {name}: {error}"
            );
        }
    }

    #[test]
    fn missing_signature() {
        for (check, _, _, body) in HMAC_CASES {
            let error = verify(check, SECRET, &HeaderMap::new(), body).unwrap_err();
            assert_eq!(error, SignatureError::Missing { header: check.headers()[0] });
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
        let blank = header("X-Hub-Signature-256", "  ");
        let error = verify(SignatureCheck::GitHubSha256, SECRET, &blank, GITHUB_PUSH).unwrap_err();
        assert_eq!(error, SignatureError::Missing { header: "X-Hub-Signature-256" });
        assert_eq!(
            error.to_string(),
            "the request has no `X-Hub-Signature-256` header, but this App requires one: configure the same \
             secret in the webhook settings at the Git host"
        );
    }

    #[test]
    fn another_providers_header_is_missing() {
        let headers = header("X-Hub-Signature-256", &format!("sha256={}", hmac_hex(SECRET, GITEA_PUSH)));
        let error = verify(SignatureCheck::Gitea, SECRET, &headers, GITEA_PUSH).unwrap_err();
        assert_eq!(error, SignatureError::Missing { header: "X-Gitea-Signature" });
    }

    #[test]
    fn malformed_signatures() {
        let good = hmac_hex(SECRET, GITHUB_PUSH);
        let cases = [
            (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", good.clone(), "does not start with `sha256=`"),
            (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", format!("sha1={good}"), "does not start"),
            (SignatureCheck::BitbucketSha256, "X-Hub-Signature", format!("sha1={}", &good[..40]), "does not start"),
            (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", format!("sha256={}", &good[..40]), "has 40 digits"),
            (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", format!("sha256={good}00"), "has 66 digits"),
            (SignatureCheck::GitHubSha256, "X-Hub-Signature-256", "sha256=".to_owned(), "has 0 digits"),
            (SignatureCheck::Gitea, "X-Gitea-Signature", format!("sha256={good}"), "not hex digits"),
            (SignatureCheck::Gogs, "X-Gogs-Signature", format!("{}zz", &good[..62]), "not hex digits"),
            (SignatureCheck::Gogs, "X-Gogs-Signature", "é".repeat(32), "not hex digits"),
        ];
        for (check, name, value, reason) in cases {
            let error = verify(check, SECRET, &header(name, &value), GITHUB_PUSH).unwrap_err();
            let SignatureError::Malformed { header, reason: found } = &error else {
                panic!("{check:?} {value:?}: expected Malformed, got {error:?}");
            };
            assert_eq!(*header, name);
            assert!(found.contains(reason), "{check:?} {value:?}: {found}");
            assert!(error.to_string().starts_with(&format!("the `{name}` header is malformed: expected ")));
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn empty_secret_never_verifies() {
        let headers = header("X-Gogs-Signature", &hmac_hex(b"", GOGS_PUSH));
        assert!(matches!(verify(SignatureCheck::Gogs, b"", &headers, GOGS_PUSH), Err(SignatureError::Mismatch { .. })));
        let headers = header("X-Gitlab-Token", " ");
        assert!(verify(SignatureCheck::GitLabToken, b"", &headers, GITLAB_PUSH).is_err());
    }

    #[test]
    fn gitlab_token() {
        let secret = "glpat-like shared token";
        let good = header("X-Gitlab-Token", secret);
        assert_eq!(verify(SignatureCheck::GitLabToken, secret.as_bytes(), &good, GITLAB_PUSH), Ok(()));

        let bad = header("X-Gitlab-Token", "another token");
        let error = verify(SignatureCheck::GitLabToken, secret.as_bytes(), &bad, GITLAB_PUSH).unwrap_err();
        assert_eq!(error, SignatureError::Mismatch { header: "X-Gitlab-Token" });
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        assert!(!error.to_string().contains(secret));

        let prefix = header("X-Gitlab-Token", &secret[..10]);
        assert!(verify(SignatureCheck::GitLabToken, secret.as_bytes(), &prefix, GITLAB_PUSH).is_err());

        let error = verify(SignatureCheck::GitLabToken, secret.as_bytes(), &HeaderMap::new(), GITLAB_PUSH).unwrap_err();
        assert_eq!(error, SignatureError::Missing { header: "X-Gitlab-Token" });
    }

    #[test]
    fn messages_never_show_the_secret_or_signature() {
        let signature = hmac_hex(OTHER_SECRET, GITHUB_PUSH);
        let headers = header("X-Hub-Signature-256", &format!("sha256={signature}"));
        let error = verify(SignatureCheck::GitHubSha256, SECRET, &headers, GITHUB_PUSH).unwrap_err();
        let message = error.to_string();
        assert!(!message.contains(std::str::from_utf8(SECRET).unwrap_or_default()));
        assert!(!message.contains(&signature));
        assert!(!message.contains(&hmac_hex(SECRET, GITHUB_PUSH)));
    }

    fn key(name: &str) -> Option<SecretKeyRef> {
        Some(SecretKeyRef { name: name.into(), key: "key".into() })
    }

    const EVERY_PROVIDER: [Provider; 12] = [
        Provider::GitHub,
        Provider::BitbucketCloud,
        Provider::BitbucketServer,
        Provider::GitLab,
        Provider::Gitea,
        Provider::Forgejo,
        Provider::Gogs,
        Provider::AzureDevOps,
        Provider::DockerHub,
        Provider::Generic,
        Provider::Empty,
        Provider::Manual,
    ];

    /// The check and the secret's name a call parsed as `provider` must satisfy; `None` is a refusal.
    fn required(secrets: &SignatureSecrets, provider: Provider) -> Option<(SignatureCheck, String)> {
        match requirement(secrets, provider) {
            Requirement::Verify(check, secret) => Some((check, secret.name.clone())),
            Requirement::Refuse => None,
            Requirement::TokenOnly => panic!("{provider:?}: an App with secrets is never token-only"),
        }
    }

    #[test]
    fn without_secrets_the_token_is_the_credential() {
        for provider in EVERY_PROVIDER {
            assert_eq!(requirement(&SignatureSecrets::default(), provider), Requirement::TokenOnly, "{provider:?}");
        }
    }

    #[test]
    fn with_a_github_secret_only_signed_github_calls_can_pass() {
        let secrets = SignatureSecrets { github: key("gh"), ..Default::default() };
        for provider in EVERY_PROVIDER {
            let expected = (provider == Provider::GitHub).then(|| (SignatureCheck::GitHubSha256, "gh".to_string()));
            assert_eq!(required(&secrets, provider), expected, "{provider:?}");
        }
    }

    #[test]
    fn the_providers_own_secret_first_then_the_generic_one() {
        let secrets =
            SignatureSecrets { github: key("gh"), gitlab: key("gl"), generic: key("any"), ..Default::default() };
        let generic = Some((SignatureCheck::Generic, "any".to_string()));
        let cases = [
            (Provider::GitHub, Some((SignatureCheck::GitHubSha256, "gh".to_string()))),
            (Provider::GitLab, Some((SignatureCheck::GitLabToken, "gl".to_string()))),
            (Provider::BitbucketCloud, generic.clone()),
            (Provider::BitbucketServer, generic.clone()),
            (Provider::Gitea, generic.clone()),
            (Provider::Forgejo, generic.clone()),
            (Provider::Gogs, generic.clone()),
            (Provider::AzureDevOps, generic.clone()),
            (Provider::DockerHub, generic.clone()),
            (Provider::Generic, generic.clone()),
            (Provider::Empty, generic.clone()),
            (Provider::Manual, generic),
        ];
        for (provider, expected) in cases {
            assert_eq!(required(&secrets, provider), expected, "{provider:?}");
        }
        let every = SignatureSecrets { bitbucket: key("bb"), gitea: key("gt"), gogs: key("gg"), ..secrets };
        assert_eq!(required(&every, Provider::BitbucketServer), Some((SignatureCheck::BitbucketSha256, "bb".into())));
        assert_eq!(required(&every, Provider::Forgejo), Some((SignatureCheck::Gitea, "gt".into())));
        assert_eq!(required(&every, Provider::Gogs), Some((SignatureCheck::Gogs, "gg".into())));
        assert_eq!(required(&every, Provider::Empty), Some((SignatureCheck::Generic, "any".into())));
    }

    #[test]
    fn the_accepted_signatures_are_named_without_secret_names() {
        let secrets =
            SignatureSecrets { github: key("gh-secret"), generic: key("generic-secret"), ..Default::default() };
        let described = accepted(&secrets);
        assert_eq!(
            described,
            "GitHub calls signed with `X-Hub-Signature-256`; any other call signed with `X-Signature-256: \
             sha256=<hex HMAC-SHA256 of the exact body>`"
        );
        assert!(!described.contains("secret"), "{described}");
    }
}
