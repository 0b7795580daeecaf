//! Typed deserialization of a JSON value whose every error names the full field path where it
//! happened (`split.weights.east`, `authorization.allow[1].clusters[0]`, and for an unknown or
//! missing field the field itself: `split.cluster_heder`).
//!
//! The path is where the deserializer stands when the error leaves a value, and an unknown or
//! missing field's name comes from serde's structured `unknown_field` / `missing_field` calls:
//! nothing is read back out of an error message.
//!
//! Must not: know any document's schema (the target types' own `Deserialize` carries it).

use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_json::Value;

/// Deserializes `value` into `T`; an error names the field path.
pub fn from_value<'de, T: de::Deserialize<'de>>(value: &'de Value) -> Result<T, PathError> {
    T::deserialize(At {
        value,
        path: &Path::Root,
    })
}

/// One step down from a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A key of an object.
    Field(String),
    /// An element of a list.
    Index(usize),
}

/// Why a value could not be deserialized, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    steps: Vec<Step>,
    reason: String,
    /// Whether `steps` already start at the root (the error was placed where it happened).
    placed: bool,
}

impl PathError {
    /// The steps from the root to the offending value or field (empty: the root itself).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The path as written in docs and error messages: `a.b[2].c` (empty for the root).
    pub fn path(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            match step {
                Step::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Puts the error at `path` (once: the innermost value it left is where it happened).
    fn place(mut self, path: &Path<'_>) -> Self {
        if !self.placed {
            let mut steps = path.steps();
            steps.append(&mut self.steps);
            self.steps = steps;
            self.placed = true;
        }
        self
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            p if p.is_empty() => write!(f, "{}", self.reason),
            p => write!(f, "{p}: {}", self.reason),
        }
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        PathError {
            steps: Vec::new(),
            reason: msg.to_string(),
            placed: false,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let reason = if expected.is_empty() {
            "unknown field: this section takes no fields".to_owned()
        } else {
            format!(
                "unknown field (a typo?); expected one of: {}",
                expected.join(", ")
            )
        };
        PathError {
            steps: vec![Step::Field(field.to_owned())],
            reason,
            placed: false,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        PathError {
            steps: vec![Step::Field(field.to_owned())],
            reason: "missing: this field is required".to_owned(),
            placed: false,
        }
    }
}

/// Where the deserializer stands: a chain from the value back to the root, on the stack.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut at = self;
        loop {
            match at {
                Path::Root => break,
                Path::Field(parent, name) => {
                    steps.push(Step::Field((*name).to_owned()));
                    at = parent;
                }
                Path::Index(parent, i) => {
                    steps.push(Step::Index(*i));
                    at = parent;
                }
            }
        }
        steps.reverse();
        steps
    }
}

/// A value and where it is.
struct At<'de, 'p> {
    value: &'de Value,
    path: &'p Path<'p>,
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> At<'de, '_> {
    fn any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::invalid_type(unexpected(self.value), &visitor))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(Elements {
                items: items.iter(),
                index: 0,
                path: self.path,
            }),
            Value::Object(map) => visitor.visit_map(Fields {
                entries: map.iter(),
                value: None,
                path: self.path,
            }),
        }
    }
}

impl<'de> Deserializer<'de> for At<'de, '_> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let path = self.path;
        self.any(visitor).map_err(|e| e.place(path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let path = self.path;
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.place(path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let path = self.path;
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.place(path))
    }

    /// Unit variants only (`default: deny`): the documents have no other kind.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        match self.value {
            Value::String(s) => visitor.visit_enum(BorrowedStrDeserializer::<PathError>::new(s)),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
        .map_err(|e| e.place(self.path))
    }

    /// A struct is written as a mapping only: serde would also take a list of its fields in
    /// order, which nobody writes on purpose and which makes errors point at list indexes.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let path = self.path;
        match self.value {
            Value::Object(_) => self.any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
        .map_err(|e| e.place(path))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct Elements<'de, 'p> {
    items: std::slice::Iter<'de, Value>,
    index: usize,
    path: &'p Path<'p>,
}

impl<'de> SeqAccess<'de> for Elements<'de, '_> {
    type Error = PathError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, PathError> {
        let Some(value) = self.items.next() else {
            return Ok(None);
        };
        let path = Path::Index(self.path, self.index);
        self.index += 1;
        seed.deserialize(At { value, path: &path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Fields<'de, 'p> {
    entries: serde_json::map::Iter<'de>,
    /// The entry whose key was just read.
    value: Option<(&'de str, &'de Value)>,
    path: &'p Path<'p>,
}

impl<'de> MapAccess<'de> for Fields<'de, '_> {
    type Error = PathError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, PathError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, PathError> {
        let (key, value) = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value was asked for before its key"))?;
        let path = Path::Field(self.path, key);
        seed.deserialize(At { value, path: &path })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Item>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        weights: BTreeMap<String, u32>,
        #[serde(default)]
        flag: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        tags: Vec<String>,
        share: Option<f64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        On,
        Off,
    }

    fn err(v: Value) -> PathError {
        from_value::<Doc>(&v).expect_err(&v.to_string())
    }

    #[test]
    fn good_values_deserialize() {
        let v = json!({"name": "a", "inner": {"weights": {"east": 3}, "flag": true},
                       "list": [{"tags": ["x"], "share": 0.5}, {"tags": [], "share": null}], "mode": "off"});
        let doc: Doc = from_value(&v).expect("good");
        assert_eq!(doc.inner.expect("inner").weights["east"], 3);
        assert_eq!(doc.list[0].share, Some(0.5));
        assert_eq!(doc.list[1].share, None);
        assert_eq!(doc.mode, Some(Mode::Off));
    }

    #[test]
    fn errors_name_the_full_path() {
        let cases = [
            // A wrong type at depth 3.
            (
                json!({"name": "a", "inner": {"weights": {"east": "half"}}}),
                "inner.weights.east",
                "invalid type",
            ),
            // An unknown field at depth 2.
            (
                json!({"name": "a", "inner": {"flga": true}}),
                "inner.flga",
                "unknown field",
            ),
            (json!({"name": "a", "colour": 1}), "colour", "unknown field"),
            // A missing required field, at the root and inside a list element.
            (json!({"inner": {}}), "name", "required"),
            (
                json!({"name": "a", "list": [{}]}),
                "list[0].tags",
                "required",
            ),
            // A wrong type inside a list element.
            (
                json!({"name": "a", "list": [{"tags": []}, {"tags": ["x", 7]}]}),
                "list[1].tags[1]",
                "invalid type",
            ),
            (
                json!({"name": "a", "list": [{"tags": [], "share": "most"}]}),
                "list[0].share",
                "invalid type",
            ),
            (
                json!({"name": "a", "inner": {"weights": {"east": 5_000_000_000u64}}}),
                "inner.weights.east",
                "invalid value",
            ),
            (
                json!({"name": "a", "mode": "maybe"}),
                "mode",
                "unknown variant",
            ),
            (json!({"name": "a", "mode": 1}), "mode", "invalid type"),
            (
                json!({"name": "a", "list": {"tags": []}}),
                "list",
                "invalid type",
            ),
            // A struct written as a list of its fields is refused where it stands.
            (
                json!({"name": "a", "list": [["x"]]}),
                "list[0]",
                "invalid type",
            ),
            (json!(["a"]), "", "invalid type"),
            (json!(3), "", "invalid type"),
        ];
        for (v, path, reason) in cases {
            let e = err(v.clone());
            assert_eq!(e.path(), path, "{v}: {e}");
            assert!(e.reason().contains(reason), "{v}: {e}");
        }
    }

    #[test]
    fn unknown_fields_list_what_is_expected() {
        let e = err(json!({"name": "a", "inner": {"flga": true}}));
        assert_eq!(
            e.steps(),
            [Step::Field("inner".into()), Step::Field("flga".into())]
        );
        assert!(e.reason().contains("weights, flag"), "{e}");
        assert_eq!(e.to_string(), format!("inner.flga: {}", e.reason()));
    }
}
