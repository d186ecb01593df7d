//! Reading a payload without keeping it: [`Json::new`] checks that a body is
//! JSON, [`Shape`] is what detection by shape looks at (which top-level keys
//! are there, with which JSON type, and the few short names it compares).
//! Neither builds a tree of the body: a 5 MiB body costs a few bytes of heap.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A body known to be one JSON value; the parsers deserialize their typed
/// structs from it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Json<'a>(&'a [u8]);

impl<'a> Json<'a> {
    /// Checks that `bytes` is one JSON value, nested no deeper than
    /// `serde_json` nests a tree (the same errors as parsing one).
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<AnyValue>(bytes)?;
        Ok(Self(bytes))
    }

    pub(super) fn bytes(self) -> &'a [u8] {
        self.0
    }
}

/// Any JSON value, read to its end and dropped. Unlike [`IgnoredAny`], it
/// goes through `deserialize_any`, where `serde_json` limits the nesting.
struct AnyValue;

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KindVisitor { member: None }).map(|_| AnyValue)
    }
}

/// The JSON type of a value; `Absent` when the key is not there at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Kind {
    #[default]
    Absent,
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub(super) fn is_string(self) -> bool {
        self == Kind::String
    }

    pub(super) fn is_object(self) -> bool {
        self == Kind::Object
    }

    pub(super) fn is_array(self) -> bool {
        self == Kind::Array
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(deserializer.deserialize_any(KindVisitor { member: None })?.0)
    }
}

/// A value's kind and, when it is an object, the kind of its member `member`.
#[derive(Clone, Copy, Debug, Default)]
struct WithMember {
    kind: Kind,
    member: Kind,
}

struct MemberSeed(&'static str);

impl<'de> DeserializeSeed<'de> for MemberSeed {
    type Value = WithMember;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<WithMember, D::Error> {
        let (kind, member) = deserializer.deserialize_any(KindVisitor { member: Some(self.0) })?;
        Ok(WithMember { kind, member })
    }
}

/// Reads any value to its end; returns its kind, and the kind of the member
/// named `member` when the value is an object (the last one, if repeated).
struct KindVisitor {
    member: Option<&'static str>,
}

impl<'de> Visitor<'de> for KindVisitor {
    type Value = (Kind, Kind);

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok((Kind::Bool, Kind::Absent))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok((Kind::Number, Kind::Absent))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok((Kind::Number, Kind::Absent))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok((Kind::Number, Kind::Absent))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok((Kind::String, Kind::Absent))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Kind::Null, Kind::Absent))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Kind::Null, Kind::Absent))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok((Kind::Array, Kind::Absent))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut member = Kind::Absent;
        while let Some(is_member) = map.next_key_seed(KeyIs(self.member))? {
            if is_member {
                member = map.next_value()?;
            } else {
                map.next_value::<AnyValue>()?;
            }
        }
        Ok((Kind::Object, member))
    }
}

/// Reads an object's key: whether it is `name`.
struct KeyIs(Option<&'static str>);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(self.0 == Some(key))
    }
}

/// A string value, kept; any other value is read and dropped (`None`).
#[derive(Debug, Default)]
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Text, E> {
        Ok(Text(Some(value.to_owned())))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text, E> {
        Ok(Text(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text, E> {
        Ok(Text(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text, E> {
        Ok(Text(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text, E> {
        Ok(Text(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
        Ok(Text(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
        KindVisitor { member: None }.visit_seq(seq).map(|_| Text(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
        KindVisitor { member: None }.visit_map(map).map(|_| Text(None))
    }
}

/// What detection by shape looks at in a payload that came without a
/// provider header. A key given twice counts once, with its last value, as
/// in a JSON tree.
#[derive(Debug, Default)]
pub(super) struct Shape {
    /// The payload is a JSON object (else nothing else is set).
    pub object: bool,
    /// `publisherId` and `eventType` (Azure DevOps), when strings.
    pub publisher_id: Option<String>,
    pub event_type: Option<String>,
    /// `push_data` (Docker Hub).
    pub push_data: Kind,
    /// `repository`, and its `repo_name` when it is an object (Docker Hub).
    pub repository: Kind,
    pub repository_repo_name: Kind,
    /// `push.changes` (Bitbucket Cloud).
    pub push_changes: Kind,
    /// `eventKey` when a string, and `changes` (Bitbucket Server).
    pub event_key: Option<String>,
    pub changes: Kind,
    /// `object_kind` when a string, and `project` (GitLab).
    pub object_kind: Option<String>,
    pub project: Kind,
    /// `ref`, `after`, `before`, `branch`, `tag`, `sha` (GitHub-like and generic pushes).
    pub git_ref: Kind,
    pub after: Kind,
    pub before: Kind,
    pub branch: Kind,
    pub tag: Kind,
    pub sha: Kind,
}

impl Shape {
    /// Reads the shape of a JSON payload; it fails only where reading the
    /// payload would.
    pub(super) fn of(payload: Json<'_>) -> Result<Shape, serde_json::Error> {
        serde_json::from_slice(payload.bytes())
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// The top-level keys [`Shape`] reads; any other is skipped.
#[derive(serde::Deserialize)]
#[serde(field_identifier)]
enum Field {
    #[serde(rename = "publisherId")]
    PublisherId,
    #[serde(rename = "eventType")]
    EventType,
    #[serde(rename = "push_data")]
    PushData,
    #[serde(rename = "repository")]
    Repository,
    #[serde(rename = "push")]
    Push,
    #[serde(rename = "eventKey")]
    EventKey,
    #[serde(rename = "changes")]
    Changes,
    #[serde(rename = "object_kind")]
    ObjectKind,
    #[serde(rename = "project")]
    Project,
    #[serde(rename = "ref")]
    Ref,
    #[serde(rename = "after")]
    After,
    #[serde(rename = "before")]
    Before,
    #[serde(rename = "branch")]
    Branch,
    #[serde(rename = "tag")]
    Tag,
    #[serde(rename = "sha")]
    Sha,
    #[serde(other)]
    Other,
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut shape = Shape { object: true, ..Shape::default() };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::PublisherId => shape.publisher_id = map.next_value::<Text>()?.0,
                Field::EventType => shape.event_type = map.next_value::<Text>()?.0,
                Field::PushData => shape.push_data = map.next_value()?,
                Field::Repository => {
                    let repository = map.next_value_seed(MemberSeed("repo_name"))?;
                    (shape.repository, shape.repository_repo_name) = (repository.kind, repository.member);
                }
                Field::Push => shape.push_changes = map.next_value_seed(MemberSeed("changes"))?.member,
                Field::EventKey => shape.event_key = map.next_value::<Text>()?.0,
                Field::Changes => shape.changes = map.next_value()?,
                Field::ObjectKind => shape.object_kind = map.next_value::<Text>()?.0,
                Field::Project => shape.project = map.next_value()?,
                Field::Ref => shape.git_ref = map.next_value()?,
                Field::After => shape.after = map.next_value()?,
                Field::Before => shape.before = map.next_value()?,
                Field::Branch => shape.branch = map.next_value()?,
                Field::Tag => shape.tag = map.next_value()?,
                Field::Sha => shape.sha = map.next_value()?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(shape)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shape, A::Error> {
        KindVisitor { member: None }.visit_seq(seq).map(|_| Shape::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::default())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::default())
    }
}

#[cfg(test)]
mod tests {
    use super::{Json, Kind, Shape};

    fn shape(body: &str) -> Shape {
        let json = Json::new(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        Shape::of(json).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn kinds_names_and_members_are_read() {
        let shape = shape(
            r#"{"publisherId": "tfs", "eventType": 5, "repository": {"repo_name": "a/b", "x": [1, {"y": null}]},
                "push": {"changes": []}, "eventKey": "repo:refs_changed", "changes": {}, "object_kind": null,
                "project": {}, "ref": "refs/heads/main", "after": true, "before": 1.5, "branch": null, "other": {"ref": 1}}"#,
        );
        assert!(shape.object);
        assert_eq!(shape.publisher_id.as_deref(), Some("tfs"));
        assert_eq!((shape.event_type, shape.object_kind), (None, None));
        assert_eq!((shape.repository, shape.repository_repo_name), (Kind::Object, Kind::String));
        assert_eq!(shape.push_changes, Kind::Array);
        assert_eq!(shape.event_key.as_deref(), Some("repo:refs_changed"));
        assert_eq!((shape.changes, shape.project, shape.git_ref), (Kind::Object, Kind::Object, Kind::String));
        assert_eq!((shape.after, shape.before, shape.branch), (Kind::Bool, Kind::Number, Kind::Null));
        assert_eq!((shape.tag, shape.sha, shape.push_data), (Kind::Absent, Kind::Absent, Kind::Absent));
    }

    #[test]
    fn a_repeated_key_counts_with_its_last_value() {
        let shape = shape(r#"{"ref": 1, "ref": "main", "repository": {"repo_name": 1, "repo_name": "a/b"}}"#);
        assert_eq!((shape.git_ref, shape.repository_repo_name), (Kind::String, Kind::String));
    }

    #[test]
    fn a_value_that_is_not_an_object_has_no_keys() {
        for body in ["[1, {\"ref\": \"main\"}]", "42", "null", "\"main\"", "true"] {
            let shape = shape(body);
            assert!(!shape.object, "{body}");
            assert_eq!(shape.git_ref, Kind::Absent, "{body}");
        }
    }

    #[test]
    fn json_is_checked_as_a_tree_would_be() {
        assert!(Json::new(b"{\"a\": [1, 2], \"b\": {\"c\": null}} \n").is_ok());
        for body in [&b"{\"a\": }"[..], b"[1, 2", b"{} {}", b"nul", b"\"\\x\""] {
            let tree = serde_json::from_slice::<serde_json::Value>(body).map(|_| ()).map_err(|e| e.to_string());
            let checked = Json::new(body).map(|_| ()).map_err(|e| e.to_string());
            assert!(checked.is_err(), "{body:?}");
            assert_eq!(checked, tree, "{body:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let tree = serde_json::from_str::<serde_json::Value>(&deep).map(|_| ()).map_err(|e| e.to_string());
        let checked = Json::new(deep.as_bytes()).map(|_| ()).map_err(|e| e.to_string());
        assert!(checked.is_err());
        assert_eq!(checked, tree, "nesting is limited as a tree's");
    }
}
