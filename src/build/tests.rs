use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use k8s_openapi::api::core::v1::{Container, LocalObjectReference, PodSpec, PodTemplateSpec, Volume};

use super::*;
use crate::api::{AppSpec, BuildSpec, GitSource, RedeploymentSpec, ServiceSpec, WorkloadTarget};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn app() -> App {
    let mut app = App::new("shop", AppSpec::default());
    app.metadata.namespace = Some("team".into());
    app
}

fn service(git_secret: Option<&str>, push_secret: Option<&str>) -> Service {
    let mut service = Service::new(
        "web",
        ServiceSpec {
            app: "shop".into(),
            target: WorkloadTarget { name: "web".into(), ..Default::default() },
            git: Some(Box::new(GitSource {
                repository: "https://github.com/acme/shop".into(),
                branch: Some("main".into()),
                dockerfile: "docker/Dockerfile".into(),
                context: "./services/web/".into(),
                secret_ref: git_secret.map(|name| LocalObjectReference { name: name.into() }),
                ..Default::default()
            })),
            build: Some(Box::new(BuildSpec {
                image: "registry.example.com/acme/web".into(),
                push_secret_ref: push_secret.map(|name| LocalObjectReference { name: name.into() }),
                template: None,
            })),
            image: None,
        },
    );
    service.metadata.namespace = Some("team".into());
    service
}

fn redeployment() -> Redeployment {
    let mut redeployment =
        Redeployment::new("shop-1a2b3c4d5e6f", RedeploymentSpec { app: "shop".into(), ..Default::default() });
    redeployment.metadata.namespace = Some("team".into());
    redeployment.metadata.uid = Some("rd-uid".into());
    redeployment
}

fn render(service: &Service, git_ref: Option<&str>) -> Result<Job, BuildError> {
    render_job(&BuildRequest {
        app: &app(),
        service,
        redeployment: &redeployment(),
        git_ref,
        builder_image: BUILDKIT_IMAGE,
    })
}

fn pod(job: &Job) -> &PodTemplateSpec {
    &job.spec.as_ref().expect("job spec").template
}

fn pod_spec(job: &Job) -> &PodSpec {
    pod(job).spec.as_ref().expect("pod spec")
}

fn env_of(container: &Container) -> BTreeMap<String, String> {
    container.env.iter().flatten().map(|var| (var.name.clone(), var.value.clone().unwrap_or_default())).collect()
}

fn volume<'a>(job: &'a Job, name: &str) -> Option<&'a Volume> {
    pod_spec(job).volumes.iter().flatten().find(|v| v.name == name)
}

fn mount_path(container: &Container, name: &str) -> Option<String> {
    container.volume_mounts.iter().flatten().find(|m| m.name == name).map(|m| m.mount_path.clone())
}

#[test]
fn default_job_for_a_sha_ref() {
    let job = render(&service(None, None), Some(&SHA.to_uppercase())).expect("job");

    assert_eq!(job.metadata.name, Some(job_name("shop-1a2b3c4d5e6f", "web")));
    assert_eq!(job.metadata.namespace.as_deref(), Some("team"));
    let labels = job.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[APP_LABEL], "shop");
    assert_eq!(labels[SERVICE_LABEL], "web");
    assert_eq!(labels[REDEPLOYMENT_LABEL], "shop-1a2b3c4d5e6f");
    let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
        ("redeploy.dev/v1alpha1", "Redeployment", "shop-1a2b3c4d5e6f", "rd-uid", Some(true))
    );

    let spec = job.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    assert_eq!(spec.active_deadline_seconds, Some(1800));

    let template_meta = pod(&job).metadata.as_ref().expect("pod metadata");
    for (key, value) in labels {
        assert_eq!(template_meta.labels.as_ref().expect("pod labels")[key], *value);
    }
    assert_eq!(template_meta.annotations.as_ref().expect("pod annotations")[GIT_REF_ANNOTATION], SHA);

    let pod = pod_spec(&job);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.security_context, None);
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(BUILDKIT_IMAGE));
    assert!(BUILDKIT_IMAGE.starts_with("moby/buildkit:v0.") && !BUILDKIT_IMAGE.ends_with("-rootless"));
    let command = container.command.as_ref().expect("command");
    assert_eq!(command[..2], ["sh", "-c"]);
    let script = &command[2];
    for needle in [
        "buildctl-daemonless.sh build",
        "--frontend dockerfile.v0",
        "--opt \"context=$context\"",
        "--opt \"filename=$REDEPLOY_DOCKERFILE\"",
        "--output \"type=image,name=$image,push=true\"",
        "--metadata-file",
        "context=\"$remote#$commit\"",
        "--opt \"build-arg:REDEPLOY_GIT_COMMIT=$commit\"",
        "/dev/termination-log",
    ] {
        assert!(script.contains(needle), "script lacks {needle}");
    }
    assert_eq!(container.args, None);
    assert_eq!(container.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
    assert_eq!(container.termination_message_path.as_deref(), Some("/dev/termination-log"));

    let env = env_of(container);
    assert_eq!(env[ENV_GIT_REPOSITORY], "https://github.com/acme/shop");
    assert_eq!(env[ENV_BUILDKIT_REMOTE], "https://github.com/acme/shop.git");
    assert_eq!(env[ENV_GIT_HOST], "github.com");
    assert_eq!(env[ENV_GIT_REF], SHA);
    assert_eq!(env[ENV_CONTEXT], "services/web");
    assert_eq!(env[ENV_DOCKERFILE], "docker/Dockerfile");
    assert_eq!(env[ENV_IMAGE], format!("registry.example.com/acme/web:{SHA}"));
    assert_eq!(env[ENV_IMAGE], image_for(&service(None, None), SHA));
    assert_eq!(env[ENV_IMAGE_REPOSITORY], "registry.example.com/acme/web");
    assert!(!env.contains_key("BUILDKITD_FLAGS"), "root buildkitd keeps its process sandbox");

    // Privileged, as the image's user (root): rootlesskit cannot map user ids on every node.
    let security = container.security_context.as_ref().expect("security context");
    assert_eq!(security.privileged, Some(true));
    assert_eq!((security.run_as_user, security.run_as_group, security.run_as_non_root), (None, None, None));

    assert!(volume(&job, "buildkitd").and_then(|v| v.empty_dir.as_ref()).is_some());
    assert_eq!(mount_path(container, "buildkitd").as_deref(), Some("/var/lib/buildkit"));
    // No secret named, none mounted.
    assert!(volume(&job, "git-credentials").is_none() && volume(&job, "docker-config").is_none());
    assert_eq!(container.volume_mounts.as_ref().map(Vec::len), Some(1));
    assert!(!env.contains_key("DOCKER_CONFIG"));
}

#[test]
fn secrets_are_mounted_when_named() {
    let job = render(&service(Some("git-creds"), Some("registry-push")), Some(SHA)).expect("job");
    let container = &pod_spec(&job).containers[0];

    let git = volume(&job, "git-credentials").and_then(|v| v.secret.as_ref()).expect("git secret volume");
    assert_eq!(git.secret_name.as_deref(), Some("git-creds"));
    assert_eq!(git.default_mode, Some(0o440));
    assert_eq!(mount_path(container, "git-credentials").as_deref(), Some("/run/redeploy/git"));

    let push = volume(&job, "docker-config").and_then(|v| v.secret.as_ref()).expect("push secret volume");
    assert_eq!(push.secret_name.as_deref(), Some("registry-push"));
    let item = &push.items.as_ref().expect("items")[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), (".dockerconfigjson", "config.json"));
    assert_eq!(mount_path(container, "docker-config").as_deref(), Some("/root/.docker"));
    assert_eq!(env_of(container)["DOCKER_CONFIG"], "/root/.docker");
    assert!(
        container.volume_mounts.iter().flatten().filter(|m| m.name != "buildkitd").all(|m| m.read_only == Some(true))
    );
}

#[test]
fn default_job_for_a_branch_ref() {
    let job = render(&service(None, None), Some("release/2.x")).expect("job");
    let env = env_of(&pod_spec(&job).containers[0]);
    assert_eq!(env[ENV_GIT_REF], "release/2.x");
    assert!(!env.contains_key(ENV_IMAGE), "the tag is only known once the build resolved the branch");
    assert_eq!(env[ENV_IMAGE_REPOSITORY], "registry.example.com/acme/web");
    let annotations = pod(&job).metadata.as_ref().and_then(|m| m.annotations.as_ref()).expect("annotations");
    assert_eq!(annotations[GIT_REF_ANNOTATION], "release/2.x");
    assert_eq!(job.metadata.annotations.as_ref().expect("job annotations")[GIT_REF_ANNOTATION], "release/2.x");

    // Without a ref: the Service's branch, else the default branch.
    let job = render(&service(None, None), None).expect("job");
    assert_eq!(env_of(&pod_spec(&job).containers[0])[ENV_GIT_REF], "main");
    let mut no_branch = service(None, None);
    no_branch.spec.git.as_mut().expect("git").branch = None;
    let job = render(&no_branch, None).expect("job");
    assert_eq!(env_of(&pod_spec(&job).containers[0])[ENV_GIT_REF], "HEAD");
}

#[test]
fn custom_template_keeps_the_users_pod_and_gets_the_inputs() {
    let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "metadata": {"labels": {"team": "payments", "redeploy.dev/service": "spoofed"}, "annotations": {"a": "b"}},
        "spec": {
            "restartPolicy": "OnFailure",
            "serviceAccountName": "kaniko",
            "initContainers": [{"name": "clone", "image": "alpine/git"}],
            "containers": [
                {
                    "name": "kaniko",
                    "image": "gcr.io/kaniko-project/executor:v1.23.2",
                    "args": ["--destination=$(REDEPLOY_IMAGE)"],
                    "env": [{"name": "EXTRA", "value": "1"}, {"name": "REDEPLOY_GIT_REF", "value": "user-set"}],
                    "terminationMessagePolicy": "File"
                },
                {"name": "sidecar", "image": "busybox"}
            ],
            "volumes": [{"name": "workspace", "emptyDir": {}}]
        }
    }))
    .expect("template");
    let mut svc = service(Some("git-creds"), Some("registry-push"));
    svc.spec.build.as_mut().expect("build").template = Some(Box::new(template));
    let job = render(&svc, Some(SHA)).expect("job");

    let spec = pod_spec(&job);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.service_account_name.as_deref(), Some("kaniko"));
    assert_eq!(spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["kaniko", "sidecar"]);
    assert_eq!(spec.containers[0].image.as_deref(), Some("gcr.io/kaniko-project/executor:v1.23.2"));
    assert_eq!(spec.containers[0].args.as_ref().expect("args")[0], "--destination=$(REDEPLOY_IMAGE)");
    assert_eq!(spec.containers[0].termination_message_policy.as_deref(), Some("File"), "the user's choice stays");
    assert_eq!(spec.volumes.as_ref().map(|v| v.len()), Some(1), "no operator volumes or secrets");

    let expected = [
        (ENV_GIT_REPOSITORY, "https://github.com/acme/shop".to_string()),
        (ENV_GIT_REF, SHA.to_string()),
        (ENV_CONTEXT, "services/web".to_string()),
        (ENV_DOCKERFILE, "docker/Dockerfile".to_string()),
        (ENV_IMAGE, format!("registry.example.com/acme/web:{SHA}")),
        (ENV_IMAGE_REPOSITORY, "registry.example.com/acme/web".to_string()),
    ];
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let env = env_of(container);
        for (name, value) in &expected {
            assert_eq!(env.get(*name), Some(value), "{name} on {}", container.name);
        }
        assert!(!env.contains_key(ENV_BUILDKIT_REMOTE));
    }
    let kaniko_env = spec.containers[0].env.as_ref().expect("env");
    assert_eq!(kaniko_env.iter().filter(|v| v.name == ENV_GIT_REF).count(), 1);
    assert_eq!(
        kaniko_env.last().map(|v| v.name.as_str()),
        Some("EXTRA"),
        "user variables follow, to use $(REDEPLOY_*)"
    );

    let meta = pod(&job).metadata.as_ref().expect("metadata");
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!((labels["team"].as_str(), labels[SERVICE_LABEL].as_str()), ("payments", "web"));
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!((annotations["a"].as_str(), annotations[GIT_REF_ANNOTATION].as_str()), ("b", SHA));

    // A branch ref: no target tag yet.
    let job = render(&svc, Some("main")).expect("job");
    assert!(!env_of(&pod_spec(&job).containers[0]).contains_key(ENV_IMAGE));

    // An Azure DevOps https URL cannot be a BuildKit context, but a custom builder may clone it.
    svc.spec.git.as_mut().expect("git").repository = "https://dev.azure.com/org/project/_git/repo".into();
    assert!(render(&svc, Some(SHA)).is_ok());

    svc.spec.build.as_mut().expect("build").template = Some(Box::default());
    assert_eq!(render(&svc, Some(SHA)), Err(BuildError::TemplateWithoutContainers { service: "web".into() }));
}

#[test]
fn job_names_are_deterministic_short_valid_and_distinct() {
    // Pinned: a restarted (or upgraded) operator must find the Job it created before under the same name.
    // The suffix is the first 10 hex digits of sha256("shop-1a2b3c4d5e6f\nweb"), as `sha256sum` prints it.
    assert_eq!(job_name("shop-1a2b3c4d5e6f", "web"), "shop-1a2b3c4d5e6f-web-3256de499d");
    let long = "a".repeat(253);
    let names = [
        job_name(&long, "web"),
        job_name("shop-1", &"s".repeat(253)),
        job_name(&long, &format!("{}.x", "b".repeat(200))),
        job_name("x.y", "z"),
        job_name("x-y", "z"),
        job_name("x", "y-z"),
        job_name("shop-1a2b3c4d5e6f", "web"),
        job_name("shop-1a2b3c4d5e6f", "api"),
        job_name("--", "..."),
        job_name("UPPER.case", "Ünïcode"),
    ];
    for name in &names {
        assert!(name.len() <= 63, "{name} is {} long", name.len());
        assert!(is_dns_label(name), "{name} is not a DNS-1123 label");
    }
    let distinct: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:#?}");
    // Both names stay readable when both are long.
    let both = job_name(&format!("rd-{}", "r".repeat(100)), &format!("svc-{}", "s".repeat(100)));
    assert!(both.starts_with("rd-") && both.contains("-svc-"), "{both}");
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[test]
fn label_values_are_valid() {
    assert_eq!(label_value("shop"), "shop");
    let long = format!("{}.example", "a".repeat(80));
    let value = label_value(&long);
    assert!(value.len() <= 63 && is_label_value(&value), "{value}");
    assert_ne!(label_value(&format!("{long}1")), value);
    assert_eq!(label_value(&long), value);
    assert!(is_label_value(&label_value("-odd-")));
}

#[test]
fn termination_messages_are_parsed() {
    let good = format!(r#"{{"commit":"{SHA}","image":"registry.example.com/acme/web:{SHA}","digest":"{DIGEST}"}}"#);
    assert_eq!(
        parse_termination_message(&format!("\n{good}\n")),
        Ok(BuildOutcome {
            commit: SHA.into(),
            image: format!("registry.example.com/acme/web:{SHA}"),
            digest: Some(DIGEST.into()),
        })
    );
    // Digest optional, SHA lower-cased, unknown keys ignored.
    let outcome = parse_termination_message(&format!(
        r#"{{"commit":"{}","image":"r/web:x","builder":"kaniko"}}"#,
        SHA.to_uppercase()
    ))
    .expect("outcome");
    assert_eq!((outcome.commit.as_str(), outcome.digest), (SHA, None));
    assert_eq!(
        parse_termination_message(&format!(r#"{{"commit":"{SHA}","image":"r/web:x","digest":""}}"#))
            .expect("outcome")
            .digest,
        None
    );

    for (message, expected) in [
        (String::new(), "empty"),
        ("   ".to_string(), "empty"),
        ("error: failed to solve: process did not complete".to_string(), "not the expected JSON"),
        ("[1,2]".to_string(), "not the expected JSON"),
        (r#"{"image":"r/web:x"}"#.to_string(), "\"commit\" is missing"),
        (format!(r#"{{"commit":"{SHA}"}}"#), "\"image\" is missing"),
        (format!(r#"{{"commit":"{SHA}","image":""}}"#), "\"image\" is missing"),
        (r#"{"commit":"0123abc","image":"r/web:x"}"#.to_string(), "full 40-hex"),
        (format!(r#"{{"commit":{},"image":"r/web:x"}}"#, 12), "not the expected JSON"),
        (format!(r#"{{"commit":"{SHA}","image":"r/web x"}}"#), "not an image reference"),
        (format!(r#"{{"commit":"{SHA}","image":"r/web:x","digest":"latest"}}"#), "not a digest"),
    ] {
        let error = parse_termination_message(&message).expect_err(&message).to_string();
        assert!(error.contains(expected), "{message:?}: {error}");
        assert!(error.contains("termination message"), "{error}");
    }
}

#[test]
fn credentials_in_the_repository_url_stay_out_of_the_default_job_and_errors() {
    let mut web = service(Some("git"), None);
    web.spec.git.as_mut().expect("git").repository = "https://deploy:s3cr3t@github.com/acme/shop".into();
    let job = render(&web, Some(SHA)).expect("job");
    let rendered = serde_json::to_string(&job).expect("json");
    assert!(!rendered.contains("s3cr3t"), "{rendered}");
    let env = env_of(&pod_spec(&job).containers[0]);
    assert_eq!(env[ENV_GIT_REPOSITORY], "https://***@github.com/acme/shop");
    // A custom builder gets the repository as written: credentials are its business.
    web.spec.build.as_mut().expect("build").template = Some(Box::new(PodTemplateSpec {
        spec: Some(PodSpec { containers: vec![Container::default()], ..Default::default() }),
        ..Default::default()
    }));
    let custom = render(&web, Some(SHA)).expect("job");
    assert_eq!(
        env_of(&pod_spec(&custom).containers[0])[ENV_GIT_REPOSITORY],
        "https://deploy:s3cr3t@github.com/acme/shop"
    );

    let mut azure = service(None, None);
    azure.spec.git.as_mut().expect("git").repository = "https://me:pat123@dev.azure.com/o/p/_git/r".into();
    let error = render(&azure, Some(SHA)).expect_err("Azure https is refused").to_string();
    assert!(!error.contains("pat123") && error.contains("https://***@dev.azure.com/o/p/_git/r"), "{error}");
}

#[test]
fn only_images_of_the_services_repository_are_accepted() {
    let outcome = |image: &str| BuildOutcome { commit: SHA.into(), image: image.into(), digest: None };
    let web = service(None, None);
    for image in [
        format!("registry.example.com/acme/web:{SHA}"),
        format!("registry.example.com/acme/web:{SHA}@{DIGEST}"),
        format!("registry.example.com/acme/web@{DIGEST}"),
    ] {
        assert_eq!(check_outcome(&web, &outcome(&image)), Ok(()), "{image}");
    }
    for image in [
        format!("registry.example.com/acme/other:{SHA}"),
        format!("registry.example.com/acme/web/x:{SHA}"),
        format!("evil.example.com/acme/web:{SHA}"),
        format!("acme/web:{SHA}"),
        "not a reference".to_string(),
    ] {
        let error = check_outcome(&web, &outcome(&image)).expect_err(&image).to_string();
        assert!(error.contains("registry.example.com/acme/web"), "{error}");
    }
    // Docker Hub spellings of one repository are one repository.
    let mut hub = service(None, None);
    hub.spec.build.as_mut().expect("build").image = "docker.io/acme/web".into();
    assert_eq!(check_outcome(&hub, &outcome(&format!("acme/web:{SHA}"))), Ok(()));
    assert!(check_outcome(&hub, &outcome(&format!("acme/other:{SHA}"))).is_err());
}

#[test]
fn repositories_are_normalised_for_buildkit() {
    for (input, expected) in [
        ("https://github.com/acme/shop", "https://github.com/acme/shop.git"),
        ("https://github.com/acme/shop.git", "https://github.com/acme/shop.git"),
        ("https://github.com/acme/shop/", "https://github.com/acme/shop.git"),
        ("  https://user:token@GitHub.com/acme/shop.git ", "https://github.com/acme/shop.git"),
        ("http://git.internal:8080/acme/shop", "http://git.internal:8080/acme/shop.git"),
        ("github.com/acme/shop", "https://github.com/acme/shop.git"),
        ("git.example.com:8443/acme/shop", "https://git.example.com:8443/acme/shop.git"),
        // scp-like: kept, BuildKit reads it as SSH and the path keeps its meaning.
        ("git@github.com:acme/shop.git", "git@github.com:acme/shop.git"),
        ("git@ssh.dev.azure.com:v3/org/project/repo", "git@ssh.dev.azure.com:v3/org/project/repo"),
        ("gitlab.example.com:group/shop.git", "gitlab.example.com:group/shop.git"),
        // A user name BuildKit's scp pattern rejects: rewritten as ssh://.
        ("first.last@git.example.com:acme/shop.git", "ssh://first.last@git.example.com/acme/shop.git"),
        ("ssh://git@github.com/acme/shop.git", "ssh://git@github.com/acme/shop.git"),
        ("ssh://git:secret@bitbucket.example.com:7999/p/shop.git", "ssh://git@bitbucket.example.com:7999/p/shop.git"),
        ("git://git.example.com/acme/shop.git", "git://git.example.com/acme/shop.git"),
    ] {
        assert_eq!(buildkit_remote(input).as_deref(), Ok(expected), "{input}");
    }
    for (input, reason) in [
        ("", "empty"),
        ("https://github.com/acme/shop#main", "#fragment"),
        ("https://github.com", "no repository"),
        ("https://dev.azure.com/org/project/_git/repo", "Azure DevOps"),
        ("file:///srv/git/shop.git", "not file://"),
        ("/srv/git/shop.git", "neither a URL"),
        ("shop", "neither a URL"),
        ("https://github.com/acme/shop?x=1", "?query"),
        ("git@github.com: acme/shop", "blanks"),
    ] {
        let error = buildkit_remote(input).expect_err(input);
        assert!(error.contains(reason), "{input}: {error}");
    }
    assert_eq!(http_host("https://git.example.com:8443/a/b.git").as_deref(), Some("git.example.com:8443"));
}

/// Found by the `buildkit_remote` fuzz target: a scheme-less URL kept its query, which BuildKit
/// (v0.24+) would read as `ref=`/`subdir=`, and which a second pass refused.
#[test]
fn a_schemeless_repository_with_a_query_is_refused() {
    for input in
        ["github.com/acme/shop?ref=main", "git.example.com:8443/acme/shop?", "githcmob.u/o/rs?t.example:7999/proj/rep"]
    {
        let error = buildkit_remote(input).expect_err(input);
        assert!(error.contains("?query"), "{input}: {error}");
    }
}

/// Found by the `buildkit_remote` fuzz target: rewriting `user.name@host:path?x` as `ssh://`
/// turned the path's `?x` into a query, which names another path (and a second pass refused).
#[test]
fn an_scp_path_that_a_url_cannot_keep_is_refused() {
    for input in [
        "first.last@git.example.com:acme/shop?x",
        "first.last@git.example.com:acme/100%25",
        "Ig\u{fffd}it@gim:om:ogiP?t",
    ] {
        let error = buildkit_remote(input).expect_err(input);
        assert!(error.contains("`?` or `%`"), "{input}: {error}");
    }
    // A user name is escaped, never read as the end of the host.
    assert_eq!(
        buildkit_remote("x?@github.com:acme/shop").as_deref(),
        Ok("ssh://x%3F@github.com/acme/shop"),
        "the host stays github.com"
    );
    assert_eq!(buildkit_remote("a@b@github.com:acme/shop").as_deref(), Ok("ssh://a%40b@github.com/acme/shop"));
    assert!(buildkit_remote("a%41@github.com:acme/shop").is_err());
    // A user name BuildKit accepts keeps the scp-like form, whose path is literal.
    assert_eq!(buildkit_remote("git@git.example.com:acme/shop?x").as_deref(), Ok("git@git.example.com:acme/shop?x"));
}

/// A `.git` suffix in another case is the suffix (as `crate::repo` reads it), not part of the name.
#[test]
fn a_git_suffix_in_upper_case_is_not_doubled() {
    for (input, expected) in [
        ("https://github.com/acme/shop.GIT", "https://github.com/acme/shop.git"),
        ("https://github.com/acme/shop.Git/", "https://github.com/acme/shop.git"),
        ("https://github.com/acme/.git", "https://github.com/acme/.git"),
    ] {
        assert_eq!(buildkit_remote(input).as_deref(), Ok(expected), "{input}");
    }
    assert_eq!(http_host("git@github.com:acme/shop.git"), None);
}

#[test]
fn ssh_repositories_need_a_key_and_get_no_http_host() {
    let mut svc = service(None, None);
    svc.spec.git.as_mut().expect("git").repository = "git@github.com:acme/shop.git".into();
    assert_eq!(
        render(&svc, Some(SHA)),
        Err(BuildError::SshWithoutCredentials {
            service: "web".into(),
            repository: "git@github.com:acme/shop.git".into()
        })
    );
    svc.spec.git.as_mut().expect("git").secret_ref = Some(LocalObjectReference { name: "deploy-key".into() });
    let job = render(&svc, Some(SHA)).expect("job");
    let env = env_of(&pod_spec(&job).containers[0]);
    assert_eq!(env[ENV_BUILDKIT_REMOTE], "git@github.com:acme/shop.git");
    assert!(!env.contains_key(ENV_GIT_HOST));
}

#[test]
fn unbuildable_requests_are_refused_with_a_reason() {
    let mut image_based = service(None, None);
    image_based.spec.git = None;
    image_based.spec.build = None;
    assert_eq!(render(&image_based, Some(SHA)), Err(BuildError::NotGitBuilt { service: "web".into() }));

    let mut no_build = service(None, None);
    no_build.spec.build = None;
    assert!(matches!(render(&no_build, Some(SHA)), Err(BuildError::MissingBuild { .. })));

    for (image, reason) in [
        ("registry.example.com/acme/web:latest", "has a tag"),
        ("web:1.0", "has a tag"),
        ("registry.example.com/acme/web@sha256:abc", "digest"),
        ("registry.example.com/Acme/web", "lower-case"),
        ("registry.example.com/acme/web/", "empty path component"),
        ("registry.example.com/acme/-web", "repository path component `-web`"),
        ("registry.example.com/acme/we..b", "repository path component `we..b`"),
        ("", "empty"),
    ] {
        let mut svc = service(None, None);
        svc.spec.build.as_mut().expect("build").image = image.into();
        match render(&svc, Some(SHA)) {
            Err(error @ BuildError::InvalidImage { .. }) => assert!(error.to_string().contains(reason), "{error}"),
            other => panic!("{image}: {other:?}"),
        }
    }
    for image in ["web", "localhost:5000/web", "registry.example.com:5000/a_b/c__d/e--f/g.h", "docker.io/library/nginx"]
    {
        let mut svc = service(None, None);
        svc.spec.build.as_mut().expect("build").image = image.into();
        assert!(render(&svc, Some(SHA)).is_ok(), "{image}");
    }

    for git_ref in ["", "main branch", "-main", "a..b", "feature:x", "v1^{}", "x.lock", "@{-1}"] {
        assert!(
            matches!(render(&service(None, None), Some(git_ref)), Err(BuildError::InvalidGitRef { .. })),
            "{git_ref}"
        );
    }
    for git_ref in ["refs/pull/42/head", "fix#1", "HEAD", &"a".repeat(64)] {
        assert!(
            matches!(render(&service(None, None), Some(git_ref)), Err(BuildError::InvalidGitRef { .. })),
            "{git_ref}"
        );
    }

    let mut escaping = service(None, None);
    escaping.spec.git.as_mut().expect("git").context = "../other".into();
    assert!(matches!(render(&escaping, Some(SHA)), Err(BuildError::InvalidPath { field: "context", .. })));
    let mut no_file = service(None, None);
    no_file.spec.git.as_mut().expect("git").dockerfile = "./".into();
    assert!(matches!(render(&no_file, Some(SHA)), Err(BuildError::InvalidPath { field: "dockerfile", .. })));

    let mut unstored = redeployment();
    unstored.metadata.uid = None;
    let svc = service(None, None);
    let request = BuildRequest {
        app: &app(),
        service: &svc,
        redeployment: &unstored,
        git_ref: Some(SHA),
        builder_image: BUILDKIT_IMAGE,
    };
    assert!(matches!(render_job(&request), Err(BuildError::RedeploymentNotStored { .. })));

    let mut elsewhere = redeployment();
    elsewhere.metadata.namespace = Some("other".into());
    let request = BuildRequest {
        app: &app(),
        service: &svc,
        redeployment: &elsewhere,
        git_ref: Some(SHA),
        builder_image: BUILDKIT_IMAGE,
    };
    assert!(matches!(render_job(&request), Err(BuildError::NamespaceMismatch { kind: "Redeployment", .. })));

    let other_app = App::new("blog", AppSpec::default());
    let mut other_app = other_app;
    other_app.metadata.namespace = Some("team".into());
    let request = BuildRequest {
        app: &other_app,
        service: &svc,
        redeployment: &redeployment(),
        git_ref: Some(SHA),
        builder_image: BUILDKIT_IMAGE,
    };
    assert!(matches!(render_job(&request), Err(BuildError::WrongApp { .. })));
}

#[test]
fn contexts_are_normalised() {
    assert_eq!(normalise_context(".").as_deref(), Ok("."));
    assert_eq!(normalise_context("").as_deref(), Ok("."));
    assert_eq!(normalise_context("/").as_deref(), Ok("."));
    assert_eq!(normalise_context("./a//b/./c/").as_deref(), Ok("a/b/c"));
    assert!(normalise_context("a#b").is_err());
    assert!(normalise_context("a/../..").is_err());
    assert_eq!(normalise_dockerfile("./build/Dockerfile.prod").as_deref(), Ok("build/Dockerfile.prod"));
}

// The default build script, run by `sh` against stub `git` and
// `buildctl-daemonless.sh` with the environment of a rendered Job.

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(ls_remote: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "redeploy-build-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "tmp", "creds"] {
            std::fs::create_dir_all(dir.join(sub)).expect("sandbox dir");
        }
        std::fs::write(dir.join("ls-remote.txt"), ls_remote).expect("fixture");
        stub(
            &dir.join("bin/git"),
            "printf '%s\\n' \"$*\" >> \"$STUB_DIR/git.args\"\n\
             env | grep '^GIT_' | sort >> \"$STUB_DIR/git.env\" || true\n\
             cat \"$STUB_DIR/ls-remote.txt\"\n",
        );
        stub(
            &dir.join("bin/buildctl-daemonless.sh"),
            "for arg in \"$@\"; do printf '%s\\n' \"$arg\"; done > \"$STUB_DIR/buildctl.args\"\n\
             while [ $# -gt 0 ]; do\n\
               if [ \"$1\" = --metadata-file ]; then\n\
                 printf '{\\n  \"containerimage.descriptor\": {\"digest\": \"sha256:0000\"},\\n  \"containerimage.digest\": \"%s\",\\n  \"image.name\": \"x\"\\n}' \"$DIGEST\" > \"$2\"\n\
               fi\n\
               shift\n\
             done\n",
        );
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Runs the Job's script with its container's environment; returns (success, stderr).
    fn run(&self, job: &Job) -> (bool, String) {
        let container = &pod_spec(job).containers[0];
        let script = &container.command.as_ref().expect("command")[2];
        let creds = format!("creds={}", self.path("creds").display());
        let termination = format!("termination={}", self.path("termination-log").display());
        assert!(script.contains("creds=/run/redeploy/git\n") && script.contains("termination=/dev/termination-log\n"));
        let script =
            script.replace("creds=/run/redeploy/git", &creds).replace("termination=/dev/termination-log", &termination);
        let tools = tools_path();
        let shell = tools.split(':').map(|dir| Path::new(dir).join("sh")).find(|sh| sh.exists()).expect("sh");
        let output = Command::new(shell)
            .arg("-c")
            .arg(script)
            .env_clear()
            .envs(env_of(container))
            // BUILD_SCRIPT_TOOLS: a directory of busybox links, say, to run the script as Alpine would.
            .env("PATH", format!("{}:{}", self.path("bin").display(), tools_path()))
            .env("TMPDIR", self.path("tmp"))
            .env("STUB_DIR", &self.dir)
            .env("DIGEST", DIGEST)
            .output()
            .expect("run sh");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the script finds `sh` and its tools: `$BUILD_SCRIPT_TOOLS`, else the system's.
fn tools_path() -> String {
    std::env::var("BUILD_SCRIPT_TOOLS").unwrap_or_else(|_| "/usr/bin:/bin".into())
}

fn stub(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\nset -e\n{body}")).expect("stub");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn script_builds_a_sha_without_resolving_and_reports_the_result() {
    let sandbox = Sandbox::new("");
    let job = render(&service(None, None), Some(SHA)).expect("job");
    let (ok, stderr) = sandbox.run(&job);
    assert!(ok, "{stderr}");
    assert_eq!(sandbox.read("git.args"), "", "a SHA needs no ls-remote");
    let metadata = format!("--metadata-file\n{}", sandbox.path("tmp/redeploy-build/metadata.json").display());
    assert_eq!(
        sandbox.read("buildctl.args"),
        format!(
            "build\n--progress\nplain\n--frontend\ndockerfile.v0\n\
             --opt\ncontext=https://github.com/acme/shop.git#{SHA}:services/web\n\
             --opt\nfilename=docker/Dockerfile\n\
             --opt\nbuild-arg:REDEPLOY_GIT_COMMIT={SHA}\n\
             --output\ntype=image,name=registry.example.com/acme/web:{SHA},push=true\n{metadata}\n"
        )
    );
    let outcome = parse_termination_message(&sandbox.read("termination-log")).expect("outcome");
    assert_eq!(
        outcome,
        BuildOutcome { commit: SHA.into(), image: image_for(&service(None, None), SHA), digest: Some(DIGEST.into()) }
    );
}

#[test]
fn script_resolves_branches_and_annotated_tags_to_the_commit_it_builds() {
    let branch_head = "1111111111111111111111111111111111111111";
    let tag_object = "2222222222222222222222222222222222222222";
    let tagged_commit = "3333333333333333333333333333333333333333";
    let fixture = format!(
        "{branch_head}\trefs/heads/main\n{tag_object}\trefs/tags/v1.2.0\n{tagged_commit}\trefs/tags/v1.2.0^{{}}\n"
    );

    let mut root_context = service(None, None);
    root_context.spec.git.as_mut().expect("git").context = ".".into();
    for (git_ref, commit, patterns) in [
        ("main", branch_head, "refs/heads/main refs/tags/main^{} refs/tags/main"),
        ("v1.2.0", tagged_commit, "refs/heads/v1.2.0 refs/tags/v1.2.0^{} refs/tags/v1.2.0"),
        ("refs/heads/main", branch_head, "refs/heads/main^{} refs/heads/main"),
    ] {
        let sandbox = Sandbox::new(&fixture);
        let job = render(&root_context, Some(git_ref)).expect("job");
        let (ok, stderr) = sandbox.run(&job);
        assert!(ok, "{git_ref}: {stderr}");
        assert_eq!(sandbox.read("git.args"), format!("ls-remote https://github.com/acme/shop.git {patterns}\n"));
        let args = sandbox.read("buildctl.args");
        assert!(
            lines(&args).contains(&format!("context=https://github.com/acme/shop.git#{commit}").as_str()),
            "{args}"
        );
        let outcome = parse_termination_message(&sandbox.read("termination-log")).expect("outcome");
        assert_eq!(
            (outcome.commit.as_str(), outcome.image),
            (commit, format!("registry.example.com/acme/web:{commit}"))
        );
    }

    // An unknown ref fails with a message in the log, and reports nothing.
    let sandbox = Sandbox::new(&fixture);
    let (ok, stderr) = sandbox.run(&render(&root_context, Some("0123abc")).expect("job"));
    assert!(!ok);
    assert!(stderr.contains("0123abc is not a branch or tag of https://github.com/acme/shop"), "{stderr}");
    assert_eq!(sandbox.read("termination-log"), "");
    assert_eq!(sandbox.read("buildctl.args"), "");
}

#[test]
fn script_passes_git_credentials_to_git_and_buildkit() {
    let fixture = format!("{SHA}\trefs/heads/main\n");
    let password = "glpat-".to_string() + &"x".repeat(80); // long enough for base64 to wrap its output
    let header = format!("basic {}", STANDARD.encode(format!("deploy-bot:{password}")));

    let sandbox = Sandbox::new(&fixture);
    std::fs::write(sandbox.path("creds/username"), "deploy-bot\n").expect("username");
    std::fs::write(sandbox.path("creds/password"), format!("{password}\n")).expect("password");
    let job = render(&service(Some("git-creds"), None), Some("main")).expect("job");
    let (ok, stderr) = sandbox.run(&job);
    assert!(ok, "{stderr}");
    let header_file = sandbox.path("tmp/redeploy-build/git-auth-header");
    assert_eq!(std::fs::read_to_string(&header_file).expect("header"), header);
    let args = sandbox.read("buildctl.args");
    let secret = format!("id=GIT_AUTH_HEADER.github.com,src={}", header_file.display());
    assert!(lines(&args).windows(2).any(|w| w == ["--secret", secret.as_str()]), "{args}");
    let git_env = sandbox.read("git.env");
    assert!(lines(&git_env).contains(&format!("GIT_CONFIG_VALUE_0=Authorization: {header}").as_str()), "{git_env}");
    assert!(lines(&git_env).contains(&"GIT_CONFIG_KEY_0=http.extraHeader"), "{git_env}");

    // A token alone is sent as BuildKit's GIT_AUTH_TOKEN would: user x-access-token.
    let sandbox = Sandbox::new(&fixture);
    std::fs::write(sandbox.path("creds/password"), "t0ken").expect("password");
    assert!(sandbox.run(&job).0);
    assert_eq!(
        sandbox.read("tmp/redeploy-build/git-auth-header"),
        format!("basic {}", STANDARD.encode("x-access-token:t0ken"))
    );

    // An SSH key is copied private and forwarded as the `default` SSH agent.
    let mut ssh = service(Some("deploy-key"), None);
    ssh.spec.git.as_mut().expect("git").repository = "git@github.com:acme/shop.git".into();
    let sandbox = Sandbox::new(&fixture);
    std::fs::write(sandbox.path("creds/ssh-privatekey"), "-----BEGIN OPENSSH PRIVATE KEY-----\n").expect("key");
    let (ok, stderr) = sandbox.run(&render(&ssh, Some("main")).expect("job"));
    assert!(ok, "{stderr}");
    let key = sandbox.path("tmp/redeploy-build/ssh-key");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let args = sandbox.read("buildctl.args");
    let forward = format!("default={}", key.display());
    assert!(lines(&args).windows(2).any(|w| w == ["--ssh", forward.as_str()]), "{args}");
    assert!(!args.contains("--secret"), "{args}");
    assert!(lines(&args).contains(&format!("context=git@github.com:acme/shop.git#{SHA}:services/web").as_str()));
    assert!(sandbox.read("git.env").contains(&format!("GIT_SSH_COMMAND=ssh -i '{}'", key.display())));
}

#[test]
fn an_app_template_builds_services_without_their_own() {
    let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "spec": {"containers": [{"name": "kaniko", "image": "gcr.io/kaniko-project/executor:v1.23.2"}]}
    }))
    .expect("template");
    let mut app = app();
    app.spec.build = Some(crate::api::AppBuildSpec { template: Some(Box::new(template)) });
    let plain = service(None, None);
    let redeployment = redeployment();
    let request = BuildRequest {
        app: &app,
        service: &plain,
        redeployment: &redeployment,
        git_ref: Some(SHA),
        builder_image: BUILDKIT_IMAGE,
    };
    let job = render_job(&request).expect("job");
    assert_eq!(pod_spec(&job).containers[0].name, "kaniko", "the App's template is used");
    assert_eq!(env_of(&pod_spec(&job).containers[0]).get(ENV_GIT_REF).map(String::as_str), Some(SHA));

    // A Service's own template wins over the App's.
    let own: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "spec": {"containers": [{"name": "own", "image": "builder:1"}]}
    }))
    .expect("template");
    let mut custom = service(None, None);
    custom.spec.build.as_mut().expect("build").template = Some(Box::new(own));
    let request = BuildRequest {
        app: &app,
        service: &custom,
        redeployment: &redeployment,
        git_ref: Some(SHA),
        builder_image: BUILDKIT_IMAGE,
    };
    assert_eq!(pod_spec(&render_job(&request).expect("job")).containers[0].name, "own");
}

/// Every ref the hook accepts (as `git_ref=`, or as a pushed branch) renders
/// a build Job whose ref the build script resolves only as a commit, a branch
/// or a tag: strings of one or two characters over ASCII and a few others,
/// and the same characters inside the shapes refs take.
#[test]
fn every_ref_the_hook_accepts_renders_a_build_job() {
    use crate::hook::event::{EventKind, HookEvent};
    use crate::plan::{Modifiers, plan};

    let mut app = app();
    app.spec.environment = "production".into();
    let mut pinned = service(None, None);
    pinned.spec.git.as_mut().expect("git").repository = "https://github.com/acme/shop".into();
    let services = [pinned.clone()];
    let alphabet: Vec<char> = (0u8..=0x7f).map(char::from).chain(['é', '\u{a0}', '\u{200b}', '\u{feff}']).collect();
    let mut candidates: Vec<String> = Vec::new();
    for a in &alphabet {
        candidates.push(a.to_string());
        for b in &alphabet {
            let pair: String = [*a, *b].iter().collect();
            candidates.extend([
                pair.clone(),
                format!("refs/heads/{pair}"),
                format!("refs/{pair}/x"),
                format!("v1/{pair}"),
            ]);
        }
    }
    candidates.extend([SHA.to_uppercase(), "a".repeat(64), "HEAD".into(), "refs/pull/1/head".into()]);

    let (mut accepted, mut refused) = (0usize, 0usize);
    for candidate in &candidates {
        let query =
            format!("git_ref={}", url::form_urlencoded::byte_serialize(candidate.as_bytes()).collect::<String>());
        let by_modifier = Modifiers::parse(Some(&query), None)
            .ok()
            .and_then(|modifiers| plan(&HookEvent::default(), &app, &services, None, &modifiers).ok());
        let pushed = HookEvent {
            kind: EventKind::Push,
            branch: Some(candidate.clone()),
            repository_urls: vec!["https://github.com/acme/shop".into()],
            ..HookEvent::default()
        };
        let by_push = plan(&pushed, &app, &services, None, &Modifiers::default()).ok();
        for planned in [by_modifier, by_push].into_iter().flatten().flat_map(|p| p.services) {
            let Some(git_ref) = planned.git_ref.as_deref() else { continue };
            if git_ref == "main" && candidate != "main" {
                continue; // the Service's own branch: this candidate was not planned
            }
            accepted += 1;
            let job = render(&pinned, Some(git_ref)).unwrap_or_else(|e| panic!("{candidate:?} accepted, then: {e}"));
            let rendered = env_of(&pod_spec(&job).containers[0])[ENV_GIT_REF].clone();
            let resolvable = is_commit_sha(&rendered)
                || rendered.starts_with("refs/heads/")
                || rendered.starts_with("refs/tags/")
                || !(rendered.starts_with("refs/") || rendered == "HEAD" || rendered.contains('#'));
            assert!(resolvable, "{candidate:?} renders the ref {rendered:?}");
        }
        if crate::git::GitRef::parse(candidate).is_err() {
            refused += 1;
            assert!(
                matches!(render(&pinned, Some(candidate)), Err(BuildError::InvalidGitRef { .. })),
                "{candidate:?} is refused by the hook's validator, so by the build too"
            );
        }
    }
    assert!(accepted > 20_000 && refused > 20_000, "accepted {accepted}, refused {refused}");
}

#[test]
fn the_default_builder_runs_the_operators_builder_image() {
    let (app, redeployment) = (app(), redeployment());
    let svc = service(None, None);
    let image =
        "registry.local:5000/tools/buildkit@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let request = BuildRequest {
        app: &app,
        service: &svc,
        redeployment: &redeployment,
        git_ref: Some(SHA),
        builder_image: image,
    };
    let job = render_job(&request).expect("job");
    assert_eq!(pod_spec(&job).containers[0].image.as_deref(), Some(image));
}

/// The default image is the BuildKit release the tests build and run on a real node.
#[test]
fn the_default_builder_image_is_the_buildkit_release_the_tests_run() {
    let versions = include_str!("../../hack/versions.env");
    let version = versions
        .lines()
        .find_map(|line| line.trim().strip_prefix("BUILDKIT_VERSION="))
        .expect("hack/versions.env names BUILDKIT_VERSION");
    assert_eq!(BUILDKIT_IMAGE, format!("moby/buildkit:{version}"));
}
