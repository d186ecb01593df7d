//! Schema fragments shared by the CRD types.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A DNS-1123 subdomain: what Kubernetes accepts as an object name.
pub const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A DNS-1123 label: what Kubernetes accepts as a container or key name.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An embedded Kubernetes object (such as a pod template) kept as the user wrote
/// it: the API server validates it where it is used, and its full schema would
/// make the CRD hundreds of kilobytes long.
pub fn embedded_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `conditions` as the Kubernetes API conventions list them: a map keyed by type.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
