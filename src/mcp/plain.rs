//! The fast path's reading of a client's message: a plain request (exactly
//! `jsonrpc`, `id`, `method` and maybe `params`) read field by field, with no
//! tree of its envelope or params. A `tools/call` whose `method` comes before
//! its `params` (as every SDK writes it) becomes a [`ToolCall`] in the same
//! pass: its text is read once, its arguments copied once.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::jsonrpc::{valid_id, Incoming, RequestParams};
use crate::backend::ToolCall;

impl Incoming {
    /// The message in `bytes` when it is a plain, valid request (most are),
    /// read without building a tree of its envelope (with serde_json's
    /// `preserve_order`, which cedar-policy turns on, that tree is an
    /// `IndexMap` with a hashed, allocated key per field). `None`: anything
    /// else (a notification, a response, a batch, an extra or repeated field,
    /// params that are not an object or not a valid `tools/call`, something
    /// invalid), which is read as a tree and [`Incoming::classify`]d, with
    /// the errors that gives.
    pub fn plain_request(bytes: &[u8]) -> Option<Self> {
        let plain: PlainRequest = serde_json::from_slice(bytes).ok()?;
        let valid = plain.jsonrpc == "2.0" && valid_id(&plain.id);
        valid.then(|| Self::Request {
            id: plain.id,
            method: plain.method.into_owned(),
            params: match plain.params {
                Some(Params::Raw(raw)) => RequestParams::Raw(raw.to_owned()),
                Some(Params::Call(call)) => RequestParams::Call(call),
                Some(Params::Null) | None => RequestParams::Tree(None),
            },
        })
    }
}

struct PlainRequest<'a> {
    jsonrpc: Cow<'a, str>,
    id: Value,
    method: Cow<'a, str>,
    params: Option<Params<'a>>,
}

enum Params<'a> {
    /// An object, left as text for the command that takes it.
    Raw(&'a RawValue),
    /// A `tools/call`'s, read and checked.
    Call(ToolCall),
    /// `null`, which is read as none sent.
    Null,
}

const FIELDS: &[&str] = &["jsonrpc", "id", "method", "params"];

impl<'de> Deserialize<'de> for PlainRequest<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map only: a struct would also be read from an array.
        deserializer.deserialize_map(Members)
    }
}

struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = PlainRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Self::Value, A::Error> {
        let (mut jsonrpc, mut id, mut method, mut params) = (None, None, None::<Text<'de>>, None);
        while let Some(field) = members.next_key::<Field>()? {
            match field {
                Field::Jsonrpc if jsonrpc.is_none() => jsonrpc = Some(members.next_value::<Text>()?.0),
                Field::Id if id.is_none() => id = Some(members.next_value::<Value>()?),
                Field::Method if method.is_none() => method = Some(members.next_value()?),
                Field::Params if params.is_none() => {
                    params = Some(if method.as_ref().is_some_and(|m| m.0 == "tools/call") {
                        let call: ToolCall = members.next_value()?;
                        Params::Call(call.checked().map_err(de::Error::custom)?)
                    } else {
                        let raw: &RawValue = members.next_value()?;
                        match raw.get().as_bytes().first() {
                            Some(b'{') => Params::Raw(raw),
                            // `null`: none sent, as classify reads it.
                            Some(b'n') => Params::Null,
                            // MCP's params are an object; the rest is classify's to refuse.
                            _ => return Err(de::Error::custom("params must be an object")),
                        }
                    })
                }
                repeated => return Err(de::Error::duplicate_field(repeated.name())),
            }
        }
        Ok(PlainRequest {
            jsonrpc: jsonrpc.ok_or_else(|| de::Error::missing_field("jsonrpc"))?,
            id: id.ok_or_else(|| de::Error::missing_field("id"))?,
            method: method.ok_or_else(|| de::Error::missing_field("method"))?.0,
            params,
        })
    }
}

/// A member of the envelope; any other is an error (left to classify).
#[derive(Clone, Copy)]
enum Field {
    Jsonrpc,
    Id,
    Method,
    Params,
}

impl Field {
    fn name(self) -> &'static str {
        FIELDS[self as usize]
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC request member")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                match key {
                    "jsonrpc" => Ok(Field::Jsonrpc),
                    "id" => Ok(Field::Id),
                    "method" => Ok(Field::Method),
                    "params" => Ok(Field::Params),
                    other => Err(de::Error::unknown_field(other, FIELDS)),
                }
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// A string, borrowed from the body unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Chars;
        impl<'de> Visitor<'de> for Chars {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> RequestParams {
        match Incoming::plain_request(text.as_bytes()) {
            Some(Incoming::Request { params, .. }) => params,
            other => panic!("not a plain request: {other:?}"),
        }
    }

    #[test]
    fn a_tool_call_is_read_with_its_envelope_when_its_method_comes_first() {
        let first =
            params(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1}}}"#);
        let RequestParams::Call(call) = first else {
            panic!("read as {first:?}");
        };
        assert_eq!(call.name(), Some("x"));
        let later = params(r#"{"params":{"name":"x"},"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert!(matches!(later, RequestParams::Raw(_)));
        let other = params(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"c"}}"#);
        assert!(matches!(other, RequestParams::Raw(raw) if raw.get() == r#"{"cursor":"c"}"#));
    }
}
