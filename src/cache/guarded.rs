//! [`Guarded`]: a watched object that failed to decode is kept as its
//! metadata and the error, instead of failing the list or watch it came in.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Resource,
    core::{PartialObjectMeta, error_boundary::InvalidObject},
};
use serde::{Deserialize, Deserializer, de::DeserializeOwned, de::Error as _};
use serde_json::value::RawValue;

/// A valid `K`, or the metadata of an object that is not one and why.
///
/// What kube's `DeserializeGuard` is, decoded differently: that one first
/// decodes every object into a tree of `serde_value` nodes and then decodes a
/// clone of the tree, so each watch event of a Redeployment naming hundreds
/// of Services allocated megabytes in tens of thousands of small blocks
/// (most of the heap growth `make scale` measured during a fan-out) and the
/// first list of 10,000 Services did the same 10,000 times. This keeps the
/// object's JSON text, one block, and decodes `K` from it; only a failed
/// decode reads the text again, for the metadata.
#[derive(Clone, Debug)]
pub struct Guarded<K>(pub Result<K, InvalidObject>);

impl<'de, K: DeserializeOwned + Resource> Deserialize<'de> for Guarded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        match serde_json::from_str::<K>(text.get()) {
            Ok(object) => Ok(Guarded(Ok(object))),
            Err(error) => {
                let PartialObjectMeta { metadata, .. } =
                    serde_json::from_str::<PartialObjectMeta<K>>(text.get()).map_err(D::Error::custom)?;
                Ok(Guarded(Err(InvalidObject { error: error.to_string(), metadata })))
            }
        }
    }
}

impl<K: Resource> Resource for Guarded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|invalid| &invalid.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.as_mut().map_or_else(|invalid| &mut invalid.metadata, K::meta_mut)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::WatchEvent;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_valid_object_decodes_and_an_invalid_one_keeps_its_metadata_and_the_error() {
        let valid: Guarded<ConfigMap> =
            serde_json::from_value(json!({ "metadata": { "name": "a", "namespace": "n" }, "data": { "k": "v" } }))
                .expect("a guard always decodes");
        let map = valid.0.expect("a valid ConfigMap");
        assert_eq!(map.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("v"));

        let line = br#"{"type":"ADDED","object":{"metadata":{"name":"b","namespace":"n"},"data":"not a map"}}"#;
        let event: WatchEvent<Guarded<ConfigMap>> = serde_json::from_slice(line).expect("a guard always decodes");
        let WatchEvent::Added(invalid) = event else { panic!("an ADDED event") };
        assert_eq!((invalid.meta().name.as_deref(), invalid.meta().namespace.as_deref()), (Some("b"), Some("n")));
        let error = invalid.0.expect_err("data is not a map");
        assert!(error.error.contains("invalid type"), "{}", error.error);
    }

    #[test]
    fn an_object_without_readable_metadata_fails_its_decode() {
        let decoded = serde_json::from_value::<Guarded<ConfigMap>>(json!({ "metadata": "none" }));
        assert!(decoded.is_err());
    }
}
