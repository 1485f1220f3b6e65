//! The JSON-RPC envelope of a POSTed message, checked once at the edge so
//! that what is not a JSON-RPC 2.0 message gets `400` with `-32600` (or
//! `-32700` when it is not JSON) and a message that says what is wrong,
//! instead of whatever the layers behind would make of it.
//!
//! One pass reads only the envelope's members, unparsed (`RawValue`); the
//! rest of the message is skipped, never decoded.
//!
//! | member | rule (JSON-RPC 2.0 as MCP uses it) |
//! |---|---|
//! | `jsonrpc` | exactly `"2.0"` |
//! | `method` | a string; with `id` a request, without one a notification |
//! | `id` | a string or an integer (MCP forbids `null`) |
//! | `params` | an object, when present (`null` is taken as absent) |
//! | no `method` | a response to the gateway: `id` and exactly one of `result` and `error` |

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// The JSON-RPC method of a POSTed message (put in the request's extensions by `edge`).
#[derive(Clone, Debug)]
pub struct RpcMethod(pub String);

/// The JSON-RPC id of a POSTed request (put in the request's extensions by `edge`).
#[derive(Clone, Debug)]
pub struct RpcId(pub Value);

/// What a body holds.
pub enum Body<'a> {
    /// One message with a valid envelope.
    Message(Message<'a>),
    /// A JSON array: a batch, each member checked on its own.
    Batch,
    /// Not JSON at all.
    NotJson(String),
    /// JSON, but not a JSON-RPC message.
    Invalid(Invalid),
}

/// A message whose envelope is valid.
pub struct Message<'a> {
    /// `None` for a response.
    pub method: Option<Cow<'a, str>>,
    /// Its `id` (a request or a response; `None` for a notification).
    pub id: Option<&'a RawValue>,
    /// Its `params`, unread.
    pub params: Option<&'a RawValue>,
}

/// Why a message is not JSON-RPC, and the id to answer with (null when it
/// had no usable one).
#[derive(Debug)]
pub struct Invalid {
    pub id: Value,
    pub message: String,
}

/// Reads a POST body's envelope.
pub fn read(body: &[u8]) -> Body<'_> {
    // Checked first: serde reads a struct from an array positionally.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return match serde_json::from_slice::<&RawValue>(body) {
            Ok(_) => Body::Batch,
            Err(error) => Body::NotJson(error.to_string()),
        };
    }
    match serde_json::from_slice::<Members>(body) {
        Ok(members) => match members.check() {
            Ok(message) => Body::Message(message),
            Err(invalid) => Body::Invalid(invalid),
        },
        Err(error) if error.is_data() => Body::Invalid(not_an_object(&error)),
        Err(error) => Body::NotJson(error.to_string()),
    }
}

fn not_an_object(error: &serde_json::Error) -> Invalid {
    Invalid {
        id: Value::Null,
        message: format!("invalid request: a JSON-RPC message is a JSON object ({error})"),
    }
}

/// Checks one member of a batch.
pub fn check(message: &RawValue) -> Result<Message<'_>, Invalid> {
    if !message.get().starts_with('{') {
        return Err(Invalid {
            id: Value::Null,
            message: "invalid request: a JSON-RPC message is a JSON object".into(),
        });
    }
    match serde_json::from_str::<Members>(message.get()) {
        Ok(members) => members.check(),
        Err(error) => Err(not_an_object(&error)),
    }
}

/// The envelope's members, each kept as raw JSON (`null` included).
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// A member that is there, even when it is `null` (plain `Option` would read
/// `null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Members<'a> {
    fn check(self) -> Result<Message<'a>, Invalid> {
        let id = match self.id {
            None => None,
            Some(raw) if is_id(raw) => Some(raw),
            Some(raw) => {
                return Err(self.invalid(format!(
                    "\"id\" must be a string or an integer, not {}",
                    shown(raw)
                )));
            }
        };
        let answer_id = id
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null);
        let invalid = |message: String| Invalid {
            id: answer_id.clone(),
            message: format!("invalid request: {message}"),
        };
        if self.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(invalid("\"jsonrpc\" must be \"2.0\"".into()));
        }
        // `null` is read as absent (some clients write it for no params).
        if let Some(params) = self.params
            && !params.get().starts_with('{')
            && params.get() != "null"
        {
            return Err(invalid(format!(
                "\"params\" must be an object, not {}",
                shown(params)
            )));
        }
        match self.method {
            Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
                Ok(method) if !method.is_empty() => Ok(Message {
                    method: Some(method),
                    id,
                    params: self.params,
                }),
                Ok(_) => Err(invalid("\"method\" is empty".into())),
                Err(_) => Err(invalid(format!(
                    "\"method\" must be a string, not {}",
                    shown(raw)
                ))),
            },
            None if id.is_some() && (self.result.is_some() != self.error.is_some()) => {
                Ok(Message {
                    method: None,
                    id,
                    params: None,
                })
            }
            None => Err(invalid(
                "a message needs \"method\" (a request or notification) or \"id\" with one of \"result\" and \"error\" (a response)".into(),
            )),
        }
    }

    fn invalid(&self, message: String) -> Invalid {
        Invalid {
            id: Value::Null,
            message: format!("invalid request: {message}"),
        }
    }
}

/// A string, or a number without fraction or exponent.
fn is_id(raw: &RawValue) -> bool {
    let text = raw.get();
    text.starts_with('"')
        || (text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && !text.contains(['.', 'e', 'E']))
}

/// The kind of a raw value, for messages (never the value: it may be anything).
fn shown(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> Invalid {
        match read(body.as_bytes()) {
            Body::Invalid(invalid) => invalid,
            Body::Message(_) => panic!("accepted: {body}"),
            Body::Batch => panic!("a batch: {body}"),
            Body::NotJson(e) => panic!("not JSON ({e}): {body}"),
        }
    }

    fn method(body: &str) -> Option<String> {
        match read(body.as_bytes()) {
            Body::Message(message) => message.method.map(Cow::into_owned),
            _ => panic!("refused: {body}"),
        }
    }

    #[test]
    fn valid_messages_pass_and_name_their_method() {
        assert_eq!(
            method(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":1.50}}"#)
                .as_deref(),
            Some("tools/call")
        );
        assert_eq!(
            method(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).as_deref(),
            Some("notifications/initialized")
        );
        // An escaped name is the same method to every decoder behind us.
        assert_eq!(
            method(r#"{"jsonrpc":"2.0","id":"a","method":"initiali\u007ae"}"#).as_deref(),
            Some("initialize")
        );
        assert_eq!(method(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
        assert_eq!(
            method(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#),
            None
        );
    }

    #[test]
    fn what_is_not_json_rpc_is_named_and_answered_with_its_id() {
        let cases = [
            (
                r#"{"jsonrpc":"1.0","method":"ping","id":1}"#,
                "\"jsonrpc\" must be \"2.0\"",
                json_id(1),
            ),
            (
                r#"{"method":"ping","id":"a"}"#,
                "\"jsonrpc\" must be \"2.0\"",
                json_id("a"),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"ping","id":{"a":1}}"#,
                "\"id\" must be a string or an integer, not an object",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"ping","id":null}"#,
                "not null",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"ping","id":1.5}"#,
                "not a number",
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"","id":1}"#,
                "\"method\" is empty",
                json_id(1),
            ),
            (
                r#"{"jsonrpc":"2.0","method":7,"id":1}"#,
                "\"method\" must be a string, not a number",
                json_id(1),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"tools/call","id":1,"params":5}"#,
                "\"params\" must be an object, not a number",
                json_id(1),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                "needs \"method\"",
                json_id(1),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
                "exactly one",
                json_id(1),
            ),
            (
                r#""hello""#,
                "a JSON-RPC message is a JSON object",
                Value::Null,
            ),
            ("17", "a JSON-RPC message is a JSON object", Value::Null),
        ];
        for (body, says, id) in cases {
            let refused = invalid(body);
            assert!(
                refused.message.contains(says)
                    || (says == "exactly one" && refused.message.contains("one of")),
                "{body}: {}",
                refused.message
            );
            assert!(
                refused.message.starts_with("invalid request: "),
                "{}",
                refused.message
            );
            assert_eq!(refused.id, id, "{body}");
        }
    }

    #[test]
    fn arrays_are_batches_and_broken_json_is_a_parse_error() {
        assert!(matches!(read(b" [1, 2]"), Body::Batch));
        assert!(matches!(read(b"[1, "), Body::NotJson(_)));
        assert!(matches!(read(b"{\"jsonrpc\": "), Body::NotJson(_)));
        assert!(matches!(read(b""), Body::NotJson(_)));
    }

    fn json_id(id: impl Into<Value>) -> Value {
        id.into()
    }
}
