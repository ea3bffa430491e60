//! One handler per command (in the spirit of mini-redis's `cmd/`): each takes the parsed
//! command and the session and returns an [`Outcome`] — the reply and what must follow it
//! on the queue — or a [`Refusal`]. Nothing here writes to the socket; the socket loop
//! queues the outcome in order, so "the reply goes out before the replay" holds by
//! construction.

mod ack;
mod history;
mod join;
mod leave;
mod ping;
mod presence;
mod refresh;
mod resume;
mod send;

use super::catchup::Replay;
use super::session::Session;
use crate::engine::EngineError;
use crate::protocol::{self, Command, ErrorCode, Reply};

/// What a command produced.
#[derive(Debug)]
pub struct Outcome {
    /// The `ok` reply.
    pub reply: Reply,
    /// Streamed after the reply, in order (replays of the rooms the command caught up).
    pub then: Vec<Replay>,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Outcome {
        Outcome {
            reply,
            then: Vec::new(),
        }
    }
}

/// A refused command: the code and message of its `error` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(m) => Refusal::new(ErrorCode::Unavailable, m),
            EngineError::UnknownOutcome(m) => Refusal::new(ErrorCode::UnknownOutcome, m),
            EngineError::Internal(m) => Refusal::new(ErrorCode::Internal, m),
            EngineError::Quota(m) => Refusal::new(ErrorCode::QuotaExceeded, m),
        }
    }
}

/// A handler's result.
pub type Handled = Result<Outcome, Refusal>;

impl Session {
    /// Runs one command. (The socket loop replays a pending inbox before any command but
    /// `resume`.)
    pub async fn handle(&mut self, cmd: Command) -> Handled {
        // Rare, large futures are boxed so every idle connection's task stays small;
        // `send`, the hot path, is not.
        match cmd {
            Command::Join(c) => Box::pin(join::handle(self, c)).await,
            Command::Leave(c) => Box::pin(leave::handle(self, c)).await,
            Command::Send(c) => send::handle(self, c).await,
            Command::History(c) => Box::pin(history::handle(self, c)).await,
            Command::Presence(c) => Box::pin(presence::handle(self, c)).await,
            Command::Ping(c) => ping::handle(c),
            Command::Resume(c) => Box::pin(resume::handle(self, c)).await,
            Command::Refresh(c) => Box::pin(refresh::handle(self, c)).await,
            Command::Ack(c) => Box::pin(ack::handle(self, c)).await,
        }
    }

    /// Whether the session's user may join `room` given a subscription token's rights
    /// (`sub`): the permission rules, and the backend's join hook where the namespace asks
    /// it. The one decision of `join`, `resume` and a room `refresh`.
    async fn decide_join(
        &self,
        room: &str,
        sub: Option<&crate::auth::RoomGrant>,
    ) -> Result<crate::permissions::Membership, Refusal> {
        use crate::hooks::{JoinRequest, Verdict};
        use crate::permissions::{self, Decision};
        let ns = self.node.namespaces.of(room);
        match permissions::may_join(ns, room, &self.identity, sub) {
            Decision::Allow(member) => Ok(member),
            Decision::Deny(reason) => Err(self.deny("join", reason)),
            Decision::AskBackend => {
                let req = JoinRequest {
                    user: self.user(),
                    room,
                };
                match self.node.hooks.join(&self.node.metrics, &req).await {
                    Verdict::Allow(answer) => Ok(permissions::backend_grant(ns, answer.send)),
                    Verdict::Deny(reason) => Err(self.deny("join", &reason)),
                    Verdict::Failed(e) => Err(Refusal::new(ErrorCode::Unavailable, e.for_client())),
                }
            }
        }
    }

    /// A `forbidden` refusal of `action`, counted in `chatgateway_permission_denied_total`.
    fn deny(&self, action: &str, reason: &str) -> Refusal {
        self.node
            .metrics
            .permission_denied
            .with_label_values(&[action])
            .inc();
        Refusal::new(ErrorCode::Forbidden, reason)
    }

    /// Refuses names outside the room-name rules.
    fn check_room(&self, room: &str) -> Result<(), Refusal> {
        protocol::validate_room(room, self.node.config.limits.max_room_name)
            .map_err(|m| Refusal::new(ErrorCode::InvalidRoom, m))
    }
}
