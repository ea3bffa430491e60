//! Several `chat-gateway` processes sharing one real Redis: the cross-pod cases.

use crate::client::Client;
use crate::process::{free_port, GatewayProcess};
use crate::redis::RedisServer;
use crate::resilient::Credentials;
use std::net::SocketAddr;
use std::time::Duration;

/// Gateway processes on one Redis, under one fresh key prefix (state never leaks between
/// tests sharing a Redis).
pub struct Gateways {
    env: Vec<(String, String)>,
    credentials: Credentials,
    /// The processes, by index; [`restart`](Gateways::restart) replaces one in place.
    pub procs: Vec<GatewayProcess>,
}

impl Gateways {
    /// Starts `n` gateways (insecure auth, generous rate limits, node ids `gw-<i>-…`) with
    /// `extra` environment on top, each ready before this returns.
    pub fn start(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Gateways {
        Self::start_on(&[("CHATGW_REDIS__URL".into(), redis.url())], n, extra)
    }

    /// [`start`](Self::start) on the Redis deployment `redis_env` names (a cluster's or
    /// Sentinel's `env()`).
    pub fn start_on(redis_env: &[(String, String)], n: usize, extra: &[(&str, &str)]) -> Gateways {
        Self::start_with(redis_env, n, extra, Credentials::Insecure)
    }

    /// Like [`start`](Self::start), but the gateways verify HS256 JWTs (as in production)
    /// signed with a secret of their own: connect with [`token`](Self::token) or
    /// [`connect`](Self::connect), or give [`credentials`](Self::credentials) to a
    /// reference client.
    pub fn start_jwt(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Gateways {
        // At least 32 bytes: the gateway refuses a shorter HS256 secret.
        let secret = format!("gw-secret-{:032x}", rand::random::<u128>());
        let audience = crate::jwt::AUDIENCE.to_string();
        let url = [("CHATGW_REDIS__URL".to_string(), redis.url())];
        Self::start_with(&url, n, extra, Credentials::Hs256 { secret, audience })
    }

    fn start_with(
        redis_env: &[(String, String)],
        n: usize,
        extra: &[(&str, &str)],
        credentials: Credentials,
    ) -> Gateways {
        let prefix = format!("g{:08x}", rand::random::<u32>());
        let mut env: Vec<(String, String)> = redis_env.to_vec();
        env.extend(
            [
                ("CHATGW_ENGINE", "redis"),
                ("CHATGW_REDIS__KEY_PREFIX", prefix.as_str()),
                ("CHATGW_LIMITS__MESSAGE_RATE", "1000"),
                ("CHATGW_LIMITS__USER_MESSAGE_RATE", "0"),
                ("CHATGW_LIMITS__MESSAGE_BURST", "1000"),
                ("CHATGW_LIMITS__CONNECTIONS_PER_IP", "0"),
                ("CHATGW_LIMITS__HANDSHAKES_PER_IP", "0"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        match &credentials {
            Credentials::Insecure => env.push(("CHATGW_AUTH__MODE".into(), "insecure".into())),
            Credentials::Hs256 { secret, audience } => {
                env.push(("CHATGW_AUTH__MODE".into(), "jwt".into()));
                env.push(("CHATGW_AUTH__JWT__SECRET".into(), secret.clone()));
                env.push(("CHATGW_AUTH__JWT__AUDIENCE".into(), audience.clone()));
            }
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut gws = Gateways {
            env,
            credentials,
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

    /// Like [`restart`](Self::restart) with `extra` environment for this process only.
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

    /// How clients authenticate to these gateways.
    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    /// A JWT for `user` valid for 5 minutes; panics in insecure mode.
    pub fn token(&self, user: &str) -> String {
        match &self.credentials {
            Credentials::Hs256 { secret, audience } => {
                crate::jwt::hs256_for(secret, audience, user, 300)
            }
            Credentials::Insecure => panic!("these gateways run in insecure mode: no tokens"),
        }
    }

    /// Connects `user` to gateway `i` (a bearer token in JWT mode, `?user=` otherwise).
    pub async fn connect(&self, i: usize, user: &str) -> Client {
        let connected = match &self.credentials {
            Credentials::Insecure => {
                Client::connect(&self.procs[i].ws_url(&format!("user={user}"))).await
            }
            Credentials::Hs256 { .. } => {
                Client::connect_bearer(
                    &format!("ws://{}/ws", self.procs[i].addr),
                    &self.token(user),
                )
                .await
            }
        };
        connected.unwrap_or_else(|e| panic!("connect {user} to gw {i}: {e}"))
    }

    /// `chatgateway_connections` of gateway `i`; panics when it cannot be read.
    pub fn connections(&self, i: usize) -> f64 {
        self.procs[i].metric("chatgateway_connections")
    }
}
