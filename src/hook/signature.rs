//! Signatures beyond the URL token: HMAC over the exact body bytes, or a shared token.
//!
//! When an App configures a secret for its provider, [`verify`] must pass
//! before a call is acted on. Comparisons are constant-time, and no error
//! message repeats the secret or the signature received.

use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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
}

const X_HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";
const X_HUB_SIGNATURE: &str = "X-Hub-Signature";
const X_GITEA_SIGNATURE: &str = "X-Gitea-Signature";
const X_FORGEJO_SIGNATURE: &str = "X-Forgejo-Signature";
const X_GOGS_SIGNATURE: &str = "X-Gogs-Signature";
const X_GITLAB_TOKEN: &str = "X-Gitlab-Token";

/// Length of an HMAC-SHA256 in hex digits.
const SHA256_HEX_DIGITS: usize = 64;

impl SignatureCheck {
    /// The headers this check reads, in the order they are looked for.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            SignatureCheck::GitHubSha256 => &[X_HUB_SIGNATURE_256],
            SignatureCheck::BitbucketSha256 => &[X_HUB_SIGNATURE],
            SignatureCheck::Gitea => &[X_GITEA_SIGNATURE, X_FORGEJO_SIGNATURE],
            SignatureCheck::Gogs => &[X_GOGS_SIGNATURE],
            SignatureCheck::GitLabToken => &[X_GITLAB_TOKEN],
        }
    }

    /// The prefix before the hex digits, for the checks that have one.
    fn prefix(self) -> Option<&'static str> {
        match self {
            SignatureCheck::GitHubSha256 | SignatureCheck::BitbucketSha256 => Some("sha256="),
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

    use super::{SignatureCheck, SignatureError, verify};

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
    const HMAC_CASES: [(SignatureCheck, &str, &str, &[u8]); 6] = [
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
}
