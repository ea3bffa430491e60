//! Several `chat-gateway` processes sharing one real Redis: the cross-pod cases.

use crate::process::{free_port, GatewayProcess};
use crate::redis::RedisServer;
use std::net::SocketAddr;
use std::time::Duration;

/// Gateway processes on one Redis, under one fresh key prefix (state never leaks between
/// tests sharing a Redis).
pub struct Gateways {
    env: Vec<(String, String)>,
    /// The processes, by index; [`restart`](Gateways::restart) replaces one in place.
    pub procs: Vec<GatewayProcess>,
}

impl Gateways {
    /// Starts `n` gateways (insecure auth, generous rate limits, node ids `gw-<i>-…`) with
    /// `extra` environment on top, each ready before this returns.
    pub fn start(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Gateways {
        Gateways::start_on(&[("CHATGW_REDIS__URL".into(), redis.url())], n, extra)
    }

    /// [`start`](Self::start) on the Redis deployment `redis_env` names (a cluster's or
    /// Sentinel's `env()`).
    pub fn start_on(redis_env: &[(String, String)], n: usize, extra: &[(&str, &str)]) -> Gateways {
        let prefix = format!("g{:08x}", rand::random::<u32>());
        let mut env: Vec<(String, String)> = redis_env.to_vec();
        env.extend(
            [
                ("CHATGW_AUTH__MODE", "insecure"),
                ("CHATGW_ENGINE", "redis"),
                ("CHATGW_REDIS__KEY_PREFIX", prefix.as_str()),
                ("CHATGW_LIMITS__MESSAGE_RATE", "1000"),
                ("CHATGW_LIMITS__MESSAGE_BURST", "1000"),
                ("CHATGW_LIMITS__CONNECTIONS_PER_IP", "0"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut gws = Gateways {
            env,
            procs: Vec::new(),
        };
        for i in 0..n {
            gws.restart(SocketAddr::from(([127, 0, 0, 1], free_port())), i);
        }
        gws
    }

    /// Starts gateway `i` on `addr` (replacing a stopped one, or adding the next) and
    /// waits until it is ready. Node ids are `gw-<i>`, and `gw-<i>-<random>` after a
    /// restart (a new process is a new node).
    pub fn restart(&mut self, addr: SocketAddr, i: usize) {
        self.restart_with(addr, i, &[]);
    }

    /// [`restart`](Self::restart) with `extra` environment for this one gateway.
    pub fn restart_with(&mut self, addr: SocketAddr, i: usize, extra: &[(&str, &str)]) {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let id = if i < self.procs.len() {
            format!("gw-{i}-{}", rand::random::<u16>())
        } else {
            format!("gw-{i}")
        };
        env.push(("CHATGW_NODE__ID".into(), id));
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = GatewayProcess::start_on(addr, &refs);
        p.wait_ready(200, Duration::from_secs(30));
        if i < self.procs.len() {
            self.procs[i] = p;
        } else {
            self.procs.push(p);
        }
    }

    /// The `/ws` URL of every gateway.
    pub fn urls(&self) -> Vec<String> {
        self.procs
            .iter()
            .map(|p| format!("ws://{}/ws", p.addr))
            .collect()
    }

    /// `chatgateway_connections` of gateway `i` (-1 when it cannot be read).
    pub fn connections(&self, i: usize) -> f64 {
        self.procs[i].metric("chatgateway_connections")
    }
}
