//! One handler per command (in the spirit of mini-redis's `cmd/`): each takes the parsed
//! command and the session and returns an [`Outcome`] — the reply and what must follow it
//! on the queue — or a [`Refusal`]. Nothing here writes to the socket; the socket loop
//! queues the outcome in order, so "the reply goes out before the replay" holds by
//! construction.

mod history;
mod join;
mod leave;
mod ping;
mod presence;
mod resume;
mod send;

use super::session::Session;
use crate::engine::EngineError;
use crate::outbound::Outbound;
use crate::protocol::{self, Command, ErrorCode, Reply};

/// What a command produced.
#[derive(Debug)]
pub struct Outcome {
    /// The `ok` reply.
    pub reply: Reply,
    /// Queued after the reply, in order (replays of the rooms the command caught up).
    pub then: Vec<Outbound>,
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
            EngineError::Internal(m) => Refusal::new(ErrorCode::Internal, m),
        }
    }
}

/// A handler's result.
pub type Handled = Result<Outcome, Refusal>;

impl Session {
    /// Runs one command. The inbox replay waits for a `resume`; any other command means
    /// none is coming, so the inbox is replayed from the user's cursor first.
    pub async fn handle(&mut self, cmd: Command) -> Handled {
        if self.inbox_pending && !matches!(cmd, Command::Resume(_)) {
            Box::pin(self.replay_inbox_from_cursor()).await;
        }
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
        }
    }

    /// Refuses names outside the room-name rules.
    fn check_room(&self, room: &str) -> Result<(), Refusal> {
        protocol::validate_room(room, self.node.config.limits.max_room_name)
            .map_err(|m| Refusal::new(ErrorCode::InvalidRoom, m))
    }
}
