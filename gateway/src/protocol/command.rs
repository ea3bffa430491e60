//! Protocol v1: the JSON frames exchanged over `/ws`, error codes and close codes.
//!
//! Every frame is a JSON object whose `type` names it. Commands carry a client `id`; each
//! is answered by exactly one `ok` or `error` whose `ref` is that id.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Subprotocol name a browser offers alongside `bearer.<jwt>`.
pub const SUBPROTOCOL: &str = "chatgw.v1";

/// Prefix of the room name of a user's inbox.
pub const INBOX_PREFIX: &str = "user:";

/// Deepest nesting of arrays/objects accepted in a `send` body (clients parse bodies
/// recursively; a 10k-deep body would crash some of them).
pub const MAX_BODY_DEPTH: usize = 32;

/// Maximum messages one `history` call returns.
pub const MAX_HISTORY_LIMIT: usize = 500;

/// A command sent by a client.
#[derive(Debug)]
pub enum Command {
    /// Subscribe to a room, optionally replaying from a known position.
    Join {
        /// Client id of the command.
        id: CommandId,
        /// Room to join.
        room: String,
        /// Replay messages after this seq (a resume of one room).
        since: Option<u64>,
        /// Epoch `since` belongs to.
        epoch: Option<String>,
    },
    /// Unsubscribe from a room.
    Leave {
        /// Client id of the command.
        id: CommandId,
        /// Room to leave.
        room: String,
    },
    /// Publish to a room, or to a user's inbox (`user:<id>`).
    Send {
        /// Client id of the command.
        id: CommandId,
        /// Target room or inbox.
        room: String,
        /// Client-chosen id for de-duplication of retries.
        msg_id: Option<String>,
        /// Any JSON value.
        body: Box<RawValue>,
        /// Optional W3C trace context to join.
        traceparent: Option<String>,
    },
    /// Read a room's history.
    History {
        /// Client id of the command.
        id: CommandId,
        /// Room (or own inbox).
        room: String,
        /// Only messages with seq > since.
        since: Option<u64>,
        /// Only messages with seq < before.
        before: Option<u64>,
        /// At most this many (default 50, max 500).
        limit: Option<usize>,
    },
    /// List who is in a room.
    Presence {
        /// Client id of the command.
        id: CommandId,
        /// Room to list.
        room: String,
    },
    /// App-level keep-alive for browsers (which cannot send WebSocket pings).
    Ping {
        /// Client id of the command.
        id: CommandId,
    },
    /// Restore an earlier session's rooms and replay what was missed.
    Resume {
        /// Client id of the command.
        id: CommandId,
        /// Token from the earlier session's `welcome`.
        resume_token: String,
        /// Last seen seq per room.
        positions: BTreeMap<String, Position>,
    },
}

/// The wire shape of every command: one flat object. Parsed in one pass (an internally
/// tagged enum would buffer the whole frame and cannot keep `body` raw), then checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCommand {
    #[serde(rename = "type")]
    kind: String,
    id: Option<CommandId>,
    room: Option<String>,
    since: Option<u64>,
    before: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
    msg_id: Option<String>,
    body: Option<Box<RawValue>>,
    traceparent: Option<String>,
    resume_token: Option<String>,
    positions: Option<BTreeMap<String, Position>>,
}

/// Why a text frame is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// `bad_request` or `unknown_command`.
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
    /// The command id, when it could be read.
    pub id: Option<CommandId>,
}

/// Command names of protocol v1.
pub const COMMANDS: [&str; 7] = [
    "join", "leave", "send", "history", "presence", "ping", "resume",
];

impl Command {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let w: WireCommand = serde_json::from_str(text).map_err(|e| CommandError {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
            id: salvage_id(text),
        })?;
        let fail =
            |code, message: String, id: Option<CommandId>| CommandError { code, message, id };
        if !COMMANDS.contains(&w.kind.as_str()) {
            return Err(fail(
                ErrorCode::UnknownCommand,
                format!("unknown command type {:?}", w.kind),
                w.id,
            ));
        }
        let Some(id) = w.id else {
            return Err(fail(
                ErrorCode::BadRequest,
                "missing field `id`".into(),
                None,
            ));
        };
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| {
                fail(
                    ErrorCode::BadRequest,
                    format!("{} needs `{field}`", w.kind),
                    Some(id.clone()),
                )
            })
        };
        Ok(match w.kind.as_str() {
            "join" => Command::Join {
                room: need(w.room, "room")?,
                since: w.since,
                epoch: w.epoch,
                id,
            },
            "leave" => Command::Leave {
                room: need(w.room, "room")?,
                id,
            },
            "send" => {
                let room = need(w.room, "room")?;
                let Some(body) = w.body else {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        "send needs `body`".into(),
                        Some(id),
                    ));
                };
                if nesting_depth(body.get()) > MAX_BODY_DEPTH {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        format!("body nested deeper than {MAX_BODY_DEPTH} levels"),
                        Some(id),
                    ));
                }
                Command::Send {
                    room,
                    msg_id: w.msg_id,
                    body,
                    traceparent: w.traceparent,
                    id,
                }
            }
            "history" => Command::History {
                room: need(w.room, "room")?,
                since: w.since,
                before: w.before,
                limit: w.limit,
                id,
            },
            "presence" => Command::Presence {
                room: need(w.room, "room")?,
                id,
            },
            "ping" => Command::Ping { id },
            _ => Command::Resume {
                resume_token: need(w.resume_token, "resume_token")?,
                positions: w.positions.unwrap_or_default(),
                id,
            },
        })
    }
}

impl Command {
    /// The client id of the command.
    pub fn id(&self) -> &CommandId {
        match self {
            Command::Join { id, .. }
            | Command::Leave { id, .. }
            | Command::Send { id, .. }
            | Command::History { id, .. }
            | Command::Presence { id, .. }
            | Command::Ping { id }
            | Command::Resume { id, .. } => id,
        }
    }
}

/// A command id: clients may use numbers or strings; it is echoed back as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandId {
    /// Numeric id.
    Num(u64),
    /// String id.
    Str(String),
}

/// Last seen position in a room: a bare seq, or seq with the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Position {
    /// Seq with its epoch.
    Full {
        /// Last seq seen.
        seq: u64,
        /// Epoch of that seq.
        epoch: Option<String>,
    },
    /// Seq only; the session's stored epoch is assumed.
    Seq(u64),
}

impl Position {
    /// The seq part.
    pub fn seq(&self) -> u64 {
        match self {
            Position::Full { seq, .. } | Position::Seq(seq) => *seq,
        }
    }
    /// The epoch part, if given.
    pub fn epoch(&self) -> Option<&str> {
        match self {
            Position::Full { epoch, .. } => epoch.as_deref(),
            Position::Seq(_) => None,
        }
    }
}

/// Stable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object with a known shape.
    BadRequest,
    /// `type` names no command.
    UnknownCommand,
    /// Room name empty, too long or with characters outside the allowed set.
    InvalidRoom,
    /// The command needs the room joined first.
    NotJoined,
    /// Not allowed for this user (for example another user's inbox).
    Forbidden,
    /// `limits.roomsPerConnection` reached.
    TooManyRooms,
    /// Over the per-connection command rate.
    RateLimited,
    /// Resume token unknown or expired and no positions given.
    SessionNotFound,
    /// The engine cannot serve the command now; retry later.
    Unavailable,
    /// Unexpected server failure.
    Internal,
}

impl ErrorCode {
    /// Wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// WebSocket close codes the gateway uses.
pub mod close {
    /// Server shutting down with no drain.
    pub const GOING_AWAY: u16 = 1001;
    /// Abuse: repeated errors or rate-limit violations.
    pub const POLICY: u16 = 1008;
    /// A message over `limits.maxFrameBytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// Drain or rebalance: reconnect (elsewhere) and resume.
    pub const RESTART: u16 = 1012;
    /// Slow consumer: the outbound queue overflowed.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Binary frames are not part of protocol v1.
    pub const UNSUPPORTED_DATA: u16 = 1003;
}

/// An `error` reply or push.
#[derive(Debug, Serialize)]
pub struct ErrorFrame<'a> {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Id of the command this answers; absent when the command could not be read.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a CommandId>,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: &'a str,
}

/// Serialises an `error` frame.
pub fn error_frame(reference: Option<&CommandId>, code: ErrorCode, message: &str) -> String {
    to_json(&ErrorFrame {
        kind: "error",
        reference,
        code,
        message,
    })
}

/// Serialises an `ok` frame: `{"type":"ok","ref":id, ...fields}`.
pub fn ok_frame<T: Serialize>(reference: &CommandId, fields: T) -> String {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "ref")]
        reference: &'a CommandId,
        #[serde(flatten)]
        fields: T,
    }
    to_json(&Ok {
        kind: "ok",
        reference,
        fields,
    })
}

/// Serialises a value the gateway built itself (cannot fail for these types).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"serialise: {e}"}}"#)
    })
}

/// The `welcome` push sent once after the upgrade.
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    /// Always `welcome`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Protocol version (1).
    pub protocol: u32,
    /// Id of this session.
    pub session: String,
    /// Authenticated user id.
    pub user: String,
    /// Token to `resume` this session on any node after a disconnect.
    pub resume_token: String,
    /// Server ping period; send an app `ping` at least this often if you cannot see pings.
    pub heartbeat_ms: u64,
    /// Node (pod) that serves this connection.
    pub node: String,
}

/// A message as delivered in `msg` pushes and `history` replies.
#[derive(Debug, Serialize)]
pub struct MsgFrame<'a> {
    /// Always `msg`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Room (or `user:<id>` inbox).
    pub room: &'a str,
    /// Position in the room, strictly increasing within an epoch.
    pub seq: u64,
    /// Identity of the room's history; seqs of different epochs are unrelated.
    pub epoch: &'a str,
    /// Client-chosen (or server-assigned) message id.
    pub msg_id: &'a str,
    /// Sender's user id.
    pub from: &'a str,
    /// Server time of the append, Unix milliseconds.
    pub ts: u64,
    /// The body as sent.
    pub body: &'a RawValue,
    /// W3C trace context of the send, when tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
}

/// The `presence` push: a user's first connection joined or last one left a room.
#[derive(Debug, Serialize)]
pub struct PresenceFrame<'a> {
    /// Always `presence`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Room concerned.
    pub room: &'a str,
    /// User concerned.
    pub user: &'a str,
    /// `join` or `leave`.
    pub event: &'static str,
}

/// Why a room name was refused.
pub fn validate_room(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("room name is empty".into());
    }
    if name.len() > max_len {
        return Err(format!("room name longer than {max_len} bytes"));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'));
    if !ok {
        return Err("room names use only A-Z a-z 0-9 _ - . : @".into());
    }
    Ok(())
}

/// The inbox room of a user.
pub fn inbox_of(user: &str) -> String {
    format!("{INBOX_PREFIX}{user}")
}

/// Deepest array/object nesting in (valid) JSON text, without recursion.
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Tries to recover the `id` of a malformed command so the error can reference it.
pub fn salvage_id(text: &str) -> Option<CommandId> {
    #[derive(Deserialize)]
    struct Probe {
        id: Option<CommandId>,
    }
    serde_json::from_str::<Probe>(text).ok().and_then(|p| p.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let cases = [
            r#"{"type":"join","id":1,"room":"lobby"}"#,
            r#"{"type":"join","id":"a","room":"lobby","since":4,"epoch":"e"}"#,
            r#"{"type":"leave","id":2,"room":"lobby"}"#,
            r#"{"type":"send","id":3,"room":"lobby","msg_id":"m1","body":{"text":"hi"}}"#,
            r#"{"type":"history","id":4,"room":"lobby","before":10,"limit":5}"#,
            r#"{"type":"presence","id":5,"room":"lobby"}"#,
            r#"{"type":"ping","id":6}"#,
            r#"{"type":"resume","id":7,"resume_token":"t","positions":{"lobby":3,"b":{"seq":2,"epoch":"x"}}}"#,
        ];
        for c in cases {
            Command::parse(c).unwrap_or_else(|e| panic!("{c}: {e:?}"));
        }
    }

    #[test]
    fn classifies_unknown_and_bad_commands() {
        let err = Command::parse(r#"{"type":"dance","id":9}"#).expect_err("unknown");
        assert_eq!(err.code, ErrorCode::UnknownCommand);
        assert_eq!(err.id, Some(CommandId::Num(9)));
        let err = Command::parse(r#"{"type":"send","id":9,"room":"r"}"#).expect_err("no body");
        assert_eq!(
            (err.code, err.id),
            (ErrorCode::BadRequest, Some(CommandId::Num(9)))
        );
        let err = Command::parse(r#"{"type":"join","id":"x","room":"r","bogus":1}"#)
            .expect_err("unknown field");
        assert_eq!(
            (err.code, err.id),
            (ErrorCode::BadRequest, Some(CommandId::Str("x".into())))
        );
        let err = Command::parse("[1,2]").expect_err("not an object");
        assert_eq!((err.code, err.id), (ErrorCode::BadRequest, None));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"type":"send","id":1,"room":"r","body":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let err = Command::parse(&deep).map(|_| ()).expect_err("too deep");
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(nesting_depth(r#"{"a":["[[[",{"b":"\\"}]}"#), 3);
    }

    #[test]
    fn room_names() {
        assert!(validate_room("lobby-1.a:b@c_d", 128).is_ok());
        assert!(validate_room("", 128).is_err());
        assert!(validate_room("has space", 128).is_err());
        assert!(validate_room("ünï", 128).is_err());
        assert!(validate_room(&"a".repeat(129), 128).is_err());
    }

    #[test]
    fn ok_and_error_frames_reference_the_command() {
        let id = CommandId::Str("x".into());
        let ok = ok_frame(&id, serde_json::json!({"seq": 3}));
        assert_eq!(ok, r#"{"type":"ok","ref":"x","seq":3}"#);
        let err = error_frame(Some(&id), ErrorCode::RateLimited, "slow down");
        assert_eq!(
            err,
            r#"{"type":"error","ref":"x","code":"rate_limited","message":"slow down"}"#
        );
    }
}
