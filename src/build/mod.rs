//! The build Job of a Git-built Service, rendered without a client: the
//! Redeployment reconciler creates it, watches it, and reads the result from
//! the build container's termination message ([`parse_termination_message`]).
//!
//! # The default builder: BuildKit in a privileged pod
//!
//! Without `spec.build.template` the Job runs [`BUILDKIT_IMAGE`] (or the
//! operator's `--builder-image`) with
//! `buildctl-daemonless.sh build --frontend dockerfile.v0 --opt context=<Git
//! context> --opt filename=<dockerfile> --output type=image,name=<image>:<commit>,push=true`,
//! wrapped in a small `sh -c` script (`buildkit.sh`). What this relies on, as
//! checked against BuildKit's sources and Docker's build documentation:
//!
//! - **Git context syntax.** `--opt context=` takes a Git URL whose fragment is
//!   `#<ref>:<subdir>` (`https://github.com/o/r.git#<ref>:<dir>`): the ref is a
//!   branch, tag or *full* 40-hex commit SHA (abbreviated SHAs are not
//!   supported), the subdirectory is optional and is both the build context
//!   and where `filename` is looked up. BuildKit v0.24+ also accepts a query
//!   form (`?ref=…&subdir=…`); the fragment form works in every version.
//! - **Which URLs are Git.** An `http(s)` URL is a Git context only when its
//!   path ends in `.git`; otherwise BuildKit downloads it as a tarball or a
//!   Dockerfile. [`buildkit_remote`] therefore appends `.git`. Azure DevOps
//!   does not serve its https repositories under a `.git` name, so those are
//!   refused with a pointer to the SSH URL. `ssh://` URLs, `git://` URLs and
//!   the scp-like `[user@]host:path` form are Git contexts as they are; the
//!   scp-like form is kept as written (rewriting it to `ssh://host/path` would
//!   turn a home-relative path into an absolute one) unless its user name has
//!   characters BuildKit's scp pattern (`([a-zA-Z0-9-_]+@)?[a-zA-Z0-9-.]+:path`;
//!   older releases require the user) does not accept, in which case it
//!   becomes `ssh://user@host/path`.
//! - **Credentials.** For https, BuildKit reads the build secrets
//!   `GIT_AUTH_HEADER.<host>` (the raw `Authorization` header value) or
//!   `GIT_AUTH_TOKEN.<host>` (a token sent as basic auth with the fixed user
//!   `x-access-token`), then the same names without the host. The script
//!   builds `basic base64(username:password)` from the Secret and passes it
//!   as `--secret id=GIT_AUTH_HEADER.<host>,src=<file>`, which works for
//!   GitHub, GitLab and Bitbucket alike. For SSH remotes BuildKit mounts the
//!   forwarded SSH agent with id `default`: the script passes
//!   `--ssh default=<key file>` (buildctl loads unencrypted key files into an
//!   agent itself). Without known hosts BuildKit does not check host keys.
//! - **Which commit was built.** Neither the exporter response that
//!   `buildctl --metadata-file` writes (`containerimage.digest`,
//!   `containerimage.descriptor`, `containerimage.config.digest`,
//!   `image.name`) nor anything else buildctl prints names the resolved Git
//!   commit (it is only in provenance attestations). So the script resolves a
//!   branch, tag or `HEAD` itself with `git ls-remote` (git is in the
//!   BuildKit image: BuildKit's Git source runs the git binary), then
//!   builds the context at that SHA, so the commit built, the tag and the
//!   report agree even if the branch moves meanwhile. The digest comes from
//!   the metadata file's `containerimage.digest`. The commit is also the
//!   build argument `REDEPLOY_GIT_COMMIT` (BuildKit keeps no `.git` in the
//!   context): a Dockerfile bakes it in with `ARG REDEPLOY_GIT_COMMIT`.
//! - **Privileged, as root.** As BuildKit's `examples/kubernetes/job.privileged.yaml`:
//!   `privileged: true`, the image's user (root), buildkitd started by
//!   `buildctl-daemonless.sh` with its OCI worker (runc, process sandbox on),
//!   and an `emptyDir` at `/var/lib/buildkit` for its state. Rootless BuildKit
//!   (`job.rootless.yaml`: user 1000, seccomp and AppArmor `Unconfined`,
//!   `--oci-worker-no-process-sandbox`) was the default until it failed on a
//!   real node (containerd 2.4, runc 1.5, Linux 6.18 with cgroup v1): with
//!   `NoNewPrivs: 0` and `CAP_SETUID` in the bounding set, the setuid
//!   `newuidmap` still cannot write `/proc/<pid>/uid_map` (not even the
//!   identity map `0 1000 1`), so rootlesskit stops with `failed to setup
//!   UID/GID map: newuidmap ... write to uid_map failed: Operation not
//!   permitted`. Clusters where rootless works can run it through
//!   `spec.build.template`.
//!
//! # The contract of a custom builder (`spec.build.template`, or the App's `spec.build.template`)
//!
//! The Service's pod template is used as it is, except for what the operator
//! owns: the `redeploy.dev/*` labels and the `redeploy.dev/git-ref`
//! annotation, `restartPolicy: Never`, and these environment variables, set on
//! every container and init container (replacing any of the same name):
//!
//! | variable | value |
//! |---|---|
//! | `REDEPLOY_GIT_REPOSITORY` | `spec.git.repository` as written (the default builder gets it with credentials in the URL redacted) |
//! | `REDEPLOY_GIT_REF` | the ref to build: commit SHA (lower-case), branch, tag or `HEAD` |
//! | `REDEPLOY_CONTEXT` | the build context inside the repository, normalised (`.` for the root) |
//! | `REDEPLOY_DOCKERFILE` | the Dockerfile path inside the context |
//! | `REDEPLOY_IMAGE` | `<repository>:<sha>`, the tag to push; only when the ref is a full SHA |
//! | `REDEPLOY_IMAGE_REPOSITORY` | `spec.build.image` |
//!
//! The **first container** must, on success, write
//! `{"commit":"<40-hex sha>","image":"<repository>:<sha>","digest":"sha256:…"}`
//! (`digest` optional) to its termination message file
//! (`/dev/termination-log` unless the template says otherwise). Credentials
//! are the template's business: the operator mounts no Secret into it.
//!
//! What the operator trusts of a finished build: the Job must be the
//! Redeployment's (its controller), the result is read only from pods the Job
//! controls, the image must be in `spec.build.image`'s repository
//! ([`check_outcome`]), and a build that reports nothing has failed: nothing
//! is deployed on a guess.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSpec, PodTemplateSpec, SecretVolumeSource,
        SecurityContext, Volume, VolumeMount,
    },
};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::{
    api::{App, Redeployment, Service},
    git::GitRef,
    hook::credentials::APP_LABEL,
    image::ImageReference,
    repo::redact_credentials,
};

/// The default builder's image: BuildKit, pinned to the release the tests build and run on a real
/// node (hack/versions.env `BUILDKIT_VERSION`); the operator's `--builder-image` replaces it.
pub const BUILDKIT_IMAGE: &str = "moby/buildkit:v0.34.2";
/// Name of the default builder's container.
pub const BUILD_CONTAINER: &str = "build";

/// Label naming the Service a build Job builds.
pub const SERVICE_LABEL: &str = "redeploy.dev/service";
/// Label naming the Redeployment a build Job belongs to.
pub const REDEPLOYMENT_LABEL: &str = "redeploy.dev/redeployment";
/// Annotation holding the Git ref the build was asked for.
pub const GIT_REF_ANNOTATION: &str = "redeploy.dev/git-ref";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "redeploy-operator";

pub const ENV_GIT_REPOSITORY: &str = "REDEPLOY_GIT_REPOSITORY";
pub const ENV_GIT_REF: &str = "REDEPLOY_GIT_REF";
pub const ENV_CONTEXT: &str = "REDEPLOY_CONTEXT";
pub const ENV_DOCKERFILE: &str = "REDEPLOY_DOCKERFILE";
pub const ENV_IMAGE: &str = "REDEPLOY_IMAGE";
pub const ENV_IMAGE_REPOSITORY: &str = "REDEPLOY_IMAGE_REPOSITORY";
/// Default builder only: the repository as BuildKit reads it ([`buildkit_remote`]).
pub const ENV_BUILDKIT_REMOTE: &str = "REDEPLOY_BUILDKIT_REMOTE";
/// Default builder only, http(s) remotes: the host the Git credentials are scoped to.
pub const ENV_GIT_HOST: &str = "REDEPLOY_GIT_HOST";

/// A failed build is not retried by the Job: the Redeployment records it.
pub const BACKOFF_LIMIT: i32 = 0;
/// A build that takes longer than this is failed.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 1800;
/// Finished build Jobs (and their pods' logs) are kept this long.
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;

const SCRIPT: &str = include_str!("buildkit.sh");
/// What the build resolves when nothing names a ref: the default branch.
const DEFAULT_BRANCH_REF: &str = "HEAD";
const TERMINATION_LOG: &str = "/dev/termination-log";
const BUILDKIT_STATE_DIR: &str = "/var/lib/buildkit";
const GIT_CREDENTIALS_DIR: &str = "/run/redeploy/git";
const DOCKER_CONFIG_DIR: &str = "/root/.docker";
/// Secret files readable by the build (root), not by others.
const SECRET_MODE: i32 = 0o440;

/// What to build: the Service at a ref, for a Redeployment of an App.
#[derive(Clone, Copy, Debug)]
pub struct BuildRequest<'a> {
    pub app: &'a App,
    pub service: &'a Service,
    pub redeployment: &'a Redeployment,
    /// commit SHA, branch or tag to build; `None` builds the Service's branch, or the default branch (`HEAD`)
    pub git_ref: Option<&'a str>,
    /// The default builder's image ([`BUILDKIT_IMAGE`] unless the operator is told otherwise).
    pub builder_image: &'a str,
}

/// What a build reports: the commit it built and the image it pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    /// The full, lower-case commit SHA.
    pub commit: String,
    /// The pushed image, `<repository>:<commit>`.
    pub image: String,
    /// The pushed manifest's digest, when the builder reported it.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("Service {service} is not Git-built (it has no spec.git): only Git-built Services have a build Job")]
    NotGitBuilt { service: String },
    #[error("Service {service} has spec.git but no spec.build: set spec.build.image to the repository to push to")]
    MissingBuild { service: String },
    #[error("spec.build.image {image:?} of Service {service} is not a valid image repository: {reason}")]
    InvalidImage { service: String, image: String, reason: String },
    #[error("spec.git.repository {repository:?} of Service {service} cannot be built: {reason}")]
    InvalidRepository { service: String, repository: String, reason: String },
    #[error("Git ref {git_ref:?} cannot be built: {reason}")]
    InvalidGitRef { git_ref: String, reason: String },
    #[error("spec.git.{field} {value:?} of Service {service} is not usable: {reason}")]
    InvalidPath { service: String, field: &'static str, value: String, reason: String },
    #[error(
        "Service {service} builds from the SSH URL {repository:?} but has no spec.git.secretRef: \
         set it to a Secret with an ssh-privatekey key, or use the https URL for a public repository"
    )]
    SshWithoutCredentials { service: String, repository: String },
    #[error("Service {service} has a build template without containers: the first container must run the build")]
    TemplateWithoutContainers { service: String },
    #[error("{kind} {name} has no namespace: build Jobs are created in the Service's namespace")]
    MissingNamespace { kind: &'static str, name: String },
    #[error(
        "{kind} {name} is in namespace {found}, the Service in {expected}: a build Job is owned by \
         a Redeployment of the same namespace"
    )]
    NamespaceMismatch { kind: &'static str, name: String, found: String, expected: String },
    #[error("Service {service} belongs to App {expected}, not to App {found}")]
    WrongApp { service: String, expected: String, found: String },
    #[error(
        "Redeployment {name:?} has no uid yet: render the build Job from the Redeployment as read back \
         from the API server, so that the Job can be owned by it"
    )]
    RedeploymentNotStored { name: String },
    #[error(
        "invalid build result: {reason}; the build's first container must write \
         {{\"commit\":\"<40-hex sha>\",\"image\":\"<repository>:<sha>\",\"digest\":\"sha256:...\"}} \
         to its termination message file"
    )]
    InvalidTerminationMessage { reason: String },
    #[error(
        "the build reported the image {image:?}, which is not in spec.build.image {repository:?} of Service \
         {service}: a build only deploys images it pushed to its Service's repository ({repository}:<commit>)"
    )]
    ForeignImage { service: String, image: String, repository: String },
}

/// The build Job's name: deterministic per (Redeployment, Service), so that
/// an operator that restarts mid-build finds the Job it created (its create
/// answers `409 AlreadyExists`) instead of starting a second build. It is a
/// DNS-1123 label of at most 63 characters (a Job's name is also the value of
/// its pods' `job-name` label): readable prefixes of both names, then a hash
/// of the exact pair, which keeps names apart that sanitising or cutting
/// would make equal.
pub fn job_name(redeployment: &str, service: &str) -> String {
    // Kubernetes names cannot contain a newline, so the pair is unambiguous.
    let suffix = short_hash(&format!("{redeployment}\n{service}"));
    let (redeployment, service) = (dns_label_part(redeployment), dns_label_part(service));
    // 63 = prefix + "-" + 10 hex characters; the prefix holds both parts and a "-".
    let budget = 63 - 1 - suffix.len() - 1;
    let (r, s) = split_budget(redeployment.len(), service.len(), budget);
    let parts: Vec<&str> = [&redeployment[..r], &service[..s]]
        .into_iter()
        .map(|part| part.trim_matches('-'))
        .filter(|part| !part.is_empty())
        .collect();
    if parts.is_empty() { format!("build-{suffix}") } else { format!("{}-{suffix}", parts.join("-")) }
}

/// `<build.image>:<commit>`: the tag a build of `commit` pushes. A Service
/// without `spec.build` has no repository (the result starts with `:`);
/// [`render_job`] refuses such Services first.
pub fn image_for(service: &Service, commit: &str) -> String {
    let repository = service.spec.build.as_deref().map(|b| b.image.trim()).unwrap_or_default();
    format!("{repository}:{}", commit.trim())
}

/// Checks that a build's reported image is in its Service's `spec.build.image`
/// repository (same registry and repository, however spelled): whatever
/// writes the termination message must not choose what is deployed.
pub fn check_outcome(service: &Service, outcome: &BuildOutcome) -> Result<(), BuildError> {
    let repository = service.spec.build.as_deref().map(|b| b.image.trim().to_string()).unwrap_or_default();
    let foreign = || BuildError::ForeignImage {
        service: service.name_any(),
        image: outcome.image.clone(),
        repository: repository.clone(),
    };
    let expected = ImageReference::parse(&repository).map_err(|_| foreign())?;
    let reported = ImageReference::parse(&outcome.image).map_err(|_| foreign())?;
    if reported.registry != expected.registry || reported.repository != expected.repository {
        return Err(foreign());
    }
    Ok(())
}

/// A label value for a name: the name itself when it is a valid label value
/// (at most 63 characters), else a readable prefix and a hash of the name.
pub fn label_value(name: &str) -> String {
    if is_label_value(name) {
        return name.to_string();
    }
    let suffix = short_hash(name);
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let prefix = crate::text::bounded(&cleaned, 63 - 1 - suffix.len());
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() { suffix } else { format!("{prefix}-{suffix}") }
}

/// The build's commit-id check is the operator's one ([`crate::git`]).
pub use crate::git::is_commit_sha;

/// The repository URL as BuildKit reads a Git context (see the module docs):
/// https/http URLs lose any user info and gain a `.git` suffix, scheme-less
/// `host/path` becomes https, `ssh://` and `git://` URLs are kept, and the
/// scp-like `[user@]host:path` form is kept unless BuildKit's pattern for it
/// would not match, when it becomes `ssh://`. The error is a reason.
pub fn buildkit_remote(repository: &str) -> Result<String, String> {
    let input = repository.trim();
    if input.is_empty() {
        return Err("it is empty".into());
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains blanks or control characters".into());
    }
    if input.contains('#') {
        return Err(
            "it has a #fragment: put the branch in spec.git.branch and the directory in spec.git.context".into()
        );
    }
    if let Some((scheme, _)) = input.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "https" | "http" | "ssh" | "git") {
            return Err(format!("BuildKit fetches Git contexts over https, http, ssh and git://, not {scheme}://"));
        }
        let url = Url::parse(input).map_err(|e| format!("it is not a valid URL ({e})"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("it names no host".into());
        }
        if url.query().is_some() {
            return Err(HAS_QUERY.into());
        }
        return match scheme.as_str() {
            "https" | "http" => http_remote(url),
            "ssh" | "git" => {
                let mut url = url;
                let _ = url.set_password(None);
                Ok(url.to_string())
            }
            _ => unreachable!("the scheme was checked above"),
        };
    }
    if let Some(scp) = scp_like(input) {
        return scp;
    }
    // `host/path` without a scheme, read as https, as Git hosts print it.
    let (authority, _) = input.split_once('/').ok_or("it is neither a URL nor user@host:path")?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    if !(host.contains('.') || host.eq_ignore_ascii_case("localhost")) {
        return Err("it is neither a URL nor user@host:path (a path on this machine cannot be fetched)".into());
    }
    let url = Url::parse(&format!("https://{input}")).map_err(|e| format!("it is not a valid URL ({e})"))?;
    if url.query().is_some() {
        return Err(HAS_QUERY.into());
    }
    http_remote(url)
}

/// A query would reach BuildKit, which reads `?ref=` and `?subdir=` from it (v0.24+).
const HAS_QUERY: &str = "it has a ?query, which Git clone URLs do not have";

fn http_remote(mut url: Url) -> Result<String, String> {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host == "dev.azure.com" || host.ends_with(".visualstudio.com") {
        return Err("BuildKit reads an https Git context only when its path ends in .git, which Azure DevOps \
                    does not serve: use the SSH URL (git@ssh.dev.azure.com:v3/org/project/repo) or a \
                    spec.build.template"
            .into());
    }
    // Credentials belong in spec.git.secretRef, never in a URL that ends up in pod specs and logs.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let path = url.path().trim_end_matches('/').to_string();
    if path.is_empty() {
        return Err("it names a host but no repository".into());
    }
    // BuildKit looks for a lower-case `.git`; `r.GIT` is repository `r` (crate::repo), not `r.GIT.git`.
    let stem = match path.len().checked_sub(4).and_then(|at| path.split_at_checked(at)) {
        Some((stem, suffix)) if suffix.eq_ignore_ascii_case(".git") => stem,
        _ => &path,
    };
    url.set_path(&format!("{stem}.git"));
    Ok(url.to_string())
}

/// `[user@]host:path` (a `:` before any `/`), as Git reads it.
fn scp_like(input: &str) -> Option<Result<String, String>> {
    let crate::repo::ScpLike { user, host, path } = crate::repo::split_scp_like(input)?;
    if host.is_empty() || path.trim_matches('/').is_empty() {
        return Some(Err("it names no repository path".into()));
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Some(Err(format!("{host:?} is not a host name")));
    }
    let buildkit_user =
        |u: &str| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match user {
        // In the scp-like form `?` and `%` are part of the path; in a URL they would start a query or an escape.
        Some(u) if !buildkit_user(u) && path.contains(['?', '%']) => Some(Err(format!(
            "its path has `?` or `%`, which the ssh:// URL BuildKit needs for the user name {u:?} cannot keep: \
             write it as ssh://user@host/path with the path percent-encoded"
        ))),
        Some(u) if !buildkit_user(u) => {
            let path = path.trim_start_matches('/');
            let mut url = match Url::parse(&format!("ssh://{host}/{path}")) {
                Ok(url) => url,
                Err(e) => return Some(Err(format!("it is not a valid SSH URL ({e})"))),
            };
            // Set, not spliced into the string: a `?`, `#` or `@` in the user name is escaped
            // instead of ending the authority (`x?@host:p` would otherwise name host `x`).
            if u.contains('%') || url.set_username(u).is_err() {
                return Some(Err(format!("{u:?} cannot be written as the user name of an ssh:// URL")));
            }
            Some(Ok(url.to_string()))
        }
        _ => Some(Ok(input.to_string())),
    }
}

/// The transport of a remote [`buildkit_remote`] returned.
fn is_ssh_remote(remote: &str) -> bool {
    remote.starts_with("ssh://") || !remote.contains("://")
}

/// `host[:port]` of an http(s) remote: the suffix of BuildKit's per-host secret names.
fn http_host(remote: &str) -> Option<String> {
    let url = Url::parse(remote).ok().filter(|u| matches!(u.scheme(), "https" | "http"))?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// Renders the build Job of `request.service` (see the module docs).
pub fn render_job(request: &BuildRequest) -> Result<Job, BuildError> {
    let BuildRequest { app, service, redeployment, git_ref, builder_image } = *request;
    let service_name = service.name_any();
    let git = service.spec.git.as_deref().ok_or_else(|| BuildError::NotGitBuilt { service: service_name.clone() })?;
    let build =
        service.spec.build.as_deref().ok_or_else(|| BuildError::MissingBuild { service: service_name.clone() })?;
    let image_repository = build.image.trim();
    ImageReference::parse_repository(image_repository).map_err(|error| BuildError::InvalidImage {
        service: service_name.clone(),
        image: build.image.clone(),
        reason: error.reason,
    })?;

    let namespace = service
        .namespace()
        .ok_or_else(|| BuildError::MissingNamespace { kind: "Service", name: service_name.clone() })?;
    for (kind, name, found) in
        [("Redeployment", redeployment.name_any(), redeployment.namespace()), ("App", app.name_any(), app.namespace())]
    {
        let found = found.ok_or_else(|| BuildError::MissingNamespace { kind, name: name.clone() })?;
        if found != namespace {
            return Err(BuildError::NamespaceMismatch { kind, name, found, expected: namespace.clone() });
        }
    }
    if service.spec.app != app.name_any() {
        return Err(BuildError::WrongApp {
            service: service_name,
            expected: service.spec.app.clone(),
            found: app.name_any(),
        });
    }
    let owner = redeployment
        .controller_owner_ref(&())
        .ok_or_else(|| BuildError::RedeploymentNotStored { name: redeployment.name_any() })?;

    let git_ref = ref_to_build(git_ref.or(git.branch.as_deref()))?;
    let invalid_path = |field, value: &str, reason| BuildError::InvalidPath {
        service: service_name.clone(),
        field,
        value: value.to_string(),
        reason,
    };
    let context = normalise_context(&git.context).map_err(|r| invalid_path("context", &git.context, r))?;
    let dockerfile =
        normalise_dockerfile(&git.dockerfile).map_err(|r| invalid_path("dockerfile", &git.dockerfile, r))?;

    let labels = BTreeMap::from([
        (APP_LABEL.to_string(), label_value(&app.name_any())),
        (SERVICE_LABEL.to_string(), label_value(&service_name)),
        (REDEPLOYMENT_LABEL.to_string(), label_value(&redeployment.name_any())),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let annotations = BTreeMap::from([(GIT_REF_ANNOTATION.to_string(), git_ref.clone())]);

    let app_template = app.spec.build.as_ref().and_then(|b| b.template.as_ref());
    let custom_template_of = build.template.as_ref().or(app_template);
    // The default builder takes its Git credentials from spec.git.secretRef
    // and only prints the repository: it gets it without credentials. A
    // custom builder gets it as written (its credentials are its business).
    let repository = match custom_template_of {
        Some(_) => git.repository.trim().to_string(),
        None => redact_credentials(git.repository.trim()).into_owned(),
    };
    let mut env = vec![
        env_var(ENV_GIT_REPOSITORY, &repository),
        env_var(ENV_GIT_REF, &git_ref),
        env_var(ENV_CONTEXT, &context),
        env_var(ENV_DOCKERFILE, &dockerfile),
    ];
    if is_commit_sha(&git_ref) {
        env.push(env_var(ENV_IMAGE, &format!("{image_repository}:{git_ref}")));
    }
    env.push(env_var(ENV_IMAGE_REPOSITORY, image_repository));

    let mut template = match custom_template_of {
        Some(template) => custom_template(PodTemplateSpec::clone(template), &env)
            .ok_or_else(|| BuildError::TemplateWithoutContainers { service: service_name.clone() })?,
        None => {
            let remote = buildkit_remote(&git.repository).map_err(|reason| BuildError::InvalidRepository {
                service: service_name.clone(),
                repository: redact_credentials(&git.repository).into_owned(),
                reason,
            })?;
            let ssh = is_ssh_remote(&remote);
            let git_secret = git.secret_ref.as_ref().map(|s| s.name.clone()).filter(|n| !n.is_empty());
            if ssh && git_secret.is_none() {
                return Err(BuildError::SshWithoutCredentials {
                    service: service_name,
                    repository: redact_credentials(&git.repository).into_owned(),
                });
            }
            let push_secret = build.push_secret_ref.as_ref().map(|s| s.name.clone()).filter(|n| !n.is_empty());
            default_template(env, builder_image, &remote, git_secret, push_secret)
        }
    };
    let metadata = template.metadata.get_or_insert_with(Default::default);
    metadata.labels.get_or_insert_with(Default::default).extend(labels.clone());
    metadata.annotations.get_or_insert_with(Default::default).extend(annotations.clone());

    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&redeployment.name_any(), &service_name)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.to_string()), ..Default::default() }
}

/// The Service's template with what the operator owns filled in; `None` without containers.
fn custom_template(mut template: PodTemplateSpec, env: &[EnvVar]) -> Option<PodTemplateSpec> {
    let spec = template.spec.as_mut().filter(|spec| !spec.containers.is_empty())?;
    spec.restart_policy = Some("Never".into());
    let first = &mut spec.containers[0];
    first.termination_message_policy.get_or_insert_with(|| "FallbackToLogsOnError".into());
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        // The operator's variables first, so the container's own can refer to them as $(NAME).
        let own = container.env.take().unwrap_or_default();
        let mut merged = env.to_vec();
        merged.extend(own.into_iter().filter(|var| !env.iter().any(|ours| ours.name == var.name)));
        container.env = Some(merged);
    }
    Some(template)
}

fn default_template(
    mut env: Vec<EnvVar>,
    image: &str,
    remote: &str,
    git_secret: Option<String>,
    push_secret: Option<String>,
) -> PodTemplateSpec {
    env.push(env_var(ENV_BUILDKIT_REMOTE, remote));
    if let Some(host) = http_host(remote) {
        env.push(env_var(ENV_GIT_HOST, &host));
    }

    let mut volumes = vec![Volume {
        name: "buildkitd".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts =
        vec![VolumeMount { name: "buildkitd".into(), mount_path: BUILDKIT_STATE_DIR.into(), ..Default::default() }];
    if let Some(secret) = git_secret {
        // The whole Secret: the script uses `username`/`password` or `ssh-privatekey`, whichever it has.
        volumes.push(Volume {
            name: "git-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(SECRET_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "git-credentials".into(),
            mount_path: GIT_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(secret) = push_secret {
        volumes.push(Volume {
            name: "docker-config".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(SECRET_MODE),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "docker-config".into(),
            mount_path: DOCKER_CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(env_var("DOCKER_CONFIG", DOCKER_CONFIG_DIR));
    }

    let container = Container {
        name: BUILD_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec!["sh".into(), "-c".into(), SCRIPT.into()]),
        env: Some(env),
        // buildkitd mounts the build's root filesystems and runs its steps with runc.
        security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta::default()),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![container],
            volumes: Some(volumes),
            // The builder needs no access to the API server.
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
    }
}

/// The ref to build, validated by the one Git ref validator the hook and the
/// planner use ([`GitRef::parse`]); `HEAD` (the default branch) only when
/// neither the Redeployment nor the Service names a ref.
fn ref_to_build(git_ref: Option<&str>) -> Result<String, BuildError> {
    let Some(git_ref) = git_ref else { return Ok(DEFAULT_BRANCH_REF.to_string()) };
    GitRef::parse(git_ref)
        .map(|parsed| parsed.as_str().to_string())
        .map_err(|error| BuildError::InvalidGitRef { git_ref: git_ref.to_string(), reason: error.reason })
}

/// The context directory inside the repository: `.` for the root, else a
/// relative path without `.` components.
fn normalise_context(context: &str) -> Result<String, String> {
    if let Some(c) = context.chars().find(|c| c.is_whitespace() || c.is_control() || "#%?".contains(*c)) {
        return Err(format!("BuildKit reads the context directory from a URL fragment, which cannot carry {c:?}"));
    }
    let parts = relative_parts(context)?;
    Ok(if parts.is_empty() { ".".into() } else { parts.join("/") })
}

/// The Dockerfile's path inside the context.
fn normalise_dockerfile(dockerfile: &str) -> Result<String, String> {
    if dockerfile.chars().any(char::is_control) {
        return Err("it contains control characters".into());
    }
    let parts = relative_parts(dockerfile)?;
    if parts.is_empty() {
        return Err("it names no file: give the Dockerfile's path inside the context, e.g. Dockerfile".into());
    }
    Ok(parts.join("/"))
}

fn relative_parts(path: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = path.trim().split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err("it leaves the repository (or the context) with ..".into());
    }
    Ok(parts)
}

#[derive(Deserialize)]
struct RawOutcome {
    commit: Option<String>,
    image: Option<String>,
    digest: Option<String>,
}

/// Reads what the build container reported: the JSON object
/// `{"commit","image","digest"}` (digest optional, other keys ignored).
pub fn parse_termination_message(message: &str) -> Result<BuildOutcome, BuildError> {
    let invalid = |reason: String| BuildError::InvalidTerminationMessage { reason };
    let message = message.trim();
    if message.is_empty() {
        return Err(invalid("the termination message is empty".into()));
    }
    let raw: RawOutcome = serde_json::from_str(message)
        .map_err(|e| invalid(format!("{:?} is not the expected JSON object ({e})", excerpt(message))))?;
    let commit = raw.commit.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    let commit = commit.ok_or_else(|| invalid("\"commit\" is missing".into()))?;
    if !is_commit_sha(&commit) {
        return Err(invalid(format!("\"commit\" {:?} is not a full 40-hex commit SHA", excerpt(&commit))));
    }
    let image = raw.image.map(|i| i.trim().to_string()).filter(|i| !i.is_empty());
    let image = image.ok_or_else(|| invalid("\"image\" is missing".into()))?;
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("\"image\" {:?} is not an image reference", excerpt(&image))));
    }
    let digest = raw.digest.map(|d| d.trim().to_string()).filter(|d| !d.is_empty());
    if let Some(digest) = &digest {
        crate::image::validate_digest(digest)
            .map_err(|reason| invalid(format!("\"digest\" {:?} is not a digest ({reason})", excerpt(digest))))?;
    }
    Ok(BuildOutcome { commit: commit.to_ascii_lowercase(), image, digest })
}

/// At most 120 characters of `text`, for messages.
fn excerpt(text: &str) -> String {
    let mut out = crate::text::bounded(text, 120).to_owned();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// 10 hex characters of SHA-256.
fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..5])
}

/// Lower-case, `[a-z0-9-]` only, no repeated or outer dashes.
fn dns_label_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Lengths for two parts that must fit `budget` together: the shorter keeps
/// what it has up to half, the longer gets the rest.
fn split_budget(a: usize, b: usize, budget: usize) -> (usize, usize) {
    if a + b <= budget {
        return (a, b);
    }
    let half = budget / 2;
    if a <= half {
        (a, budget - a)
    } else if b <= half {
        (budget - b, b)
    } else {
        (budget - half, half)
    }
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

#[cfg(test)]
mod tests;
