//! Why the gateway closes a WebSocket: every close code it sends and every named reason,
//! in one place (the connection, the drain, rebalancing, forwarding routes and the server
//! all close through these). The reason text goes into the close frame and is the `reason`
//! label of `chatgateway_connections_closed_total`; docs/protocol.md lists them.

/// WebSocket close codes the gateway uses (RFC 6455 section 7.4 and the IANA registry).
pub mod code {
    /// Server shutting down without a drain, or a silent client (heartbeat timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455 (unmasked, reserved bits or opcodes, a control frame
    /// fragmented or over 125 bytes, a continuation with nothing to continue).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary frames are not part of protocol v1.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Abuse: repeated errors.
    pub const POLICY: u16 = 1008;
    /// A message over the frame size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// Drain or rebalance: reconnect (elsewhere) and resume.
    pub const RESTART: u16 = 1012;
    /// Slow consumer: the outbound queue overflowed; reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A forwarding route's upstream failed.
    pub const BAD_GATEWAY: u16 = 1014;
    /// The connection token expired without a `refresh` (application range 4000-4999;
    /// mnemonic: HTTP 401). Get a new token and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The key that verified the connection token was removed (mnemonic: HTTP 403).
    pub const KEY_REVOKED: u16 = 4403;
    /// The application's backend disconnected the user (server API); may reconnect.
    pub const BACKEND_DISCONNECT: u16 = 4100;
    /// The application's backend disconnected the user and asks it not to reconnect.
    pub const BACKEND_BAN: u16 = 4101;
    /// Another connection resumed this one's session (mnemonic: HTTP 409 Conflict): its
    /// client moved on, or another copy of it (a duplicated browser tab) took the token.
    pub const SESSION_RESUMED: u16 = 4409;
}

/// Why and how a connection is closed: the code and the short reason of the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Short reason sent in the close frame and used as the metrics label.
    pub reason: &'static str,
}

impl CloseReason {
    /// Whether the close frame may take the write timeout to reach a client still reading
    /// what was sent before it. Not when the client is known to read nothing (a write or
    /// heartbeat timeout) or when the server is going away (a drain waits for its
    /// connections to end, and a client that stopped reading would hold it up).
    pub fn waits_for_the_reader(self) -> bool {
        ![
            WRITE_TIMEOUT,
            HEARTBEAT_TIMEOUT,
            DRAINING,
            DRAIN_TIMEOUT,
            SHUTTING_DOWN,
        ]
        .contains(&self)
    }
}

const fn reason(code: u16, reason: &'static str) -> CloseReason {
    CloseReason { code, reason }
}

/// The outbound queue overflowed (frames or bytes).
pub const SLOW_CONSUMER: CloseReason = reason(code::TRY_AGAIN_LATER, "slow consumer");
/// A write to the client's socket did not complete within two heartbeat periods: the
/// client stopped reading (while it may still be sending).
pub const WRITE_TIMEOUT: CloseReason = reason(code::TRY_AGAIN_LATER, "write timeout");
/// A replay (join with `since`, resume, inbox) could not be finished: the engine failed
/// or history changed under it. Reconnect and resume: it continues from what was written.
pub const REPLAY_INTERRUPTED: CloseReason = reason(code::TRY_AGAIN_LATER, "replay interrupted");
/// Nothing heard from the client for two heartbeat periods.
pub const HEARTBEAT_TIMEOUT: CloseReason = reason(code::GOING_AWAY, "heartbeat timeout");
/// Told to go by a drain (after a `goaway`).
pub const DRAINING: CloseReason = reason(code::RESTART, "draining");
/// Told to go by rebalancing (after a `goaway`).
pub const REBALANCE: CloseReason = reason(code::RESTART, "rebalance");
/// Still open when the drain deadline passed (or a second signal cut the drain short).
pub const DRAIN_TIMEOUT: CloseReason = reason(code::RESTART, "drain timeout");
/// The process stops without a drain.
pub const SHUTTING_DOWN: CloseReason = reason(code::GOING_AWAY, "server shutting down");
/// More than `limits.maxErrorsInRow` refused commands in a row.
pub const TOO_MANY_ERRORS: CloseReason = reason(code::POLICY, "too many errors");
/// More pings, pongs and fragments than `limits.frameRate` and `limits.frameBurst`
/// allow ([`crate::inbound`]).
pub const TOO_MANY_FRAMES: CloseReason = reason(code::POLICY, "too many frames");
/// A binary frame on the chat protocol.
pub const BINARY_FRAME: CloseReason =
    reason(code::UNSUPPORTED_DATA, "binary frames are not supported");
/// A message over `limits.maxFrameBytes` (or a route's `maxFrameBytes`).
pub const MESSAGE_TOO_BIG: CloseReason = reason(code::TOO_BIG, "message too big");
/// A frame that breaks the WebSocket protocol (RFC 6455, 5 and 7.1.7).
pub const PROTOCOL_ERROR: CloseReason = reason(code::PROTOCOL_ERROR, "protocol error");
/// A text frame that is not UTF-8.
pub const INVALID_UTF8: CloseReason = reason(code::INVALID_PAYLOAD, "invalid utf-8");
/// A forwarding route's upstream went away or could not take a frame (sent to the client).
pub const UPSTREAM_FAILED: CloseReason = reason(code::BAD_GATEWAY, "upstream failed");
/// The client of a forwarded connection went away (sent to the upstream).
pub const CLIENT_GONE: CloseReason = reason(code::GOING_AWAY, "client gone");
/// A forwarded connection saw no frame in either direction for the route's `idleTimeout`
/// (sent to both sides).
pub const IDLE_TIMEOUT: CloseReason = reason(code::GOING_AWAY, "idle timeout");

/// The connection token expired (plus `auth.jwt.leeway`) without a `refresh`.
pub const TOKEN_EXPIRED: CloseReason = reason(code::TOKEN_EXPIRED, "token expired");
/// The key that verified the connection token is no longer in the key set.
pub const KEY_REVOKED: CloseReason = reason(code::KEY_REVOKED, "key revoked");

/// The server API disconnected the user; reconnecting is fine.
pub const BACKEND_DISCONNECT: CloseReason =
    reason(code::BACKEND_DISCONNECT, "disconnected by the server");
/// The server API disconnected the user with "do not reconnect".
pub const BACKEND_BAN: CloseReason = reason(code::BACKEND_BAN, "disconnected, do not reconnect");

/// Another connection resumed this connection's session (its resume token): the client
/// left it behind (a socket that died without a close, seen by the node only at the
/// heartbeat's timeout) or a copy of the client took over the token.
pub const SESSION_RESUMED: CloseReason = reason(code::SESSION_RESUMED, "session resumed elsewhere");

/// Metrics label of a chat connection the client closed (no close reason of ours).
pub const CLIENT_CLOSED: &str = "client closed";
/// Metrics label of every forwarded connection that ended.
pub const FORWARD_ENDED: &str = "forward ended";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc_tables;

    /// The two labels of `chatgateway_connections_closed_total` that are no close reason
    /// are in docs/operations.md's row for it, beside the reasons it points to.
    #[test]
    fn the_labels_beside_the_close_reasons_are_documented() {
        let row = doc_tables::row(
            doc_tables::OPERATIONS,
            "`chatgateway_connections_closed_total{reason}`",
        );
        for label in [CLIENT_CLOSED, FORWARD_ENDED] {
            assert!(row.contains(&format!("`{label}`")), "{label} not in {row}");
        }
    }

    /// Every close a client can see is in the table of docs/protocol.md with the same
    /// code and reason: clients branch on these numbers, so the code must not drift from
    /// the documented contract (a test against the constants alone could not notice).
    #[test]
    fn every_close_reason_is_the_one_documented() {
        let table = doc_tables::section(doc_tables::PROTOCOL, "Close codes");
        let documented = |c: &CloseReason| {
            table.lines().any(|l| {
                l.starts_with(&format!("| {} |", c.code))
                    && l.split('|')
                        .nth(2)
                        .is_some_and(|cell| cell.contains(&format!("`{}`", c.reason)))
            })
        };
        for c in [
            SLOW_CONSUMER,
            HEARTBEAT_TIMEOUT,
            DRAINING,
            REBALANCE,
            DRAIN_TIMEOUT,
            SHUTTING_DOWN,
            TOO_MANY_ERRORS,
            TOO_MANY_FRAMES,
            BINARY_FRAME,
            MESSAGE_TOO_BIG,
            INVALID_UTF8,
            PROTOCOL_ERROR,
            UPSTREAM_FAILED,
            WRITE_TIMEOUT,
            REPLAY_INTERRUPTED,
            IDLE_TIMEOUT,
            TOKEN_EXPIRED,
            KEY_REVOKED,
            BACKEND_DISCONNECT,
            BACKEND_BAN,
            SESSION_RESUMED,
        ] {
            assert!(documented(&c), "{c:?} is not in docs/protocol.md's table");
        }
        // The ones clients act on, by number.
        assert_eq!(
            (SLOW_CONSUMER.code, SLOW_CONSUMER.reason),
            (1013, "slow consumer")
        );
        assert_eq!(
            (DRAINING.code, REBALANCE.code, DRAIN_TIMEOUT.code),
            (1012, 1012, 1012)
        );
        assert_eq!(TOO_MANY_ERRORS.code, 1008);
    }
}
