//! The `params` of a request as sent to a backend: a JSON tree, or a
//! `tools/call` whose `arguments` stay the client's bytes. vmcp rewrites a
//! call's `name` and never reads its arguments (unless a policy or the audit
//! log asks for them), so they are neither built into a tree nor written out
//! again: the cost of a call no longer grows with the size of its arguments.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::BackendError;

/// A `tools/call`'s params: the `name`, the `arguments`, and whatever else
/// the client sent (`_meta`, ...) in the order it came. Not a map: a call
/// has two or three members, and a map would hash each key.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// Always a string once checked.
    name: Value,
    arguments: Option<Arguments>,
    rest: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
enum Arguments {
    /// As the client sent them (a request read on the fast path).
    Raw(Box<RawValue>),
    /// From a request that was read as a tree anyway (a batch, the 2026-07-28 era).
    Tree(Value),
}

/// Why a `tools/call`'s params were refused.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("tools/call needs a string `name` and an object `arguments`")]
    Shape,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl ToolCall {
    /// From params read as a tree (`None`: none sent).
    pub fn from_tree(params: Option<Value>) -> Result<Self, ParamsError> {
        let members = match params {
            None => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(ParamsError::Shape),
        };
        let mut call = Self::empty();
        for (key, value) in members {
            call.put(key, value);
        }
        call.checked()
    }

    /// From the params' JSON text, the arguments kept as they are.
    pub fn from_raw(params: &RawValue) -> Result<Self, ParamsError> {
        serde_json::from_str::<Self>(params.get())?.checked()
    }

    fn empty() -> Self {
        Self {
            name: Value::Null,
            arguments: None,
            rest: Vec::new(),
        }
    }

    /// Sets a member other than `arguments`; a repeated one: the last counts.
    fn put(&mut self, key: String, value: Value) {
        match key.as_str() {
            "name" => self.name = value,
            "arguments" => self.arguments = Some(Arguments::Tree(value)),
            _ => match self.rest.iter_mut().find(|(k, _)| *k == key) {
                Some((_, old)) => *old = value,
                None => self.rest.push((key, value)),
            },
        }
    }

    /// What `CallToolRequestParams` accepts: a string `name`, an object (or
    /// null, or no) `arguments` and `_meta`.
    pub(crate) fn checked(self) -> Result<Self, ParamsError> {
        let meta_ok = self.get("_meta").is_none_or(|m| m.is_object() || m.is_null());
        let arguments_ok = match &self.arguments {
            None => true,
            Some(Arguments::Tree(v)) => v.is_object() || v.is_null(),
            Some(Arguments::Raw(r)) => matches!(r.get().as_bytes().first(), Some(b'{' | b'n')),
        };
        if self.name.is_string() && meta_ok && arguments_ok {
            Ok(self)
        } else {
            Err(ParamsError::Shape)
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_str()
    }

    /// Renames the tool (the backend's own name for it).
    pub fn set_name(&mut self, name: String) {
        self.name = Value::String(name);
    }

    /// A member other than `arguments`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match key {
            "name" => Some(&self.name),
            _ => self.rest.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    /// A member other than `name` and `arguments`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.rest.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Drops a member other than `name` and `arguments`.
    pub fn remove(&mut self, key: &str) {
        self.rest.retain(|(k, _)| k != key);
    }

    /// The arguments as a tree, for a reader that needs them (policies,
    /// audit); built from the raw text only then. An error: arguments
    /// nested deeper than a tree may be (128 levels), which the raw text
    /// alone does not check.
    pub fn arguments(&self) -> Result<Option<Cow<'_, Value>>, serde_json::Error> {
        match &self.arguments {
            None => Ok(None),
            Some(Arguments::Tree(v)) => Ok(Some(Cow::Borrowed(v))),
            Some(Arguments::Raw(r)) => serde_json::from_str(r.get()).map(|v| Some(Cow::Owned(v))),
        }
    }

    /// The whole params as a tree (for a stdio backend, or the envelope of
    /// a stateless one, which merge into them).
    pub fn to_tree(&self) -> Result<Value, serde_json::Error> {
        let mut tree = Map::new();
        tree.insert("name".to_owned(), self.name.clone());
        tree.extend(self.rest.iter().cloned());
        if let Some(arguments) = self.arguments()? {
            tree.insert("arguments".to_owned(), arguments.into_owned());
        }
        Ok(Value::Object(tree))
    }
}

impl Serialize for ToolCall {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1 + self.rest.len() + usize::from(self.arguments.is_some())))?;
        map.serialize_entry("name", &self.name)?;
        for (key, value) in &self.rest {
            map.serialize_entry(key, value)?;
        }
        match &self.arguments {
            Some(Arguments::Raw(raw)) => map.serialize_entry("arguments", raw)?,
            Some(Arguments::Tree(tree)) => map.serialize_entry("arguments", tree)?,
            None => {}
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ToolCall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = ToolCall;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<ToolCall, A::Error> {
                let mut call = ToolCall::empty();
                // A repeated member: the last one counts, as in a tree.
                while let Some(key) = members.next_key::<Key>()? {
                    match key {
                        Key::Name => call.name = members.next_value()?,
                        Key::Arguments => call.arguments = Some(Arguments::Raw(members.next_value()?)),
                        Key::Other(key) => {
                            let value = members.next_value()?;
                            call.put(key, value);
                        }
                    }
                }
                Ok(call)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// A member's name, read without an allocation for the two the hot path knows.
enum Key {
    Name,
    Arguments,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "name" => Key::Name,
                    "arguments" => Key::Arguments,
                    other => Key::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// A request's params as handed to a backend: borrowed, either shape.
#[derive(Debug, Clone, Copy)]
pub enum Params<'a> {
    Tree(&'a Value),
    ToolCall(&'a ToolCall),
}

impl<'a> Params<'a> {
    /// A top-level member (never `arguments` of a tool call).
    pub fn get(self, key: &str) -> Option<&'a Value> {
        match self {
            Self::Tree(v) => v.get(key),
            Self::ToolCall(c) => c.get(key),
        }
    }

    /// As a tree; an error (-32602) for arguments that cannot be one (see
    /// [`ToolCall::arguments`]).
    pub fn to_tree(self) -> Result<Value, BackendError> {
        match self {
            Self::Tree(v) => Ok(v.clone()),
            Self::ToolCall(c) => c.to_tree().map_err(|e| BackendError::Rpc {
                code: super::codes::INVALID_PARAMS,
                message: format!("invalid params: arguments: {e}"),
                data: None,
            }),
        }
    }
}

impl Serialize for Params<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tree(v) => v.serialize(serializer),
            Self::ToolCall(c) => c.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn raw_arguments_are_sent_as_they_came() {
        let text = r#"{"name":"a_echo","arguments":{"b":[1, 2.50, "\u00e9"],"a":{}},"_meta":{"progressToken":7}}"#;
        let mut call = ToolCall::from_raw(&raw(text)).unwrap();
        assert_eq!(call.name(), Some("a_echo"));
        call.set_name("echo".into());
        let sent = serde_json::to_string(&Params::ToolCall(&call)).unwrap();
        // The arguments byte for byte (spacing, number spelling, escapes).
        assert!(
            sent.contains(r#""arguments":{"b":[1, 2.50, "\u00e9"],"a":{}}"#),
            "{sent}"
        );
        let tree: Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(tree["name"], "echo");
        assert_eq!(tree["_meta"]["progressToken"], 7);
        assert_eq!(tree, call.to_tree().unwrap());
        assert_eq!(call.arguments().unwrap().unwrap()["b"][2], "é");
    }

    #[test]
    fn both_shapes_check_the_same_things() {
        let good = [
            json!({"name": "x"}),
            json!({"name": "x", "arguments": null}),
            json!({"name": "x", "arguments": {"a": 1}, "_meta": {}, "task": {"ttl": 5}}),
        ];
        let bad = [
            json!({}),
            json!({"name": 5}),
            json!({"name": "x", "arguments": [1]}),
            json!({"name": "x", "arguments": "a"}),
            json!({"name": "x", "_meta": 1}),
            json!([1]),
        ];
        for params in good {
            assert!(ToolCall::from_tree(Some(params.clone())).is_ok(), "{params}");
            let call = ToolCall::from_raw(&raw(&params.to_string())).unwrap();
            assert_eq!(call.to_tree().unwrap(), params);
        }
        for params in bad {
            assert!(ToolCall::from_tree(Some(params.clone())).is_err(), "{params}");
            assert!(ToolCall::from_raw(&raw(&params.to_string())).is_err(), "{params}");
        }
        assert!(ToolCall::from_tree(None).is_err(), "no name");
    }

    #[test]
    fn a_repeated_member_counts_once_the_last() {
        let call = ToolCall::from_raw(&raw(
            r#"{"name":"a","arguments":{"x":1},"name":"b","arguments":{"y":2}}"#,
        ))
        .unwrap();
        assert_eq!(call.to_tree().unwrap(), json!({"name": "b", "arguments": {"y": 2}}));
    }

    #[test]
    fn arguments_too_deep_for_a_tree_are_an_error_not_nothing() {
        let deep = format!(
            r#"{{"name":"x","arguments":{{"a":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let call = ToolCall::from_raw(&raw(&deep)).unwrap();
        assert!(call.arguments().is_err(), "a guard must not judge them as absent");
        match Params::ToolCall(&call).to_tree() {
            Err(BackendError::Rpc { code, .. }) => assert_eq!(code, super::super::codes::INVALID_PARAMS),
            other => panic!("{other:?}"),
        }
        // Sent to an HTTP backend as they came.
        assert!(serde_json::to_string(&Params::ToolCall(&call)).unwrap().len() > 400);
    }
}
