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

/// The `presence` push: a user's first connection joined or last one left a room.
#[derive(Debug, Serialize)]
struct PresenceFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    user: &'a str,
    event: &'static str,
}

/// Serialises a `presence` frame (`join` or `leave`).
pub fn presence_frame(room: &str, user: &str, join: bool) -> String {
    to_json(&PresenceFrame {
        kind: "presence",
        room,
        user,
        event: if join { "join" } else { "leave" },
    })
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
            presence_frame("r", "u", false),
            r#"{"type":"presence","room":"r","user":"u","event":"leave"}"#
        );
    }
}
