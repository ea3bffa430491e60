//! Pushes: frames the server sends without a command (welcome, msg, presence, goaway).

use super::to_json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// When the connection token expires, Unix ms (absent without one): `refresh` before
    /// then, or the connection closes with 4401.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at: Option<u64>,
    /// Rooms the backend's connect hook joined the connection to.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub rooms: Vec<String>,
    /// Data from the backend's connect hook, as it sent it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<serde_json::Value>,
}

/// A message as delivered in `msg` pushes and `history` replies. Field order is the wire
/// order: [`msg_frame_around_position`] relies on `seq`, `epoch`, `ts` coming together.
#[derive(Debug, Serialize)]
struct MsgFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    seq: u64,
    epoch: &'a str,
    ts: u64,
    msg_id: &'a str,
    from: &'a str,
    body: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

/// What a `msg` frame says besides its position in the room.
#[derive(Debug, Clone, Copy)]
pub struct MsgContent<'a> {
    /// Room (or `user:<id>` inbox).
    pub room: &'a str,
    /// Client-chosen (or server-assigned) message id.
    pub msg_id: &'a str,
    /// Sender's user id.
    pub from: &'a str,
    /// The body as sent.
    pub body: &'a RawValue,
    /// W3C trace context of the send, when tracing.
    pub traceparent: Option<&'a str>,
}

/// Serialises a `msg` frame.
pub fn msg_frame(msg: MsgContent<'_>, seq: u64, epoch: &str, ts: u64) -> String {
    to_json(&MsgFrame {
        kind: "msg",
        room: msg.room,
        seq,
        epoch,
        ts,
        msg_id: msg.msg_id,
        from: msg.from,
        body: msg.body,
        traceparent: msg.traceparent,
    })
}

/// A `msg` frame split around its position, for an engine that assigns seq, epoch and ts
/// where the message is stored (the Redis publish script): the frame is
/// `head + seq + ",\"epoch\":\"" + epoch + "\",\"ts\":" + ts + tail`.
pub fn msg_frame_around_position(msg: MsgContent<'_>) -> (String, String) {
    // Serialise with a placeholder position and cut around it. The marker holds unescaped
    // quotes, so it cannot occur inside the room string that precedes it; its first
    // occurrence is the real field boundary (the body comes after it).
    const SEQ: u64 = 1_234_567_890_123;
    let full = msg_frame(msg, SEQ, "", SEQ);
    let marker = format!(r#""seq":{SEQ},"epoch":"","ts":{SEQ}"#);
    match full.split_once(&marker) {
        Some((head, tail)) => (format!(r#"{head}"seq":"#), tail.to_string()),
        None => (full, String::new()), // unreachable for frames of this shape
    }
}

/// An ephemeral `msg`: delivered live, never stored, so it has no `seq` or `epoch`.
#[derive(Debug, Serialize)]
struct EphemeralFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    ephemeral: bool,
    ts: u64,
    msg_id: &'a str,
    from: &'a str,
    body: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

/// Serialises an ephemeral `msg` frame.
pub fn ephemeral_msg_frame(msg: MsgContent<'_>, ts: u64) -> String {
    to_json(&EphemeralFrame {
        kind: "msg",
        room: msg.room,
        ephemeral: true,
        ts,
        msg_id: msg.msg_id,
        from: msg.from,
        body: msg.body,
        traceparent: msg.traceparent,
    })
}

/// The `expiring` push: a token expires soon; `refresh` it.
#[derive(Debug, Serialize)]
struct Expiring<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    expires_at: u64,
}

/// Serialises an `expiring` frame: the connection token's (no room) or a room
/// subscription token's, expiring at Unix ms `expires_at`.
pub fn expiring_frame(room: Option<&str>, expires_at: u64) -> String {
    to_json(&Expiring {
        kind: "expiring",
        room,
        expires_at,
    })
}

/// The `unsubscribed` push: the server took the connection out of a room.
#[derive(Debug, Serialize)]
struct Unsubscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    reason: &'a str,
}

/// Serialises an `unsubscribed` frame.
pub fn unsubscribed_frame(room: &str, reason: &str) -> String {
    to_json(&Unsubscribed {
        kind: "unsubscribed",
        room,
        reason,
    })
}

/// The `presence` push: users whose first connection joined or last connection left a
/// room since the previous one (the node batches changes, `limits.presenceBatch`). Each
/// user is in one list. Also the payload a Redis node announces a single change with
/// (a list absent from it is empty).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresencePush {
    /// Always `presence`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The room.
    pub room: String,
    /// Users who joined.
    #[serde(default)]
    pub joined: Vec<String>,
    /// Users who left.
    #[serde(default)]
    pub left: Vec<String>,
}

impl PresencePush {
    /// The push for `room`.
    pub fn new(room: &str, joined: Vec<String>, left: Vec<String>) -> Self {
        PresencePush {
            kind: "presence".into(),
            room: room.into(),
            joined,
            left,
        }
    }

    /// The push of one user's change (`join` true or false).
    pub fn change(room: &str, user: &str, join: bool) -> Self {
        let one = vec![user.to_string()];
        match join {
            true => Self::new(room, one, Vec::new()),
            false => Self::new(room, Vec::new(), one),
        }
    }

    /// Serialises the frame.
    pub fn frame(&self) -> String {
        to_json(self)
    }

    /// Parses a `presence` frame; None unless it is one.
    pub fn parse(frame: &str) -> Option<Self> {
        serde_json::from_str::<Self>(frame)
            .ok()
            .filter(|p| p.kind == "presence")
    }
}

/// The `goaway` push before a drain or rebalance close: reconnect (after a pause) and
/// resume.
#[derive(Debug, Serialize)]
struct Goaway<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: &'a str,
    reconnect_after_ms: u64,
}

/// Serialises a `goaway` frame.
pub fn goaway_frame(reason: &str, reconnect_after_ms: u64) -> String {
    to_json(&Goaway {
        kind: "goaway",
        reason,
        reconnect_after_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(body: &RawValue) -> MsgContent<'_> {
        MsgContent {
            room: "1234567890123",
            msg_id: "m1",
            from: "alice",
            body,
            traceparent: Some("00-abc-def-01"),
        }
    }

    #[test]
    fn split_frame_reassembles_to_the_full_frame() {
        // A body that contains the placeholder digits must not confuse the cut.
        let body = serde_json::from_str::<&RawValue>(
            r#"{"n":1234567890123,"x":{"seq":1234567890123,"epoch":"","ts":1234567890123}}"#,
        )
        .expect("raw");
        let (head, tail) = msg_frame_around_position(content(body));
        let rebuilt = format!(r#"{head}42,"epoch":"ep","ts":99{tail}"#);
        assert_eq!(rebuilt, msg_frame(content(body), 42, "ep", 99));
        let v: serde_json::Value = serde_json::from_str(&rebuilt).expect("json");
        assert_eq!(v["body"]["n"], 1234567890123u64);
        assert_eq!(v["room"], "1234567890123");
    }

    #[test]
    fn goaway_and_presence_shapes() {
        assert_eq!(
            goaway_frame("draining", 5),
            r#"{"type":"goaway","reason":"draining","reconnect_after_ms":5}"#
        );
        assert_eq!(
            PresencePush::change("r", "u", false).frame(),
            r#"{"type":"presence","room":"r","joined":[],"left":["u"]}"#
        );
        assert_eq!(
            PresencePush::new("r", vec!["a".into(), "b".into()], vec!["c".into()]).frame(),
            r#"{"type":"presence","room":"r","joined":["a","b"],"left":["c"]}"#
        );
    }

    #[test]
    fn presence_frames_parse_back_and_others_do_not() {
        let p = PresencePush::change("r", "u", true);
        assert_eq!(PresencePush::parse(&p.frame()), Some(p));
        // The sweep script leaves out the empty list.
        let p = PresencePush::parse(r#"{"type":"presence","room":"r","left":["u"]}"#);
        assert_eq!(p, Some(PresencePush::change("r", "u", false)));
        assert!(PresencePush::parse(r#"{"type":"msg","room":"r"}"#).is_none());
        assert!(PresencePush::parse("not json").is_none());
    }
}
