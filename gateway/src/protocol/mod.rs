//! Protocol v1: the JSON frames exchanged over `/ws` (docs/protocol.md).
//!
//! Every frame is a JSON object whose `type` names it. Commands carry a client `id`; each
//! is answered by exactly one `ok` or `error` whose `ref` is that id. This module owns
//! every frame shape: [`command`] parses what clients send, [`reply`] builds the answers,
//! [`push`] the frames the server sends on its own (welcome, msg, presence, goaway).
//! Nothing else in the crate writes a frame by hand.

pub mod command;
mod inbox;
pub mod push;
pub mod reply;

pub use command::{Command, CommandError, CommandId};
pub use inbox::{inbox_of, inbox_owner, is_inbox, INBOX_PREFIX};
pub use reply::{error_frame, ok_frame, ErrorCode, Reply};

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Subprotocol name a browser offers alongside `bearer.<jwt>`.
pub const SUBPROTOCOL: &str = "chatgw.v1";

/// Deepest nesting of arrays/objects accepted in a `send` body (clients parse bodies
/// recursively; a 10k-deep body would crash some of them).
pub const MAX_BODY_DEPTH: usize = 32;

/// Maximum messages one `history` call returns.
pub const MAX_HISTORY_LIMIT: usize = 500;

/// A position in a room's message stream: the last seq of an epoch. The engine stores it
/// in sessions, the writer tracks the last one written per room, the connection keeps the
/// one seen at join, and replies carry it (as `epoch` and `seq` fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Identity of the room's history; seqs of different epochs are unrelated.
    pub epoch: Arc<str>,
    /// Last seq (0 before the first message).
    pub seq: u64,
}

impl StreamPosition {
    /// A position.
    pub fn new(epoch: impl Into<Arc<str>>, seq: u64) -> Self {
        StreamPosition {
            epoch: epoch.into(),
            seq,
        }
    }
}

/// Where a client says it stands in a room (`join` with `since`, `resume` positions): a
/// [`StreamPosition`] whose epoch the client may leave out. On the wire a bare seq
/// (`3`) or `{"seq": 3, "epoch": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SinceWire")]
pub struct Since {
    /// Last seq the client saw.
    pub seq: u64,
    /// Epoch of that seq, if the client knows it.
    pub epoch: Option<Arc<str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SinceWire {
    Full { seq: u64, epoch: Option<String> },
    Seq(u64),
}

impl From<SinceWire> for Since {
    fn from(w: SinceWire) -> Since {
        match w {
            SinceWire::Full { seq, epoch } => Since {
                seq,
                epoch: epoch.map(Into::into),
            },
            SinceWire::Seq(seq) => Since { seq, epoch: None },
        }
    }
}

impl From<StreamPosition> for Since {
    fn from(p: StreamPosition) -> Since {
        Since {
            seq: p.seq,
            epoch: Some(p.epoch),
        }
    }
}

/// Why a room name was refused.
pub fn validate_room(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("room name is empty".into());
    }
    if name.len() > max_len {
        return Err(format!("room name longer than {max_len} bytes"));
    }
    // `%` only in an inbox, as its user id's escapes (protocol/inbox.rs).
    let escapes = is_inbox(name);
    if !name
        .bytes()
        .all(|b| inbox::is_room_byte(b) || (escapes && b == b'%'))
    {
        return Err(
            "room names use only A-Z a-z 0-9 _ - . : @ | + (and %XX escapes in user:<id>)".into(),
        );
    }
    if escapes && name.contains('%') {
        inbox_owner(name)?;
    }
    Ok(())
}

/// Whether a room is internal to the gateway (`$control`): clients cannot name it.
pub fn is_internal(room: &str) -> bool {
    room.starts_with('$')
}

/// Whether `tp` is a W3C `traceparent` (version 00 form: `vv-<32 hex>-<16 hex>-ff`, lowercase
/// hex, version not `ff`, neither id all zeros). Anything else a client sends is dropped
/// before it can reach a pub/sub payload or an upstream header.
pub fn valid_traceparent(tp: &str) -> bool {
    let b = tp.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zeros = |r: std::ops::Range<usize>| b[r].iter().all(|c| *c == b'0');
    b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && &b[0..2] != b"ff"
        && !zeros(3..35)
        && !zeros(36..52)
}

/// Serialises a frame the gateway built itself (cannot fail for these types).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"serialise: {e}"}}"#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(validate_room("lobby-1.a:b@c_d", 128).is_ok());
        assert!(
            validate_room("user:auth0|5f7c8ec7", 128).is_ok(),
            "an Auth0 user's inbox"
        );
        assert!(validate_room("user:ann+chat@example.com", 128).is_ok());
        assert!(validate_room("{tag}", 128).is_err());
        assert!(validate_room("", 128).is_err());
        assert!(validate_room("has space", 128).is_err());
        assert!(validate_room("ünï", 128).is_err());
        assert!(
            validate_room("user:zo%C3%AB%20a", 128).is_ok(),
            "zoë a's inbox"
        );
        assert!(
            validate_room("user:zo%c3%ab", 128).is_err(),
            "not as inbox_of writes it"
        );
        assert!(
            validate_room("lobby%20b", 128).is_err(),
            "% only in an inbox"
        );
        assert!(validate_room(&"a".repeat(129), 128).is_err());
    }

    #[test]
    fn traceparents() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 m 9 x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7 01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn since_is_a_bare_seq_or_a_position() {
        let bare: Since = serde_json::from_str("3").expect("bare");
        assert_eq!(
            bare,
            Since {
                seq: 3,
                epoch: None
            }
        );
        let full: Since = serde_json::from_str(r#"{"seq":2,"epoch":"x"}"#).expect("full");
        assert_eq!(full, StreamPosition::new("x", 2).into());
        assert!(serde_json::from_str::<Since>(r#""3""#).is_err());
    }
}
