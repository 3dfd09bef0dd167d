//! A backend's result on its way back to the client.
//!
//! Most results (a tool's output, a prompt, a resource's contents) are not
//! read by the gateway at all: they are kept as the bytes the backend sent
//! ([`Reply::Raw`]) and written into the client's answer as they are, with no
//! JSON tree built and torn down per call. Results the gateway builds or reads
//! itself (lists, `ping`, a stdio backend's answer) are a [`Reply::Tree`].

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Reply {
    Tree(Value),
    Raw(Box<RawValue>),
}

impl Reply {
    /// The result as a JSON tree (parsing a raw one).
    pub fn into_value(self) -> Value {
        match self {
            Self::Tree(v) => v,
            // A RawValue is valid JSON by construction.
            Self::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
        }
    }
}

impl From<Value> for Reply {
    fn from(v: Value) -> Self {
        Self::Tree(v)
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tree(v) => v.serialize(s),
            Self::Raw(raw) => raw.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_results_are_written_as_received() {
        let raw = RawValue::from_string(r#"{"content":[{"type":"text","text":"hi"}],"z":1,"a":2}"#.into()).unwrap();
        let reply = Reply::Raw(raw);
        // Key order and spelling kept: the backend's bytes, not a re-serialised tree.
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"content":[{"type":"text","text":"hi"}],"z":1,"a":2}"#
        );
        assert_eq!(reply.into_value()["z"], json!(1));
        assert_eq!(
            serde_json::to_string(&Reply::from(json!({"x": 1}))).unwrap(),
            r#"{"x":1}"#
        );
    }
}
