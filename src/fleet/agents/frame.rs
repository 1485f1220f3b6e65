//! What travels over an agent's one connection: WebSocket text frames, each
//! one JSON object. Many upstream sessions share the connection, each on a
//! numbered channel the gateway opens. Each frame is an object with one key,
//! the frame's kind:
//!
//! | frame | from | meaning |
//! |---|---|---|
//! | `hello {agent, version, servers}` | agent | first frame: who it is, the servers it offers |
//! | `open {channel, server}` | gateway | start a session with `server` on a new channel |
//! | `message {channel, message}` | both | one JSON-RPC message, carried byte for byte |
//! | `close {channel, reason?}` | both | the session on `channel` ended (or should) |
//!
//! A JSON-RPC message is kept as the raw text it arrived as (`RawValue`):
//! the agent does not decode what its server wrote, so nothing is re-typed
//! on the way. Heartbeats are WebSocket pings, answered by pongs.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The longest frame either side accepts (a JSON-RPC message and its envelope).
pub const MAX_FRAME: usize = 16 << 20;

/// The path of the gateway's agent door.
pub const AGENT_PATH: &str = "/agent/connect";

/// The request header that carries an agent's name.
pub const AGENT_NAME_HEADER: &str = "x-flotilla-agent";

/// The request header listing the replicas an agent holds a connection to
/// already (comma-separated ids); a replica among them answers 409 instead
/// of replacing that connection.
pub const AGENT_HOLDS_HEADER: &str = "x-flotilla-agent-holds";

/// The response header naming the replica that answered (an opaque id).
pub const REPLICA_HEADER: &str = "x-flotilla-replica";

/// The response header saying how many replicas the gateway runs: an agent
/// keeps one connection to each.
pub const REPLICAS_HEADER: &str = "x-flotilla-replicas";

/// One frame of the agent protocol.
#[derive(Debug, Serialize, Deserialize)]
// Externally tagged (`{"message": {...}}`): a tag inside the object would make
// serde buffer the frame, and a buffered `RawValue` cannot be read back.
#[serde(rename_all = "camelCase")]
pub enum Frame {
    Hello {
        agent: String,
        version: String,
        servers: Vec<String>,
    },
    Open {
        channel: u64,
        server: String,
    },
    Message {
        channel: u64,
        message: Box<RawValue>,
    },
    Close {
        channel: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Frame {
    /// The frame as the text that goes on the wire.
    pub fn encode(&self) -> String {
        // A frame of strings, numbers and already-valid JSON always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A frame read off the wire; the error says what was wrong, never with Rust type names.
    pub fn decode(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not an agent frame: {e}"))
    }

    /// A message frame around `message`'s JSON text (`None` if it is not JSON).
    pub fn message(channel: u64, message: String) -> Option<Self> {
        let message = RawValue::from_string(message).ok()?;
        Some(Frame::Message { channel, message })
    }
}

#[cfg(test)]
mod tests {
    use super::Frame;

    #[test]
    fn messages_travel_byte_for_byte() {
        // Numbers keep their spelling, key order and unknown fields stay.
        let message = r#"{"jsonrpc":"2.0","id":7,"result":{"temperature":0.7,"progress":1,"zeta":{},"alpha":[1.0]}}"#;
        let frame = Frame::message(3, message.to_string()).expect("valid JSON");
        let text = frame.encode();
        match Frame::decode(&text).expect("decodes") {
            Frame::Message {
                channel,
                message: raw,
            } => {
                assert_eq!(channel, 3);
                assert_eq!(raw.get(), message);
            }
            other => panic!("wrong frame {other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_named_plainly() {
        let error = Frame::decode(r#"{"launch":{"channel":1}}"#).expect_err("unknown kind");
        assert!(error.starts_with("not an agent frame"), "{error}");
        assert!(!error.contains("Frame"), "no type names: {error}");
        assert!(Frame::message(1, "{not json".into()).is_none());
    }
}
