//! Token lifecycle: the connection token and rooms' subscription tokens expire. Ahead of
//! that (`auth.expiryWarning`) the client gets an `expiring` push and may `refresh`; at
//! the expiry (plus `auth.jwt.leeway`) the connection closes with 4401, or, for a
//! subscription token, the connection leaves the room with an `unsubscribed` push. Removing
//! the JWKS key that signed a token ends it the same way (close 4403, or `unsubscribed`
//! with reason `key revoked`).
//! The same timer saves the session record a moment after a join or a leave
//! ([`SAVE_DELAY`](super::session::SAVE_DELAY)).

use super::session::Session;
use crate::disconnect::{self, CloseReason};
use crate::protocol::push;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

impl Session {
    /// Unix ms of the next expiry event (a warning or an expiry), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        let warning = self.node.config.auth.expiry_warning.as_millis() as u64;
        let leeway = self.node.config.auth.jwt.leeway.as_millis() as u64;
        let event = |expires_at: u64, warned: bool| {
            let at = expires_at * 1000;
            if warned {
                at + leeway
            } else {
                at.saturating_sub(warning)
            }
        };
        let conn = self.identity.expires_at.map(|e| event(e, self.warned));
        let rooms = self
            .rooms
            .values()
            .filter_map(|j| Some(event(j.member.expires_at?, j.warned)));
        conn.into_iter()
            .chain(rooms)
            .chain(self.save_due.map(NonZeroU64::get))
            .min()
    }

    /// Handles every expiry event due at `now` (Unix ms), and a session save that is due.
    /// Returns the close reason when the connection token expired.
    pub async fn on_deadline(&mut self, now: u64) -> Option<CloseReason> {
        if self.save_due.is_some_and(|at| now >= at.get()) {
            self.persist(&HashMap::new(), true).await;
        }
        let warning = self.node.config.auth.expiry_warning.as_millis() as u64;
        let leeway = self.node.config.auth.jwt.leeway.as_millis() as u64;
        if let Some(exp) = self.identity.expires_at.map(|e| e * 1000) {
            if now >= exp + leeway {
                return Some(disconnect::TOKEN_EXPIRED);
            }
            if !self.warned && now + warning >= exp {
                self.warned = true;
                self.queue.frame(push::expiring_frame(None, exp));
            }
        }
        let mut expired: Vec<Arc<str>> = Vec::new();
        for (room, joined) in &mut self.rooms {
            let Some(exp) = joined.member.expires_at.map(|e| e * 1000) else {
                continue;
            };
            if now >= exp + leeway {
                expired.push(room.clone());
            } else if !joined.warned && now + warning >= exp {
                joined.warned = true;
                self.queue.frame(push::expiring_frame(Some(room), exp));
            }
        }
        self.end_memberships(&expired, "token expired").await;
        None
    }

    /// Leaves `rooms` whose grant ended, telling the client why (`unsubscribed`).
    async fn end_memberships(&mut self, rooms: &[Arc<str>], reason: &str) {
        for room in rooms {
            self.detach(room).await;
            self.queue.frame(push::unsubscribed_frame(room, reason));
        }
        if !rooms.is_empty() {
            self.persist_soon();
        }
    }

    /// The session's deadline passed (a token's warning or expiry, a save): false when
    /// the connection closes (its token expired).
    pub(super) async fn deadline_passed(&mut self) -> bool {
        match self.on_deadline(crate::engine::now_ms()).await {
            Some(reason) => {
                self.queue.close(reason);
                false
            }
            None => true,
        }
    }

    /// The node left word in the connection's mailbox (new keys, a server unsubscribe):
    /// false when the connection closes (the key of its token was removed).
    pub(super) async fn control_news(&mut self, ctl: &crate::control::ConnCtl) -> bool {
        if ctl.take_keys_changed() {
            if self.key_revoked() {
                self.queue.close(disconnect::KEY_REVOKED);
                return false;
            }
            self.end_revoked_grants().await;
        }
        for msg in ctl.take() {
            self.on_control(msg).await;
        }
        true
    }

    /// Leaves the rooms a subscription token let in whose key was removed from the key
    /// set, as if the token had expired. They used to stay joined until the token's `exp`
    /// (one the holder of a leaked key chose), and through a resume.
    async fn end_revoked_grants(&mut self) {
        let auth = &self.node.auth;
        let revoked: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|(_, j)| j.member.kid.as_deref().is_some_and(|k| !auth.has_kid(k)))
            .map(|(room, _)| room.clone())
            .collect();
        self.end_memberships(&revoked, "key revoked").await;
    }

    /// Whether the key that verified the connection token was removed from the key set.
    pub fn key_revoked(&self) -> bool {
        self.identity
            .kid
            .as_deref()
            .is_some_and(|kid| !self.node.auth.has_kid(kid))
    }
}
