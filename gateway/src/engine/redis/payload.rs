//! The payloads of room channels, as the publish and presence scripts write them.

/// The append time in a stored `msg` frame. The frame starts with
/// `{"type":"msg","room":"<room>","seq":N,"epoch":"<hex>","ts":T,` and room names hold no
/// quote or comma, so the first `,"ts":` is the field.
pub(super) fn frame_ts(frame: &str) -> Option<u64> {
    let rest = &frame[frame.find(",\"ts\":")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One pub/sub payload of a room channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// `p <frame>`: a `presence` frame of one change; each node batches them for its
    /// members.
    Presence(&'a str),
    /// `m <seq> <epoch> <ts> <traceparent|-> <frame>`: a message.
    Msg {
        /// Position in the room.
        seq: u64,
        /// Its epoch.
        epoch: &'a str,
        /// Append time, Unix ms.
        ts: u64,
        /// W3C trace context (dropped unless valid).
        traceparent: Option<&'a str>,
        /// The `msg` frame.
        frame: &'a str,
    },
    /// `e <ts> <traceparent|-> <frame>`: an ephemeral message (never stored, no seq).
    Ephemeral {
        /// Send time, Unix ms.
        ts: u64,
        /// W3C trace context (dropped unless valid).
        traceparent: Option<&'a str>,
        /// The `msg` frame.
        frame: &'a str,
    },
}

/// Splits a payload of a node-wide inbox channel, `r <inbox> <payload>`, into the inbox
/// and its room payload; None for anything else.
pub fn parse_routed(payload: &[u8]) -> Option<(&str, &[u8])> {
    let rest = payload.strip_prefix(b"r ")?;
    let end = rest.iter().position(|&b| b == b' ')?;
    let room = std::str::from_utf8(&rest[..end]).ok()?;
    if room.is_empty() || !crate::protocol::is_inbox(room) {
        return None;
    }
    Some((room, &rest[end + 1..]))
}

/// Parses a room channel payload; None for anything malformed (it is skipped).
pub fn parse_payload(payload: &[u8]) -> Option<Payload<'_>> {
    let payload = std::str::from_utf8(payload).ok()?;
    if let Some(frame) = payload.strip_prefix("p ") {
        return Some(Payload::Presence(frame));
    }
    if let Some(rest) = payload.strip_prefix("e ") {
        let mut parts = rest.splitn(3, ' ');
        let (ts, tp, frame) = (parts.next()?, parts.next()?, parts.next()?);
        if !frame.starts_with('{') {
            return None;
        }
        return Some(Payload::Ephemeral {
            ts: ts.parse().ok()?,
            traceparent: Some(tp).filter(|t| crate::protocol::valid_traceparent(t)),
            frame,
        });
    }
    let rest = payload.strip_prefix("m ")?;
    let mut parts = rest.splitn(5, ' ');
    let (seq, epoch, ts, tp, frame) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if epoch.is_empty() || !frame.starts_with('{') {
        return None;
    }
    Some(Payload::Msg {
        seq: seq.parse().ok()?,
        epoch,
        ts: ts.parse().ok()?,
        traceparent: Some(tp).filter(|t| crate::protocol::valid_traceparent(t)),
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_payload(format!("m 7 ab 99 {tp} {{\"x\":1}}").as_bytes()),
            Some(Payload::Msg {
                seq: 7,
                epoch: "ab",
                ts: 99,
                traceparent: Some(tp),
                frame: "{\"x\":1}"
            })
        );
        assert!(matches!(
            parse_payload(b"m 7 ab 99 - {}"),
            Some(Payload::Msg {
                traceparent: None,
                ..
            })
        ));
        assert_eq!(parse_payload(b"p {}"), Some(Payload::Presence("{}")));
        assert_eq!(
            parse_payload(b"e 5 - {}"),
            Some(Payload::Ephemeral {
                ts: 5,
                traceparent: None,
                frame: "{}"
            })
        );
        for bad in [
            &b"m x ab 1 - {}"[..],
            b"m 1 ab 1 -",
            b"m 1 ab 1 - not-a-frame",
            b"q 1",
            b"m 1  1 - {}",
            b"e x - {}",
            b"e 1 -",
            b"e 1 - nope",
            &[b'm', b' ', 0xff, 0xfe],
        ] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn routed_payloads_name_their_inbox() {
        assert_eq!(
            parse_routed(b"r user:bob m 1 ab 2 - {}"),
            Some(("user:bob", &b"m 1 ab 2 - {}"[..]))
        );
        for bad in [
            &b"r  m 1"[..],
            b"r lobby m 1",
            b"m 1 ab 2 - {}",
            b"r user:bob",
        ] {
            assert_eq!(parse_routed(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ts_of_a_stored_frame() {
        assert_eq!(
            frame_ts(r#"{"type":"msg","room":"r","seq":3,"epoch":"e","ts":1234,"msg_id":"m"}"#),
            Some(1234)
        );
        assert_eq!(frame_ts("{}"), None);
    }
}
