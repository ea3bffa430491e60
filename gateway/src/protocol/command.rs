//! Commands: what a client sends, parsed into one typed value per command kind.

use super::{Since, MAX_BODY_DEPTH};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A command id: clients may use numbers or strings; it is echoed back as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandId {
    /// Numeric id.
    Num(u64),
    /// String id.
    Str(String),
}

/// A command sent by a client.
#[derive(Debug)]
pub enum Command {
    /// Subscribe to a room, optionally replaying from a known position.
    Join(Join),
    /// Unsubscribe from a room.
    Leave(Leave),
    /// Publish to a room, or to a user's inbox (`user:<id>`).
    Send(Send),
    /// Read a room's history.
    History(History),
    /// List who is in a room.
    Presence(Presence),
    /// App-level keep-alive for browsers (which cannot send WebSocket pings).
    Ping(Ping),
    /// Restore an earlier session's rooms and replay what was missed.
    Resume(Resume),
    /// Replace the connection token (or a room's subscription token) before it expires.
    Refresh(Refresh),
    /// Acknowledge the own inbox up to a seq (this device has its direct messages).
    Ack(Ack),
}

/// `join`.
#[derive(Debug)]
pub struct Join {
    /// Client id of the command.
    pub id: CommandId,
    /// Room to join.
    pub room: String,
    /// Replay messages after this position (wire: `since` and `epoch`).
    pub since: Option<Since>,
    /// A subscription token granting this room (a JWT bound to the user and the room).
    pub token: Option<String>,
}

/// `leave`.
#[derive(Debug)]
pub struct Leave {
    /// Client id of the command.
    pub id: CommandId,
    /// Room to leave.
    pub room: String,
}

/// `send`.
#[derive(Debug)]
pub struct Send {
    /// Client id of the command.
    pub id: CommandId,
    /// Target room or inbox.
    pub room: String,
    /// Client-chosen id for de-duplication of retries.
    pub msg_id: Option<String>,
    /// Any JSON value, kept as the raw text the client sent.
    pub body: Box<RawValue>,
    /// Optional W3C trace context to join.
    pub traceparent: Option<String>,
}

/// `history`.
#[derive(Debug)]
pub struct History {
    /// Client id of the command.
    pub id: CommandId,
    /// Room (or own inbox).
    pub room: String,
    /// Only messages with seq > since.
    pub since: Option<u64>,
    /// Only messages with seq < before.
    pub before: Option<u64>,
    /// At most this many (default 50, max 500).
    pub limit: Option<usize>,
}

/// `presence`.
#[derive(Debug)]
pub struct Presence {
    /// Client id of the command.
    pub id: CommandId,
    /// Room to list.
    pub room: String,
}

/// `ping`.
#[derive(Debug)]
pub struct Ping {
    /// Client id of the command.
    pub id: CommandId,
}

/// `resume`.
#[derive(Debug)]
pub struct Resume {
    /// Client id of the command.
    pub id: CommandId,
    /// Token from the earlier session's `welcome`.
    pub resume_token: String,
    /// Last seen position per room.
    pub positions: BTreeMap<String, Since>,
}

/// `refresh`.
#[derive(Debug)]
pub struct Refresh {
    /// Client id of the command.
    pub id: CommandId,
    /// The new token.
    pub token: String,
    /// A joined room whose subscription token this replaces; none: the connection token.
    pub room: Option<String>,
}

/// `ack`: this device has the own inbox's messages up to `seq`.
#[derive(Debug)]
pub struct Ack {
    /// Client id of the command.
    pub id: CommandId,
    /// Last inbox seq the device has.
    pub seq: u64,
    /// Epoch of that seq, if the client knows it.
    pub epoch: Option<std::sync::Arc<str>>,
}

/// Command kinds of protocol v1, as named by `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Join,
    Leave,
    Send,
    History,
    Presence,
    Ping,
    Resume,
    Refresh,
    Ack,
    #[serde(other)]
    Unknown,
}

/// The wire shape of every command: one flat object, parsed in one pass (an internally
/// tagged enum would buffer the whole frame and cannot keep `body` raw), then turned into
/// the [`Command`] its `kind` names: the match below is exhaustive, so a kind cannot fall
/// through to another command's handling.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCommand {
    #[serde(rename = "type")]
    kind: Kind,
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
    positions: Option<BTreeMap<String, Since>>,
    token: Option<String>,
    seq: Option<u64>,
}

/// Why a text frame is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// `bad_request` or `unknown_command`.
    pub code: super::ErrorCode,
    /// What is wrong.
    pub message: String,
    /// The command id, when it could be read.
    pub id: Option<CommandId>,
}

impl Command {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        use super::ErrorCode::{BadRequest, UnknownCommand};
        let w: WireCommand = serde_json::from_str(text).map_err(|e| CommandError {
            code: BadRequest,
            message: e.to_string(),
            id: salvage_id(text),
        })?;
        let fail =
            |code, message: String, id: Option<CommandId>| CommandError { code, message, id };
        let unknown = |id| {
            fail(
                UnknownCommand,
                format!("unknown command type {:?}", salvage_type(text)),
                id,
            )
        };
        let id = match (w.kind, w.id) {
            (Kind::Unknown, id) => return Err(unknown(id)),
            (_, None) => return Err(fail(BadRequest, "missing field `id`".into(), None)),
            (_, Some(id)) => id,
        };
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| {
                let kind = salvage_type(text);
                fail(
                    BadRequest,
                    format!("{kind} needs `{field}`"),
                    Some(id.clone()),
                )
            })
        };
        Ok(match w.kind {
            Kind::Join => Command::Join(Join {
                room: need(w.room, "room")?,
                since: w.since.map(|seq| Since {
                    seq,
                    epoch: w.epoch.map(Into::into),
                }),
                token: w.token,
                id,
            }),
            Kind::Leave => Command::Leave(Leave {
                room: need(w.room, "room")?,
                id,
            }),
            Kind::Send => {
                let room = need(w.room, "room")?;
                let Some(body) = w.body else {
                    return Err(fail(BadRequest, "send needs `body`".into(), Some(id)));
                };
                if nesting_depth(body.get()) > MAX_BODY_DEPTH {
                    return Err(fail(
                        BadRequest,
                        format!("body nested deeper than {MAX_BODY_DEPTH} levels"),
                        Some(id),
                    ));
                }
                Command::Send(Send {
                    room,
                    msg_id: w.msg_id,
                    body,
                    traceparent: w.traceparent,
                    id,
                })
            }
            Kind::History => Command::History(History {
                room: need(w.room, "room")?,
                since: w.since,
                before: w.before,
                limit: w.limit,
                id,
            }),
            Kind::Presence => Command::Presence(Presence {
                room: need(w.room, "room")?,
                id,
            }),
            Kind::Ping => Command::Ping(Ping { id }),
            Kind::Resume => Command::Resume(Resume {
                resume_token: need(w.resume_token, "resume_token")?,
                positions: w.positions.unwrap_or_default(),
                id,
            }),
            Kind::Refresh => Command::Refresh(Refresh {
                token: need(w.token, "token")?,
                room: w.room,
                id,
            }),
            Kind::Ack => {
                let Some(seq) = w.seq else {
                    return Err(fail(BadRequest, "ack needs `seq`".into(), Some(id)));
                };
                Command::Ack(Ack {
                    seq,
                    epoch: w.epoch.map(Into::into),
                    id,
                })
            }
            Kind::Unknown => return Err(unknown(Some(id))),
        })
    }

    /// The client id of the command.
    pub fn id(&self) -> &CommandId {
        match self {
            Command::Join(c) => &c.id,
            Command::Leave(c) => &c.id,
            Command::Send(c) => &c.id,
            Command::History(c) => &c.id,
            Command::Presence(c) => &c.id,
            Command::Ping(c) => &c.id,
            Command::Resume(c) => &c.id,
            Command::Refresh(c) => &c.id,
            Command::Ack(c) => &c.id,
        }
    }
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

/// The `type` of a frame, for error messages only.
fn salvage_type(text: &str) -> String {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Probe>(text)
        .map(|p| p.kind)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, StreamPosition};

    #[test]
    fn parses_every_command_into_its_own_variant() {
        let cases = [
            (r#"{"type":"join","id":1,"room":"lobby"}"#, "join"),
            (
                r#"{"type":"join","id":"a","room":"lobby","since":4,"epoch":"e"}"#,
                "join",
            ),
            (r#"{"type":"leave","id":2,"room":"lobby"}"#, "leave"),
            (
                r#"{"type":"send","id":3,"room":"lobby","msg_id":"m1","body":{"text":"hi"}}"#,
                "send",
            ),
            (
                r#"{"type":"history","id":4,"room":"lobby","before":10,"limit":5}"#,
                "history",
            ),
            (r#"{"type":"presence","id":5,"room":"lobby"}"#, "presence"),
            (r#"{"type":"ping","id":6}"#, "ping"),
            (
                r#"{"type":"resume","id":7,"resume_token":"t","positions":{"lobby":3,"b":{"seq":2,"epoch":"x"}}}"#,
                "resume",
            ),
            (r#"{"type":"refresh","id":8,"token":"t"}"#, "refresh"),
            (
                r#"{"type":"refresh","id":9,"token":"t","room":"r"}"#,
                "refresh",
            ),
            (r#"{"type":"ack","id":10,"seq":3,"epoch":"x"}"#, "ack"),
        ];
        for (text, kind) in cases {
            let cmd = Command::parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let got = match cmd {
                Command::Join(_) => "join",
                Command::Leave(_) => "leave",
                Command::Send(_) => "send",
                Command::History(_) => "history",
                Command::Presence(_) => "presence",
                Command::Ping(_) => "ping",
                Command::Resume(_) => "resume",
                Command::Refresh(_) => "refresh",
                Command::Ack(_) => "ack",
            };
            assert_eq!(got, kind, "{text}");
        }
    }

    #[test]
    fn fields_land_where_they_belong() {
        let Ok(Command::Join(j)) =
            Command::parse(r#"{"type":"join","id":"a","room":"r","since":4,"epoch":"e"}"#)
        else {
            panic!("join")
        };
        assert_eq!(j.since, Some(StreamPosition::new("e", 4).into()));
        let Ok(Command::Send(s)) =
            Command::parse(r#"{"type":"send","id":3,"room":"r","body":{"a": [1, 2]}}"#)
        else {
            panic!("send")
        };
        assert_eq!(s.body.get(), r#"{"a": [1, 2]}"#, "the body stays raw");
        let Ok(Command::Resume(r)) =
            Command::parse(r#"{"type":"resume","id":7,"resume_token":"t","positions":{"a":3}}"#)
        else {
            panic!("resume")
        };
        assert_eq!(
            r.positions["a"],
            Since {
                seq: 3,
                epoch: None
            }
        );
    }

    #[test]
    fn classifies_unknown_and_bad_commands() {
        let err = Command::parse(r#"{"type":"dance","id":9}"#).expect_err("unknown");
        assert_eq!(err.code, ErrorCode::UnknownCommand);
        assert_eq!(err.id, Some(CommandId::Num(9)));
        assert!(err.message.contains("dance"), "{}", err.message);
        let err = Command::parse(r#"{"type":"send","id":9,"room":"r"}"#).expect_err("no body");
        assert_eq!(
            (err.code, err.id),
            (ErrorCode::BadRequest, Some(CommandId::Num(9)))
        );
        let err = Command::parse(r#"{"type":"leave","id":9}"#).expect_err("no room");
        assert_eq!(err.message, "leave needs `room`");
        let err = Command::parse(r#"{"type":"ack","id":9}"#).expect_err("no seq");
        assert_eq!(err.message, "ack needs `seq`");
        let err = Command::parse(r#"{"type":"join","id":"x","room":"r","bogus":1}"#)
            .expect_err("unknown field");
        assert_eq!(
            (err.code, err.id),
            (ErrorCode::BadRequest, Some(CommandId::Str("x".into())))
        );
        let err = Command::parse("[1,2]").expect_err("not an object");
        assert_eq!((err.code, err.id), (ErrorCode::BadRequest, None));
        let err = Command::parse(r#"{"type":"ping"}"#).expect_err("no id");
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
}
