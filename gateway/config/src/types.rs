//! The configuration types and their defaults: every key the gateway understands, in the
//! camelCase spelling of the YAML file. Every field has a default.

pub use crate::retention::RetentionConfig;
use crate::{ApiConfig, AuthConfig, HooksConfig, NamespaceConfig, RedisConfig};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Duration};

/// Everything the gateway can be told; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Listener and HTTP-level settings.
    pub server: ServerConfig,
    /// Identity of this gateway process in the cluster.
    pub node: NodeConfig,
    /// Which engine holds history, presence and sessions.
    pub engine: EngineKind,
    /// Redis connection (engine `redis`).
    pub redis: RedisConfig,
    /// What the memory engine may hold (engine `memory`).
    pub memory: MemoryConfig,
    /// How clients authenticate at the WebSocket upgrade.
    pub auth: AuthConfig,
    /// Keep-alive settings.
    pub heartbeat: HeartbeatConfig,
    /// Per-connection and per-client limits.
    pub limits: LimitsConfig,
    /// Room history retention; a field left out keeps its default.
    pub history: RetentionConfig,
    /// Retention of users' inboxes (direct messages); a field left out keeps the inbox's
    /// default, not history's.
    pub inbox: RetentionConfig,
    /// Resume sessions.
    pub sessions: SessionsConfig,
    /// Graceful drain on SIGTERM.
    pub drain: DrainConfig,
    /// Shedding connections from pods well above the cluster mean.
    pub rebalance: RebalanceConfig,
    /// Rate of new connections and resumes admitted (reconnect storms).
    pub admission: AdmissionConfig,
    /// WebSocket forwarding routes to backend services (longest path prefix wins).
    pub routes: Vec<RouteConfig>,
    /// Room namespaces (longest prefix wins); built-in defaults: a public lobby for rooms
    /// without a configured prefix and the `user:` inboxes.
    pub namespaces: Vec<NamespaceConfig>,
    /// The server API for the application's backend (its own port; off by default).
    pub api: ApiConfig,
    /// Hooks the gateway calls on the application's backend (off by default).
    pub hooks: HooksConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            node: NodeConfig::default(),
            engine: EngineKind::Memory,
            redis: RedisConfig::default(),
            memory: MemoryConfig::default(),
            auth: AuthConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            limits: LimitsConfig::default(),
            history: RetentionConfig::HISTORY,
            inbox: RetentionConfig::INBOX,
            sessions: SessionsConfig::default(),
            drain: DrainConfig::default(),
            rebalance: RebalanceConfig::default(),
            admission: AdmissionConfig::default(),
            routes: Vec::new(),
            namespaces: Vec::new(),
            api: ApiConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

/// Listener and HTTP-level settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address the single HTTP/WebSocket port listens on.
    pub listen: SocketAddr,
    /// Browser origins allowed to open a socket; empty allows any. `*` matches all.
    pub allowed_origins: Vec<String>,
    /// Length of the listen socket's queue of connections not yet accepted (the kernel
    /// caps it at `net.core.somaxconn`). A burst of connects beyond it loses SYNs, which
    /// clients retry only after a second.
    pub listen_backlog: u32,
    /// Most bytes of a request's head (request line and headers) read before it is
    /// refused with 431, on this port and the server API's. A head that never ends costs
    /// its connection this much memory until the 10 s header timeout; hyper's own bound is
    /// ~408 KiB. At least 8192 (hyper's floor).
    pub max_header_bytes: usize,
}

/// Default [`ServerConfig::max_header_bytes`]: as much as nginx reads by default (four
/// 8 KiB buffers), twice Node's 16 KiB; a head with a JWT and cookies fits.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// Default [`ServerConfig::listen_backlog`]: a burst of thousands of reconnects (a node
/// going away) fits, where the usual 128 drops most of it.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            allowed_origins: Vec::new(),
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Identity of this gateway process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Node id shown in `welcome`; empty means `$POD_NAME`, `$HOSTNAME` or a random id.
    pub id: String,
}

/// Engine implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Single process, everything in memory (the embedded default).
    Memory,
    /// Any number of processes sharing one Redis.
    Redis,
}

/// What the memory engine may hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryConfig {
    /// Most bytes of messages (rooms' history and inboxes together) kept in the process;
    /// past it the oldest room messages are dropped first, inbox messages only once no
    /// room has any left. Unset: half the container's memory limit, or
    /// [`MemoryConfig::UNLIMITED_CONTAINER_BYTES`] in a container without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl MemoryConfig {
    /// `maxBytes` when unset and the process has no memory limit (a laptop's `make run`).
    pub const UNLIMITED_CONTAINER_BYTES: u64 = 1 << 30;
    /// The smallest `maxBytes`: below it a few large messages would empty every room.
    pub const MIN_BYTES: u64 = 1 << 20;
}

/// Keep-alive settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HeartbeatConfig {
    /// Server WebSocket ping period; a connection silent for two periods is closed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(25),
        }
    }
}

/// Per-connection and per-client limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Largest accepted WebSocket message; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Sustained commands per second per connection (token bucket refill).
    pub message_rate: f64,
    /// Token bucket size: commands allowed in a burst.
    pub message_burst: u32,
    /// Sustained commands per second of one user, all their connections on one pod
    /// together (token bucket refill): without it a user's command rate is
    /// `messageRate` × `connectionsPerUser`. 0 disables the limit.
    pub user_message_rate: f64,
    /// Token bucket size of `userMessageRate`: one user's commands allowed in a burst.
    pub user_message_burst: u32,
    /// Frames other than whole text messages (pings, pongs, a message's fragments) per
    /// second per connection (token bucket refill); beyond, close 1008. Bounds the CPU
    /// one client can cost below the message rate, which counts whole commands only.
    /// 0 disables the limit.
    pub frame_rate: f64,
    /// Token bucket size: frames allowed in a burst.
    pub frame_burst: u32,
    /// Rooms one connection may be joined to (the own inbox not counted).
    pub rooms_per_connection: usize,
    /// Open connections per client IP; 0 disables the limit.
    pub connections_per_ip: u32,
    /// Connections per client IP that are not (yet) WebSockets: sending a request head,
    /// waiting for authentication or the connect hook, or idle between HTTP requests.
    /// Beyond, a new connection from the IP is closed as it is accepted. Bounds what one
    /// client can hold before `connectionsPerIp` (which counts upgrades) applies: each
    /// such connection holds up to `server.maxHeaderBytes` for the 10 s header timeout.
    /// 0 disables the limit.
    pub handshakes_per_ip: u32,
    /// Open connections per user on one pod; 0 disables the limit.
    pub connections_per_user: u32,
    /// Rooms and inboxes one user's sends may start per hour, on all pods together with the
    /// Redis engine (a token bucket per user in Redis). A room's first message creates its
    /// keys, kept for days; past the limit, sends go only to rooms that exist. `0` = no
    /// limit.
    pub new_rooms_per_hour: u32,
    /// Frames queued for one connection before it is closed as a slow consumer (1013).
    pub outbound_queue_frames: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (1013).
    pub outbound_queue_bytes: usize,
    /// Consecutive errors (bad frames, refused commands) before closing with 1008.
    pub max_errors_in_row: u32,
    /// Longest room name, in bytes.
    pub max_room_name: usize,
    /// Most bytes of messages in one `history` reply (at least one message is always
    /// returned); `more: true` says there is more to page through. Capped at half of
    /// `outboundQueueBytes`.
    pub history_page_bytes: usize,
    /// Bytes of history read and queued at a time while a replay (join with `since`,
    /// resume, inbox) streams at the client's pace. Capped at half of `outboundQueueBytes`.
    pub replay_chunk_bytes: usize,
    /// Most users a `presence` reply lists (its `count` says how many there are): what a
    /// call costs the engine and the gateway grows with this, not with the room.
    pub presence_users: usize,
    /// A connection's presence in a room outlives its `leave` (or its close) by this long,
    /// so a join/leave loop announces one join and one leave, not one per turn.
    #[serde(with = "humantime_serde")]
    pub presence_linger: Duration,
    /// Presence changes of a room are collected this long on each node and pushed to its
    /// members as one `presence` frame, so N joins cost each member about one frame per
    /// window, not N (issue 23). `0s`: one frame per change.
    #[serde(with = "humantime_serde")]
    pub presence_batch: Duration,
    /// A room whose messages come faster than its members' sockets take them one by one
    /// queues them to its members quietly and wakes their writers once this long after
    /// the first, so each writes several frames per syscall (issue 23). A latency bought
    /// for CPU, and only where messages are that frequent; `0s`: woken per message.
    #[serde(with = "humantime_serde")]
    pub fanout_batch: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            message_rate: 20.0,
            message_burst: 40,
            user_message_rate: 100.0,
            user_message_burst: 200,
            frame_rate: 500.0,
            frame_burst: 1000,
            rooms_per_connection: 100,
            connections_per_ip: 1000,
            handshakes_per_ip: 256,
            connections_per_user: 100,
            new_rooms_per_hour: 100,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 1024 * 1024,
            max_errors_in_row: 10,
            max_room_name: 128,
            history_page_bytes: 256 * 1024,
            replay_chunk_bytes: 128 * 1024,
            presence_users: 1000,
            presence_linger: Duration::from_secs(1),
            presence_batch: Duration::from_millis(100),
            fanout_batch: Duration::from_millis(30),
        }
    }
}

impl LimitsConfig {
    /// `historyPageBytes` as used: at most half the outbound queue.
    pub fn history_page_cap(&self) -> usize {
        self.history_page_bytes
            .min(self.outbound_queue_bytes / 2)
            .max(1)
    }

    /// `replayChunkBytes` as used: at most half the outbound queue.
    pub fn replay_chunk_cap(&self) -> usize {
        self.replay_chunk_bytes
            .min(self.outbound_queue_bytes / 2)
            .max(1)
    }
}

/// Resume sessions and de-duplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionsConfig {
    /// How long a disconnected session can be resumed.
    #[serde(with = "humantime_serde")]
    pub resume_ttl: Duration,
    /// How long a client `msg_id` is remembered for de-duplication.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Sessions of ended connections a node keeps resumable per user; beyond, the user's
    /// oldest is dropped. 0: no limit.
    pub kept_per_user: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            resume_ttl: Duration::from_secs(300),
            dedup_window: Duration::from_secs(300),
            kept_per_user: 100,
        }
    }
}

/// Graceful drain on SIGTERM: readiness off, accept grace, evict at a bounded rate, exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DrainConfig {
    /// Upgrades are still accepted this long after SIGTERM (endpoints take time to update).
    #[serde(with = "humantime_serde")]
    pub accept_grace: Duration,
    /// Connections sent `goaway` and closed (1012) per second.
    pub evict_rate: f64,
    /// If non-zero, spread the evictions over this period instead (rate = open / period,
    /// never below `evictRate`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Exit at this deadline after SIGTERM even if connections remain (they are closed).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `goaway.reconnect_after_ms` is drawn uniformly from 0 to this.
    #[serde(with = "humantime_serde")]
    pub reconnect_jitter: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            accept_grace: Duration::from_secs(5),
            evict_rate: 100.0,
            period: Duration::ZERO,
            timeout: Duration::from_secs(60),
            reconnect_jitter: Duration::from_secs(2),
        }
    }
}

/// Rebalancing: a pod well above the cluster mean sheds connections slowly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RebalanceConfig {
    /// On by default; `false` turns it off.
    pub enabled: bool,
    /// Shed only when this many connections above the mean ...
    pub abs_threshold: u64,
    /// ... and this fraction above the mean (0.2 = 20 %).
    pub rel_threshold: f64,
    /// Connections shed per second while above the thresholds.
    pub rate: f64,
    /// How often the node compares itself with the cluster.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            abs_threshold: 100,
            rel_threshold: 0.2,
            rate: 5.0,
            interval: Duration::from_secs(10),
        }
    }
}

/// Admission of new connections and resumes, cluster-wide with Redis, per pod otherwise.
/// Per-IP and per-user buckets come first, so one client or one credential hammering the
/// door is refused (429) before it uses up the shared rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdmissionConfig {
    /// Upgrades admitted per second; over it, 503 with a jittered Retry-After. 0 = no limit.
    pub rate: u32,
    /// Upgrades per second from one client IP (per pod); 0 = no limit.
    pub per_ip_rate: f64,
    /// Burst of upgrades from one client IP.
    pub per_ip_burst: u32,
    /// Upgrades per second of one user (per pod); 0 = no limit.
    pub per_user_rate: f64,
    /// Burst of upgrades of one user.
    pub per_user_burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            rate: 2000,
            per_ip_rate: 50.0,
            per_ip_burst: 100,
            per_user_rate: 5.0,
            per_user_burst: 20,
        }
    }
}

/// A WebSocket forwarding route: authenticate at the gateway, then pipe frames to an
/// upstream WebSocket service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// Short name, used as the metrics label (never the path): `[a-z0-9-]`, unique.
    pub name: String,
    /// Requests whose path starts with this (`/bots` matches `/bots` and `/bots/...`).
    pub path_prefix: String,
    /// `ws://host:port/base`, or a Kubernetes Service as `name:port` (or
    /// `name.namespace:port`), or `localhost:port` for a sidecar.
    pub upstream: String,
    /// Remove `pathPrefix` from the path sent upstream.
    pub strip_prefix: bool,
    /// Extra request headers sent upstream.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Send the authenticated user id as `X-Chat-User`.
    pub forward_user: bool,
    /// Send the W3C `traceparent` upstream.
    pub forward_trace: bool,
    /// Deadline of one dial (TCP connect + WebSocket handshake).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra dial attempts after a failure.
    pub retries: u32,
    /// Wait before the first retry; doubles each time.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Open connections through this route at most (503 beyond); 0 = unlimited.
    pub max_connections: u32,
    /// Largest message piped in either direction (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Close a forwarded connection after this long without a frame in either direction
    /// (pings included); 0 = never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: String::new(),
            path_prefix: String::new(),
            upstream: String::new(),
            strip_prefix: false,
            headers: Default::default(),
            forward_user: true,
            forward_trace: true,
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            retry_backoff: Duration::from_millis(200),
            max_connections: 10_000,
            max_frame_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}
