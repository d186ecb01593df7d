//! The digest resolver against real registries: the Distribution registry
//! (v3, built by `hack/build-node.sh`), started by each test on a free loopback port
//! with its storage in a temporary directory. Images are pushed with the plain
//! distribution API (blob uploads, then an OCI manifest), then resolved with
//! [`RegistryClient::resolve_digest`]:
//!
//! - an open registry: a tag resolves to the pushed manifest's digest, follows
//!   a re-push of the tag, an OCI index is answered as the index, unknown tags
//!   and repositories are `NotFound`;
//! - `auth: htpasswd` (Basic): anonymous is refused, wrong credentials are
//!   refused, a docker config's credentials resolve;
//! - `auth: token` (Bearer, the Docker Hub flow): a token service in the test
//!   signs ES256 JWTs with a certificate the registry trusts; anonymous tokens
//!   carry no access and are refused, credentials get a pull token.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine as _;
use redeploy_operator::image::ImageReference;
use redeploy_operator::registry::{Credentials, RegistryClient, RegistryError, credentials_from_docker_config};
use reqwest::Method;

mod support;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const USER: &str = "ci-robot";
const PASSWORD: &str = "correct horse battery staple";
const TOKEN_SERVICE: &str = "test-registry";
const TOKEN_ISSUER: &str = "test-token-issuer";
/// The repository the tests push to.
const PUSHED_REPOSITORY: &str = "team/web";

fn registry_binary() -> PathBuf {
    let binary = redeploy_testenv::node_binaries()
        .unwrap_or_else(|e| panic!("these tests need a real registry, built by hack/build-node.sh: {e:#}"))
        .join("registry");
    assert!(binary.is_file(), "{} is missing: hack/build-node.sh builds it", binary.display());
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// How a test registry authenticates.
enum Auth {
    None,
    Htpasswd,
    Token(Arc<TokenService>),
}

/// A registry process; killed when dropped.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`, as an image reference names it.
    host: String,
    /// How the test itself pushes.
    push_auth: PushAuth,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    async fn start(auth: Auth) -> Registry {
        let binary = registry_binary();
        // The port is free when asked for, but another process may take it
        // before the registry binds it: try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let (auth_config, push_auth) = configure_auth(dir.path(), &auth);
            let host = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: test-secret\n{auth_config}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .env_clear() // no REGISTRY_* overrides from the environment
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let mut registry = Registry { child, dir, host, push_auth };
            match registry.wait_ready().await {
                Ok(()) => return registry,
                Err(log) => last_log = log, // dropping `registry` kills it
            }
        }
        panic!("the registry did not start; its log:\n{last_log}");
    }

    /// Waits for `GET /v2/` to answer 200; `Err(log)` when the process exits or it takes too long.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = |dir: &Path| std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("(exited with {status})\n{}", log(self.dir.path())));
            }
            let request = self.pusher().request(Method::GET, &format!("{}/v2/", self.base()));
            if let Ok(response) = request.send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("(no 200 from GET /v2/ within 20 s)\n{}", log(self.dir.path())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.host)
    }

    fn pusher(&self) -> Pusher {
        Pusher { http: reqwest::Client::new(), base: self.base(), auth: self.push_auth.clone() }
    }

    fn image(&self, rest: &str) -> ImageReference {
        ImageReference::parse(&format!("{}/{rest}", self.host)).unwrap()
    }
}

/// The `auth:` section of a registry's configuration (writing the files it
/// names into `dir`), and how the test pushes to it.
fn configure_auth(dir: &Path, auth: &Auth) -> (String, PushAuth) {
    match auth {
        Auth::None => (String::new(), PushAuth::None),
        Auth::Htpasswd => {
            let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
            std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
            let config =
                format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", dir.join("htpasswd").display());
            (config, PushAuth::Basic)
        }
        Auth::Token(service) => {
            std::fs::write(dir.join("issuer.pem"), &service.certificate_pem).unwrap();
            let config = format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    \
                 rootcertbundle: {}\n",
                service.realm,
                dir.join("issuer.pem").display()
            );
            // Distribution matches access claims exactly (no wildcards): the
            // tests push to this repository only.
            (config, PushAuth::Bearer(service.mint(USER, PUSHED_REPOSITORY, &["pull", "push"])))
        }
    }
}

#[derive(Clone)]
enum PushAuth {
    None,
    Basic,
    Bearer(String),
}

/// Pushes images with the plain distribution API.
struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: PushAuth,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Pusher {
    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url).timeout(Duration::from_secs(10));
        match &self.auth {
            PushAuth::None => request,
            PushAuth::Basic => request.basic_auth(USER, Some(PASSWORD)),
            PushAuth::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`, then `PUT <location>&digest=`.
    async fn push_blob(&self, repository: &str, content: &[u8]) -> serde_json::Value {
        let digest = sha256(content);
        let response =
            self.request(Method::POST, &format!("{}/v2/{repository}/blobs/uploads/", self.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "starting an upload: {:?}", response.text().await);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let mut url = url::Url::parse(&self.base).unwrap().join(&location).unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let response = self
            .request(Method::PUT, url.as_str())
            .header("content-type", "application/octet-stream")
            .body(content.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "finishing an upload: {:?}", response.text().await);
        serde_json::json!({"digest": digest, "size": content.len()})
    }

    /// `PUT /v2/<repo>/manifests/<tag>`; returns the digest of the bytes sent,
    /// after checking the registry reports the same.
    async fn push_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        manifest: serde_json::Value,
    ) -> String {
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256(&body);
        let response = self
            .request(Method::PUT, &format!("{}/v2/{repository}/manifests/{tag}", self.base))
            .header("content-type", media_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reported = response.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status, StatusCode::CREATED, "pushing a manifest: {:?}", response.text().await);
        assert_eq!(reported.as_deref(), Some(digest.as_str()), "the registry's digest of the pushed manifest");
        digest
    }

    /// A one-layer OCI image whose layer is `layer`; returns its manifest's digest and size.
    async fn push_image(&self, repository: &str, tag: &str, layer: &[u8]) -> (String, usize) {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        });
        let mut config_descriptor = self.push_blob(repository, &serde_json::to_vec(&config).unwrap()).await;
        config_descriptor["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let mut layer_descriptor = self.push_blob(repository, layer).await;
        layer_descriptor["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [layer_descriptor],
        });
        let size = serde_json::to_vec(&manifest).unwrap().len();
        (self.push_manifest(repository, tag, OCI_MANIFEST, manifest).await, size)
    }
}

fn client() -> RegistryClient {
    let http = redeploy_operator::http::build_client().unwrap_or_else(|e| panic!("the HTTP client: {e}"));
    RegistryClient::new(http).with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn resolves_a_tag_to_its_current_manifest() {
    let registry = Registry::start(Auth::None).await;
    let pusher = registry.pusher();
    let image = registry.image("team/web:stable");
    assert_eq!((image.registry.as_str(), image.repository.as_str()), (registry.host.as_str(), "team/web"));
    assert_eq!(client().scheme(&image.registry), "http", "a loopback registry is spoken to over plain HTTP");

    let (first, _) = pusher.push_image("team/web", "stable", b"first layer").await;
    assert_eq!(client().resolve_digest(&image, None).await.unwrap(), first);

    let (second, _) = pusher.push_image("team/web", "stable", b"second layer").await;
    assert_ne!(first, second);
    assert_eq!(client().resolve_digest(&image, None).await.unwrap(), second, "the tag was pushed again");

    let pinned = image.pinned(&second);
    assert_eq!(pinned, format!("{}/team/web@{second}", registry.host));
    assert_eq!(client().resolve_digest(&ImageReference::parse(&pinned).unwrap(), None).await.unwrap(), second);

    // A multi-platform image resolves to its index (Distribution 2.8 answers
    // 404 to a client whose Accept lacks the OCI index type).
    let (arm, arm_size) = pusher.push_image("team/web", "arm-only", b"arm layer").await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": second, "size": pusher_manifest_size(&pusher, "team/web", &second).await,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm, "size": arm_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    });
    let index_digest = pusher.push_manifest("team/web", "multi", OCI_INDEX, index).await;
    let multi = registry.image("team/web:multi");
    assert_eq!(client().resolve_digest(&multi, None).await.unwrap(), index_digest);
}

/// The size of a manifest already in the registry.
async fn pusher_manifest_size(pusher: &Pusher, repository: &str, digest: &str) -> usize {
    let response = pusher
        .request(Method::GET, &format!("{}/v2/{repository}/manifests/{digest}", pusher.base))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().len()
}

#[tokio::test]
async fn unknown_tags_and_repositories_are_not_found() {
    let registry = Registry::start(Auth::None).await;
    registry.pusher().push_image("team/web", "stable", b"layer").await;

    let error = client().resolve_digest(&registry.image("team/web:nope"), None).await.unwrap_err();
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("tag `nope` of `team/web` does not exist in {}", registry.host));

    let error = client().resolve_digest(&registry.image("team/other"), None).await.unwrap_err();
    assert_eq!(error.to_string(), format!("tag `latest` of `team/other` does not exist in {}", registry.host));
}

#[tokio::test]
async fn an_unreachable_registry_is_reported() {
    let port = free_port(); // nothing listens on it
    let image = ImageReference::parse(&format!("127.0.0.1:{port}/team/web:stable")).unwrap();
    let error = client().resolve_digest(&image, None).await.unwrap_err();
    assert!(matches!(error, RegistryError::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with(&format!("cannot reach 127.0.0.1:{port}: ")), "{message}");
    assert!(message.to_lowercase().contains("connection refused"), "{message}");
}

/// A proxy in front of a real registry that drops `Docker-Content-Digest`
/// from every answer (as some registries do) and, with `refuse_head`, answers
/// `HEAD` with 405. Returns its `127.0.0.1:<port>`.
async fn start_digestless_proxy(upstream: String, refuse_head: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let http = reqwest::Client::new();
    let app = Router::new().fallback(move |method: Method, uri: axum::http::Uri, headers: HeaderMap| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            if refuse_head && method == Method::HEAD {
                return StatusCode::METHOD_NOT_ALLOWED.into_response();
            }
            let mut request = http.request(method, format!("{upstream}{uri}"));
            for name in ["accept", "authorization"] {
                if let Some(value) = headers.get(name) {
                    request = request.header(name, value);
                }
            }
            let response = request.send().await.unwrap();
            let mut answer = Response::builder().status(response.status());
            for (name, value) in response.headers() {
                if name != "docker-content-digest" && name != "content-length" {
                    answer = answer.header(name, value);
                }
            }
            answer.body(axum::body::Body::from(response.bytes().await.unwrap())).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    host
}

#[tokio::test]
async fn without_a_digest_header_the_manifest_is_hashed() {
    let registry = Registry::start(Auth::None).await;
    let (digest, _) = registry.pusher().push_image("team/web", "stable", b"layer").await;
    for refuse_head in [false, true] {
        let proxy = start_digestless_proxy(registry.base(), refuse_head).await;
        let image = ImageReference::parse(&format!("{proxy}/team/web:stable")).unwrap();
        assert_eq!(client().resolve_digest(&image, None).await.unwrap(), digest, "refuse_head: {refuse_head}");
        let missing = ImageReference::parse(&format!("{proxy}/team/web:nope")).unwrap();
        let error = client().resolve_digest(&missing, None).await.unwrap_err();
        assert!(matches!(error, RegistryError::NotFound { .. }), "refuse_head: {refuse_head}: {error:?}");
    }
}

fn docker_config(host: &str, user: &str, password: &str) -> Vec<u8> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::to_vec(&serde_json::json!({"auths": {host: {"auth": auth}}})).unwrap()
}

/// Anonymous and wrong credentials are refused with actionable messages; the
/// docker config's credentials resolve.
async fn check_credentials(registry: &Registry, digest: &str) {
    let image = registry.image("team/web:stable");

    let error = client().resolve_digest(&image, None).await.unwrap_err();
    assert!(matches!(error, RegistryError::Unauthorized { with_credentials: false, .. }), "{error:?}");
    assert!(
        error.to_string().starts_with(&format!("{} requires credentials to read `team/web`", registry.host)),
        "{error}"
    );

    let wrong = Credentials { username: USER.into(), password: "wrong".into() };
    let error = client().resolve_digest(&image, Some(&wrong)).await.unwrap_err().with_secret("registry-pull");
    assert!(matches!(error, RegistryError::Unauthorized { with_credentials: true, .. }), "{error:?}");
    assert!(
        error.to_string().starts_with(&format!(
            "{} refused the credentials of Secret `registry-pull` for `team/web`",
            registry.host
        )),
        "{error}"
    );
    assert!(!error.to_string().contains("wrong"), "the message leaks the password: {error}");

    let config = docker_config(&registry.host, USER, PASSWORD);
    let credentials = credentials_from_docker_config(&config, &image.registry).unwrap().expect("an entry");
    assert_eq!(client().resolve_digest(&image, Some(&credentials)).await.unwrap(), digest);
}

#[tokio::test]
async fn basic_auth_registry_needs_the_pull_secret() {
    let registry = Registry::start(Auth::Htpasswd).await;
    let (digest, _) = registry.pusher().push_image("team/web", "stable", b"private layer").await;
    check_credentials(&registry, &digest).await;
}

#[tokio::test]
async fn token_auth_registry_gets_a_bearer_token() {
    let service = TokenService::start().await;
    let registry = Registry::start(Auth::Token(service.clone())).await;
    let (digest, _) = registry.pusher().push_image("team/web", "stable", b"private layer").await;
    service.requests.lock().unwrap().clear();

    check_credentials(&registry, &digest).await;

    // Every token request named the registry's service and asked to pull the repository.
    let requests = service.requests.lock().unwrap().clone();
    let users: Vec<_> = requests.iter().map(|r| r.user.as_deref()).collect();
    assert_eq!(users, [None, Some(USER), Some(USER)], "anonymous, wrong password, right password");
    for request in &requests {
        assert_eq!(request.service.as_deref(), Some(TOKEN_SERVICE));
        assert_eq!(request.scopes, ["repository:team/web:pull"]);
    }
}

/// A token service as Distribution's `auth: token` expects: ES256 JWTs with
/// the signing certificate in `x5c`, issued to the registry's service.
/// Anonymous callers get a token without access (as Docker Hub does for
/// private repositories); `USER`/`PASSWORD` get what they ask for; other
/// credentials get 401.
struct TokenService {
    realm: String,
    certificate_pem: String,
    certificate_der: Vec<u8>,
    key: ring::signature::EcdsaKeyPair,
    requests: Mutex<Vec<TokenRequest>>,
}

#[derive(Clone, Debug)]
struct TokenRequest {
    user: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
}

impl TokenService {
    async fn start() -> Arc<TokenService> {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["token-issuer.test".to_owned()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = Arc::new(TokenService {
            realm: format!("http://{}/token", listener.local_addr().unwrap()),
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            key,
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new().route("/token", get(issue_token)).with_state(service.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        service
    }

    /// A signed token for `subject` with `actions` on `repository` (none: access to no repository).
    fn mint(&self, subject: &str, repository: &str, actions: &[&str]) -> String {
        let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.certificate_der)],
        });
        let access = if actions.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{"type": "repository", "name": repository, "actions": actions}])
        };
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": format!("{now}-{subject}-{}", rand_suffix()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap()),
            b64url(&serde_json::to_vec(&claims).unwrap())
        );
        let signature = self.key.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

async fn issue_token(
    State(service): State<Arc<TokenService>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut request = TokenRequest { user: None, service: None, scopes: Vec::new() };
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "service" => request.service = Some(value.into_owned()),
            "scope" => request.scopes.push(value.into_owned()),
            _ => {}
        }
    }
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let granted = match basic.as_deref().map(|b| b.split_once(':').unwrap_or((b, ""))) {
        None => true,
        Some((user, password)) => {
            request.user = Some(user.to_owned());
            user == USER && password == PASSWORD
        }
    };
    let user = request.user.clone();
    let scopes = request.scopes.clone();
    service.requests.lock().unwrap().push(request);
    if !granted {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    // Anonymous: a valid token with no access. Authenticated: pull on the asked repository.
    let token = match (&user, scopes.first().and_then(|s| s.strip_prefix("repository:"))) {
        (Some(user), Some(scope)) => {
            let (repository, _) = scope.rsplit_once(':').unwrap_or((scope, ""));
            service.mint(user, repository, &["pull"])
        }
        _ => service.mint("", "", &[]),
    };
    axum::Json(serde_json::json!({"token": token})).into_response()
}

/// The Redeployment side of `resolveDigest`: the operator pins the tag's
/// current digest from this real registry, and skips the rollout when the
/// workload already runs it.
#[tokio::test]
async fn an_image_service_is_pinned_to_the_digest_and_skipped_when_unchanged() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::{Api, api::PostParams};
    use redeploy_operator::api::{Phase, Redeployment, ServicePhase};

    let registry = Registry::start(Auth::None).await;
    let pusher = registry.pusher();
    let (first, _) = pusher.push_image(PUSHED_REPOSITORY, "stable", b"first layer").await;
    let host = registry.base().trim_start_matches("http://").to_string();
    let reference = format!("{host}/{PUSHED_REPOSITORY}:stable");

    support::operator();
    let (_, client, namespace) = support::setup("pin").await?;
    let objects = serde_json::json!([
        {"apiVersion": "redeploy.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"}, "spec": {}},
        {"apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"app": "shop", "target": {"name": "web"}, "image": {"reference": reference, "resolveDigest": true}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "web", "image": reference}]}}}},
    ]);
    let yaml: String = objects.as_array().into_iter().flatten().map(|o| format!("---\n{o}\n")).collect();
    support::apply_yaml(&client, &namespace, &yaml).await?;
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    let run = |name: &'static str| {
        let (api, client) = (api.clone(), client.clone());
        async move {
            let object = serde_json::json!({
                "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "metadata": {"name": name},
                "spec": {"app": "shop", "trigger": {"provider": "manual", "event": "test"},
                         "plan": [{"service": "web", "action": "pinDigest"}]},
            });
            api.create(&PostParams::default(), &serde_json::from_value(object)?).await?;
            let done = support::eventually(name, || async {
                let redeployment = api.get(name).await?;
                let finished = redeployment.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished);
                Ok(finished.then_some(redeployment))
            })
            .await?;
            let image = Api::<Deployment>::namespaced(client, &done.namespace().unwrap_or_default())
                .get("web")
                .await?
                .spec
                .template
                .spec
                .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
                .unwrap_or_default();
            anyhow::Ok((done.status.unwrap_or_default(), image))
        }
    };
    use kube::ResourceExt;

    let (status, image) = run("pin-1").await?;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(image, format!("{host}/{PUSHED_REPOSITORY}@{first}"));
    assert_eq!(status.services[0].git_ref.as_deref(), Some(first.as_str()));

    let (status, unchanged) = run("pin-2").await?;
    assert_eq!(status.services[0].phase, ServicePhase::Skipped, "{status:?}");
    assert!(status.services[0].message.clone().unwrap_or_default().contains("already running"), "{status:?}");
    assert_eq!(unchanged, image);

    let (second, _) = pusher.push_image(PUSHED_REPOSITORY, "stable", b"second layer").await;
    assert_ne!(first, second);
    let (status, image) = run("pin-3").await?;
    assert_eq!(status.services[0].phase, ServicePhase::Succeeded, "{status:?}");
    assert_eq!(image, format!("{host}/{PUSHED_REPOSITORY}@{second}"));
    Ok(())
}

// Stand-ins for registries and token services that misbehave: each answers
// what the test says, on a loopback address of its own.

const STAND_IN_DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Serves `app` on `ip` (any port); returns `ip:port`.
async fn stand_in(ip: &str, app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    host
}

fn with_digest() -> Response {
    Response::builder()
        .status(200)
        .header("docker-content-digest", STAND_IN_DIGEST)
        .body(axum::body::Body::empty())
        .unwrap()
}

fn challenge(value: String) -> Response {
    Response::builder().status(401).header("www-authenticate", value).body(axum::body::Body::empty()).unwrap()
}

fn credentials() -> Credentials {
    Credentials { username: USER.into(), password: PASSWORD.into() }
}

/// The `Authorization` header of each request a stand-in received.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

fn record(seen: &Seen, headers: &HeaderMap) {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().unwrap().push(authorization);
}

#[tokio::test]
async fn credentials_go_to_a_token_service_only_over_https_or_loopback() {
    // A token service on another loopback address: plain http is fine there.
    let token_seen: Seen = Arc::default();
    let seen = token_seen.clone();
    let tokens = stand_in(
        "127.0.0.2",
        Router::new().fallback(move |headers: HeaderMap| {
            record(&seen, &headers);
            async { axum::Json(serde_json::json!({"token": "pull-token"})) }
        }),
    )
    .await;
    let registry_for = |realm: String| {
        Router::new().fallback(move |headers: HeaderMap| {
            let realm = realm.clone();
            async move {
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer pull-token") => with_digest(),
                    _ => challenge(format!(r#"Bearer realm="{realm}",service="stand-in""#)),
                }
            }
        })
    };
    let loopback = stand_in("127.0.0.1", registry_for(format!("http://{tokens}/token"))).await;
    let image = ImageReference::parse(&format!("{loopback}/{PUSHED_REPOSITORY}:latest")).unwrap();
    assert_eq!(client().resolve_digest(&image, Some(&credentials())).await.unwrap(), STAND_IN_DIGEST);
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
    assert_eq!(*token_seen.lock().unwrap(), [Some(expected)]);

    // A realm on another host over plain http never gets them; anonymous calls still may go.
    let elsewhere = stand_in("127.0.0.1", registry_for("http://tokens.invalid/token".into())).await;
    let image = ImageReference::parse(&format!("{elsewhere}/{PUSHED_REPOSITORY}:latest")).unwrap();
    let error = client().resolve_digest(&image, Some(&credentials())).await.unwrap_err();
    assert!(matches!(error, RegistryError::InsecureTransport { .. }), "{error:?}");
    assert!(error.to_string().contains("over plain http"), "{error}");
    assert!(error.to_string().contains("http://tokens.invalid/token"), "{error}");
    let anonymous = client().resolve_digest(&image, None).await.unwrap_err();
    assert!(matches!(anonymous, RegistryError::Unreachable { .. }), "{anonymous:?}");
}

#[tokio::test]
async fn redirects_are_few_and_never_carry_credentials_to_another_host() {
    let target_seen: Seen = Arc::default();
    let seen = target_seen.clone();
    let target = stand_in(
        "127.0.0.1",
        Router::new().fallback(move |headers: HeaderMap| {
            record(&seen, &headers);
            async { with_digest() }
        }),
    )
    .await;
    let registry = stand_in(
        "127.0.0.1",
        Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
            let target = target.clone();
            async move {
                if headers.contains_key("authorization") {
                    Response::builder()
                        .status(307)
                        .header("location", format!("http://{target}{uri}"))
                        .body(axum::body::Body::empty())
                        .unwrap()
                } else {
                    challenge(r#"Basic realm="stand-in""#.into())
                }
            }
        }),
    )
    .await;
    let image = ImageReference::parse(&format!("{registry}/{PUSHED_REPOSITORY}:latest")).unwrap();
    assert_eq!(client().resolve_digest(&image, Some(&credentials())).await.unwrap(), STAND_IN_DIGEST);
    assert_eq!(*target_seen.lock().unwrap(), [None], "the other host got no Authorization header");

    // A registry that redirects forever: a few hops, then an error.
    let hops = Arc::new(Mutex::new(0usize));
    let counted = hops.clone();
    let looping = stand_in(
        "127.0.0.1",
        Router::new().fallback(move |uri: axum::http::Uri| {
            let counted = counted.clone();
            async move {
                let hop = {
                    let mut hops = counted.lock().unwrap();
                    *hops += 1;
                    *hops
                };
                let path = uri.path().to_owned();
                Response::builder()
                    .status(302)
                    .header("location", format!("{path}?hop={hop}"))
                    .body(axum::body::Body::empty())
                    .unwrap()
            }
        }),
    )
    .await;
    let image = ImageReference::parse(&format!("{looping}/{PUSHED_REPOSITORY}:latest")).unwrap();
    let error = client().resolve_digest(&image, None).await.unwrap_err();
    assert!(error.to_string().contains("redirects"), "{error}");
    assert_eq!(*hops.lock().unwrap(), 4, "the request and 3 redirects");
}

#[tokio::test]
async fn large_answers_are_cut_and_error_pages_summarised() {
    // An HTML error page of a few hundred KB (a proxy in front of the registry).
    let page = format!("<html><body>{}</body></html>", "<p>Internal error, please retry later.</p>".repeat(5_000));
    let html = stand_in(
        "127.0.0.1",
        Router::new().fallback(move |method: Method| {
            let page = page.clone();
            async move {
                if method == Method::HEAD {
                    return StatusCode::METHOD_NOT_ALLOWED.into_response();
                }
                Response::builder()
                    .status(500)
                    .header("content-type", "text/html")
                    .body(axum::body::Body::from(page))
                    .unwrap()
            }
        }),
    )
    .await;
    let image = ImageReference::parse(&format!("{html}/{PUSHED_REPOSITORY}:latest")).unwrap();
    let message = client().resolve_digest(&image, None).await.unwrap_err().to_string();
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(!message.contains('<') && message.len() < 300, "{message}");

    // A JSON error: its message, cut short, on one line.
    let detail = format!("back-end storage is down\n{}", "x".repeat(10_000));
    let json = stand_in(
        "127.0.0.1",
        Router::new().fallback(move |method: Method| {
            let detail = detail.clone();
            async move {
                if method == Method::HEAD {
                    return StatusCode::METHOD_NOT_ALLOWED.into_response();
                }
                let body = serde_json::json!({"errors": [{"code": "UNAVAILABLE", "message": detail}]});
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            }
        }),
    )
    .await;
    let image = ImageReference::parse(&format!("{json}/{PUSHED_REPOSITORY}:latest")).unwrap();
    let message = client().resolve_digest(&image, None).await.unwrap_err().to_string();
    assert!(message.contains("HTTP 503") && message.contains("back-end storage is down"), "{message}");
    assert!(!message.contains('\n') && message.len() < 400, "{message}");

    // A token service that answers without end: read up to a cap, then refused.
    let endless = stand_in(
        "127.0.0.1",
        Router::new().fallback(|| async {
            let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
            let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Response::builder().status(200).body(axum::body::Body::from_stream(stream)).unwrap()
        }),
    )
    .await;
    let registry = stand_in(
        "127.0.0.1",
        Router::new().fallback(move || {
            let endless = endless.clone();
            async move { challenge(format!(r#"Bearer realm="http://{endless}/token""#)) }
        }),
    )
    .await;
    let image = ImageReference::parse(&format!("{registry}/{PUSHED_REPOSITORY}:latest")).unwrap();
    let message = client().resolve_digest(&image, None).await.unwrap_err().to_string();
    assert!(message.contains("more than 65536 bytes"), "{message}");
}
