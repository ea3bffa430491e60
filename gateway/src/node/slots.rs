//! Connection slots: what a connection (or a handshake) counts against its client IP and
//! its user while it lives (`limits.connectionsPerIp`, `handshakesPerIp`,
//! `connectionsPerUser`), freed on drop.

use super::{lock, Node};
use crate::client_ip::limit_key;
use crate::hub::ConnId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What a connection slot is counted against.
enum SlotKey {
    Ip(IpAddr),
    User(String),
    Handshake(IpAddr),
}

/// Holds one slot of a client (a connection or a handshake of its address) or of a user;
/// frees it on drop.
pub struct Slot {
    node: Arc<Node>,
    key: SlotKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.key {
            SlotKey::Ip(ip) => release(&self.node.per_ip, ip),
            SlotKey::User(user) => release(&self.node.per_user, user),
            SlotKey::Handshake(ip) => release(&self.node.handshakes_per_ip, ip),
        }
    }
}

/// Counts one more under `key` unless it is at `limit` (0: no limit).
fn take<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, u32>>, key: K, limit: u32) -> bool {
    let mut map = lock(map);
    let n = map.entry(key).or_insert(0);
    if limit > 0 && *n >= limit {
        return false;
    }
    *n += 1;
    true
}

fn release<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, u32>>, key: &K) {
    let mut map = lock(map);
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The slots a connection holds for its life.
pub struct Slots {
    /// Its client IP's.
    pub ip: Slot,
    /// Its user's.
    pub user: Slot,
    /// The connection registered under them, unregistered when they are dropped: at its
    /// end, and also when its task panicked (the open-connections gauge, which the HPA
    /// reads, and the drain's count would otherwise keep it for good).
    pub registered: Option<ConnId>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(id) = self.registered.take() {
            self.ip.node.unregister(id);
        }
    }
}

impl Node {
    /// Takes a connection slot for `ip`, or None when its client ([`limit_key`]) is at
    /// `limits.connectionsPerIp`.
    pub fn take_ip_slot(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = limit_key(ip);
        take(&self.per_ip, ip, self.config.limits.connections_per_ip).then(|| Slot {
            node: self.clone(),
            key: SlotKey::Ip(ip),
        })
    }

    /// Takes a slot for a connection from `ip` that is not a WebSocket yet, or None when
    /// the client is at `limits.handshakesPerIp`. Held from accept to the upgrade (or the
    /// connection's end). Like every per-address limit, counted by [`limit_key`].
    pub fn take_handshake_slot(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = limit_key(ip);
        let limit = self.config.limits.handshakes_per_ip;
        take(&self.handshakes_per_ip, ip, limit).then(|| Slot {
            node: self.clone(),
            key: SlotKey::Handshake(ip),
        })
    }

    /// Takes a connection slot for `user`, or None when the user is at its limit.
    pub fn take_user_slot(self: &Arc<Self>, user: &str) -> Option<Slot> {
        let limit = self.config.limits.connections_per_user;
        take(&self.per_user, user.to_string(), limit).then(|| Slot {
            node: self.clone(),
            key: SlotKey::User(user.to_string()),
        })
    }
}
