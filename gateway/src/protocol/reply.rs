//! Replies: the one `ok` or `error` every command gets, with `ref` set to its id.

use super::{to_json, CommandId, StreamPosition};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    /// A token in a command (`refresh`, `join`) did not verify.
    InvalidToken,
    /// The sender has too many messages in the recipient's inbox (`dmQuota`).
    QuotaExceeded,
    /// The engine cannot serve the command now; retry later.
    Unavailable,
    /// A `send` whose store call timed out after it may have run: retry with the same
    /// `msg_id` (the retry is de-duplicated, so it is never posted twice).
    UnknownOutcome,
    /// Unexpected server failure.
    Internal,
}

impl ErrorCode {
    /// Every code (a new one goes here too: the docs test reads this list).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::InvalidRoom,
        ErrorCode::NotJoined,
        ErrorCode::Forbidden,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::SessionNotFound,
        ErrorCode::InvalidToken,
        ErrorCode::QuotaExceeded,
        ErrorCode::Unavailable,
        ErrorCode::UnknownOutcome,
        ErrorCode::Internal,
    ];

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
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownOutcome => "unknown_outcome",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the server, not the client, is at fault (such errors do not count towards
    /// the client's error streak: an engine outage must not disconnect good clients).
    pub fn is_server_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::UnknownOutcome | ErrorCode::Internal
        )
    }
}

/// An `error` reply or push.
#[derive(Debug, Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Id of the command this answers; absent when the command could not be read.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a CommandId>,
    code: ErrorCode,
    message: &'a str,
}

/// Serialises an `error` frame (a reply when `reference` is set, else a push).
pub fn error_frame(reference: Option<&CommandId>, code: ErrorCode, message: &str) -> String {
    to_json(&ErrorFrame {
        kind: "error",
        reference,
        code,
        message,
    })
}

/// The fields of an `ok` reply, one variant per command.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `join`.
    Join(JoinOk),
    /// `leave`.
    Leave(LeaveOk),
    /// `send`.
    Send(SendOk),
    /// `history` (its messages are spliced in raw, see [`ok_frame`]).
    History(HistoryOk),
    /// `presence`.
    Presence(PresenceOk),
    /// `ping`.
    Pong(Pong),
    /// `resume`.
    Resume(ResumeOk),
    /// `refresh`.
    Refresh(RefreshOk),
    /// `ack`.
    Ack(AckOk),
}

/// `join` ok: where the room stands now.
#[derive(Debug, Serialize)]
pub struct JoinOk {
    /// Room joined.
    pub room: Arc<str>,
    /// The room's epoch and top seq.
    #[serde(flatten)]
    pub at: StreamPosition,
    /// Present for a join with `since`: whether everything after it was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `leave` ok.
#[derive(Debug, Serialize)]
pub struct LeaveOk {
    /// Room left.
    pub room: Arc<str>,
}

/// `send` ok: the message is stored at this position (or, in an ephemeral namespace,
/// delivered without one).
#[derive(Debug, Serialize)]
pub struct SendOk {
    /// Target room or inbox.
    pub room: Arc<str>,
    /// Seq and epoch the message got (the original ones for a duplicate); none for an
    /// ephemeral message.
    #[serde(flatten)]
    pub at: Option<StreamPosition>,
    /// The message id (client-chosen or assigned).
    pub msg_id: String,
    /// True when the msg id was seen before: nothing new was stored or delivered.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `refresh` ok: the token in force and when it expires.
#[derive(Debug, Serialize)]
pub struct RefreshOk {
    /// The room whose subscription token was replaced; absent for the connection token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<Arc<str>>,
    /// Expiry of the new token, Unix ms.
    pub expires_at: u64,
}

/// `history` ok.
#[derive(Debug, Serialize)]
pub struct HistoryOk {
    /// Room read.
    pub room: String,
    /// Epoch of the room.
    pub epoch: Arc<str>,
    /// Highest seq assigned so far.
    pub top: u64,
    /// Lowest seq still retained.
    pub first: u64,
    /// Messages of the asked range were left out (by `limit` or by the page's byte cap):
    /// page on from the first (backwards) or last (forwards) seq of this page.
    pub more: bool,
    /// The `msg` frames as stored, oldest first; written raw, never re-parsed.
    #[serde(skip)]
    pub messages: Vec<Utf8Bytes>,
}

/// `ack` ok: where this device's inbox position stands now.
#[derive(Debug, Serialize)]
pub struct AckOk {
    /// The own inbox.
    pub room: Arc<str>,
    /// The device's acknowledged position.
    #[serde(flatten)]
    pub at: StreamPosition,
}

/// `presence` ok.
#[derive(Debug, Serialize)]
pub struct PresenceOk {
    /// Room listed.
    pub room: String,
    /// Users present, sorted: at most `limits.presenceUsers` of them.
    pub users: Vec<String>,
    /// How many users are present (more than `users` holds when the room has more than
    /// `limits.presenceUsers`).
    pub count: usize,
}

/// `ping` ok.
#[derive(Debug, Serialize)]
pub struct Pong {
    /// Always true.
    pub pong: bool,
    /// Server time, Unix ms.
    pub ts: u64,
}

/// `resume` ok: the outcome per room (the inbox included).
#[derive(Debug, Serialize)]
pub struct ResumeOk {
    /// Room -> outcome.
    pub rooms: BTreeMap<String, RoomResumed>,
}

/// How one room of a `resume` (or a `join` with `since`) caught up.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RoomResumed {
    /// Subscribed again; `recovered` says whether everything missed was replayed.
    CaughtUp {
        /// Everything after the client's position follows in order.
        recovered: bool,
        /// Where the room stands.
        #[serde(flatten)]
        at: StreamPosition,
    },
    /// The inbox was already replayed from the user's cursor before `resume` arrived.
    TooLate {
        /// Always false.
        recovered: bool,
        /// Why.
        reason: &'static str,
    },
    /// The room could not be restored (the client may `join` it again).
    Refused {
        /// Always false.
        recovered: bool,
        /// The code a `join` would have got.
        error: ErrorCode,
        /// Detail.
        message: String,
    },
}

impl RoomResumed {
    /// The inbox outcome when `resume` came after the inbox was replayed.
    pub fn too_late() -> RoomResumed {
        RoomResumed::TooLate {
            recovered: false,
            reason: "resume came too late",
        }
    }

    /// A room that could not be restored.
    pub fn refused(error: ErrorCode, message: String) -> RoomResumed {
        RoomResumed::Refused {
            recovered: false,
            error,
            message,
        }
    }
}

/// Serialises an `ok` frame: `{"type":"ok","ref":id, ...fields}`. History messages are
/// spliced in as the raw JSON they were stored as.
pub fn ok_frame(reference: &CommandId, reply: &Reply) -> String {
    #[derive(Serialize)]
    struct Ok<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "ref")]
        reference: &'a CommandId,
        #[serde(flatten)]
        fields: &'a Reply,
    }
    let text = to_json(&Ok {
        kind: "ok",
        reference,
        fields: reply,
    });
    match reply {
        Reply::History(h) => with_messages(text, &h.messages),
        _ => text,
    }
}

/// A history page as a JSON object of its own (the server API's answer): the fields of the
/// `history` reply, messages spliced in raw.
pub fn history_json(h: &HistoryOk) -> String {
    with_messages(to_json(h), &h.messages)
}

/// `{...}` -> `{...,"messages":[m1,m2]}`, the stored frames written as they are.
fn with_messages(mut text: String, messages: &[Utf8Bytes]) -> String {
    text.pop();
    let len: usize = messages.iter().map(|m| m.len() + 1).sum();
    text.reserve(len + 16);
    text.push_str(r#","messages":["#);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(m.as_str());
    }
    text.push_str("]}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md's "Error codes" table lists exactly the codes the gateway sends,
    /// spelled as they go on the wire.
    #[test]
    fn every_error_code_is_the_one_documented() {
        let table = crate::doc_tables::section(crate::doc_tables::PROTOCOL, "Error codes");
        let mut documented: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        let mut sent: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for c in ErrorCode::ALL {
            let wire = serde_json::to_value(c).expect("serialises");
            assert_eq!(wire, c.as_str(), "serde and as_str disagree");
        }
        documented.sort_unstable();
        sent.sort_unstable();
        assert_eq!(documented, sent);
    }

    #[test]
    fn ok_and_error_frames_reference_the_command() {
        let id = CommandId::Str("x".into());
        let ok = ok_frame(
            &id,
            &Reply::Join(JoinOk {
                room: "r".into(),
                at: StreamPosition::new("e", 3),
                recovered: None,
            }),
        );
        assert_eq!(
            ok,
            r#"{"type":"ok","ref":"x","room":"r","epoch":"e","seq":3}"#
        );
        let err = error_frame(Some(&id), ErrorCode::RateLimited, "slow down");
        assert_eq!(
            err,
            r#"{"type":"error","ref":"x","code":"rate_limited","message":"slow down"}"#
        );
    }

    #[test]
    fn send_ok_mentions_duplicate_only_when_it_is_one() {
        let reply = |duplicate| {
            ok_frame(
                &CommandId::Num(1),
                &Reply::Send(SendOk {
                    room: "r".into(),
                    at: Some(StreamPosition::new("e", 7)),
                    msg_id: "m".into(),
                    duplicate,
                }),
            )
        };
        assert_eq!(
            reply(false),
            r#"{"type":"ok","ref":1,"room":"r","epoch":"e","seq":7,"msg_id":"m"}"#
        );
        assert!(reply(true).ends_with(r#","duplicate":true}"#));
    }

    #[test]
    fn history_messages_are_spliced_raw() {
        let frames = [r#"{"type":"msg","seq":1}"#, r#"{"type":"msg","seq":2}"#];
        let ok = ok_frame(
            &CommandId::Num(4),
            &Reply::History(HistoryOk {
                room: "r".into(),
                epoch: "e".into(),
                top: 2,
                first: 1,
                more: false,
                messages: frames.iter().map(|f| Utf8Bytes::from(*f)).collect(),
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&ok).expect("valid JSON");
        assert_eq!(v["messages"][1]["seq"], 2);
        assert_eq!(v["top"], 2);
        let empty = ok_frame(
            &CommandId::Num(4),
            &Reply::History(HistoryOk {
                room: "r".into(),
                epoch: "e".into(),
                top: 0,
                first: 1,
                more: false,
                messages: Vec::new(),
            }),
        );
        assert!(
            empty.ends_with(r#""first":1,"more":false,"messages":[]}"#),
            "{empty}"
        );
    }

    #[test]
    fn resume_outcomes() {
        let mut rooms = BTreeMap::new();
        rooms.insert(
            "a".to_string(),
            RoomResumed::CaughtUp {
                recovered: true,
                at: StreamPosition::new("e", 2),
            },
        );
        rooms.insert("user:u".to_string(), RoomResumed::too_late());
        rooms.insert(
            "b".to_string(),
            RoomResumed::refused(ErrorCode::TooManyRooms, "full".into()),
        );
        let v: serde_json::Value = serde_json::from_str(&ok_frame(
            &CommandId::Num(1),
            &Reply::Resume(ResumeOk { rooms }),
        ))
        .expect("json");
        assert_eq!(
            v["rooms"]["a"],
            serde_json::json!({"recovered": true, "epoch": "e", "seq": 2})
        );
        assert_eq!(
            v["rooms"]["user:u"],
            serde_json::json!({"recovered": false, "reason": "resume came too late"})
        );
        assert_eq!(
            v["rooms"]["b"],
            serde_json::json!({"recovered": false, "error": "too_many_rooms", "message": "full"})
        );
    }
}
