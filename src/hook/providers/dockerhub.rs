//! Docker Hub push notices: an image-based trigger, recognised by shape
//! (`push_data` and `repository.repo_name`). They carry no Git information
//! and no delivery id.

use serde::Deserialize;

use super::{Definition, by_shape_only, ignored, never_by_headers};
use super::{Json, ParseError, Shape, deserialize, event, first, missing};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent, PushedImage};

const PROVIDER: Provider = Provider::DockerHub;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "Docker Hub",
    metrics_label: "dockerhub",
    signature: None,
    handling: never_by_headers,
    parse: ignored,
    detect: by_shape_only,
};
const PUSH: &str = "push";

pub(super) fn matches(shape: &Shape) -> bool {
    shape.push_data.is_object() && shape.repository_repo_name.is_string()
}

#[derive(Debug, Deserialize)]
struct Payload {
    push_data: Option<PushData>,
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct PushData {
    tag: Option<String>,
    pusher: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    repo_name: Option<String>,
}

pub(super) fn parse(payload: Json<'_>) -> Result<HookEvent, ParseError> {
    let payload: Payload = deserialize(PROVIDER, PUSH, payload)?;
    let repository = first([payload.repository.as_ref().and_then(|r| r.repo_name.as_deref())])
        .ok_or_else(|| missing(PROVIDER, PUSH, "repository.repo_name"))?;
    let push_data = payload.push_data.as_ref();
    Ok(HookEvent {
        sender: first([push_data.and_then(|p| p.pusher.as_deref())]),
        image: Some(PushedImage { repository, tag: first([push_data.and_then(|p| p.tag.as_deref())]) }),
        ..event(PROVIDER, PUSH, EventKind::ImagePush)
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::{EventKind, PushedImage};

    const PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/dockerhub/push.json");

    #[test]
    fn image_push() {
        let event = parse_ok(&headers(&[("Content-Type", "application/json")]), PUSH);
        assert_eq!(event.provider, Provider::DockerHub);
        assert_eq!(event.event, "push");
        assert_eq!(event.kind, EventKind::ImagePush);
        assert_eq!(event.delivery_id, None);
        assert!(event.repository_urls.is_empty());
        assert_eq!((&event.branch, &event.tag, &event.sha), (&None, &None, &None));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("trustedbuilder"));
        assert_eq!(
            event.image,
            Some(PushedImage { repository: "svendowideit/testhook".to_owned(), tag: Some("latest".to_owned()) })
        );
        assert!(!event.has_git_info());
    }
}
