//! A real local Redis Cluster for tests: three masters and three replicas, each a
//! `redis-server --cluster-enabled yes` process on a free loopback port (its cluster bus on
//! another, given with `--cluster-port`), joined by `redis-cli --cluster create`. Killed
//! and removed on drop. [`RedisCluster::start_tls`] starts one that speaks TLS only, on its
//! cluster bus and between replicas too.

mod node;
mod slots;

pub use node::Node;

pub use slots::slot;

use crate::process::free_port;
use crate::tls::TlsFiles;
use slots::NodeLine;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs one command on the server at `port` (5 s timeouts).
pub fn command(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    command_on(port, None, args)
}

/// Runs one command on the server at `port`, over TLS with `tls`'s certificates.
pub fn command_on(
    port: u16,
    tls: Option<&TlsFiles>,
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let client = match tls {
        Some(files) => redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            files.redis_certificates(),
        )?,
        None => redis::Client::open(format!("redis://127.0.0.1:{port}"))?,
    };
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

fn text(v: redis::RedisResult<redis::Value>) -> String {
    match v {
        Ok(v) => redis::from_redis_value::<String>(v).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Three masters, three replicas.
pub struct RedisCluster {
    /// Every node; which are masters changes with failovers ([`masters`](Self::masters)).
    pub nodes: Vec<Node>,
    root: PathBuf,
    tls: Option<Arc<TlsFiles>>,
}

impl RedisCluster {
    /// Starts six nodes and creates the cluster; returns once every node reports
    /// `cluster_state:ok` and agrees on the slots.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(None)
    }

    /// The same over TLS only (clients, cluster bus, replication), with a CA of its own
    /// ([`tls`](Self::tls)); [`config`](Self::config) then trusts it.
    pub fn start_tls() -> RedisCluster {
        RedisCluster::start_with(Some(Arc::new(TlsFiles::generate("chatgw test cluster CA"))))
    }

    /// `redis-cli` with the TLS options of this cluster.
    fn redis_cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        if let Some(files) = &self.tls {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(files.ca())
                .arg("--cert")
                .arg(files.client_cert())
                .arg("--key")
                .arg(files.client_key());
        }
        cli.stdin(Stdio::null());
        cli
    }

    fn start_with(tls: Option<Arc<TlsFiles>>) -> RedisCluster {
        let root = std::env::temp_dir().join(format!(
            "chatgw-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let dir = root.join(port.to_string());
            std::fs::create_dir_all(&dir).expect("cluster node dir");
            let mut n = Node {
                child: None,
                port,
                bus_port: free_port(),
                dir,
                tls: tls.clone(),
                frozen: false,
            };
            n.spawn();
            nodes.push(n);
        }
        let cluster = RedisCluster { nodes, root, tls };
        for n in &cluster.nodes {
            cluster.wait(&format!("node {} up", n.port), || {
                text(n.command(&["PING"])) == "PONG"
            });
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = cluster
            .redis_cli()
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (make deps installs it: apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_stable();
        cluster
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            if Instant::now() >= deadline {
                panic!(
                    "redis cluster: {what} timed out; each live node's view:\n{}",
                    self.views()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `CLUSTER NODES` as each live node sees it, for a failure message.
    pub fn views(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| {
                let nodes = text(command_on(
                    n.port,
                    self.tls.as_deref(),
                    &["CLUSTER", "NODES"],
                ));
                format!("node {}:\n{nodes}", n.port)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every live node reports `cluster_state:ok`, `redis-cli --cluster
    /// check` finds every slot covered and the nodes agreeing, and the node the helpers
    /// ask ([`masters`](Self::masters) and the like) flags no live node as failing.
    pub fn wait_stable(&self) {
        self.wait("cluster state ok", || {
            self.nodes
                .iter()
                .filter(|n| n.alive())
                .all(|n| text(n.command(&["CLUSTER", "INFO"])).contains("cluster_state:ok"))
                && self.check()
                && self.live_nodes_seen_up()
        });
    }

    /// Whether `CLUSTER NODES` shows every live node without `fail` or `fail?`. A node
    /// merely suspected (`fail?`, a ping late by the node timeout on a busy machine)
    /// leaves `cluster_state:ok`, but `masters()` leaves such a master out.
    fn live_nodes_seen_up(&self) -> bool {
        let view = self.cluster_nodes();
        self.nodes.iter().filter(|n| n.alive()).all(|n| {
            view.iter()
                .any(|l| l.port == n.port && !l.flags.contains("fail"))
        })
    }

    fn check(&self) -> bool {
        let Some(n) = self.nodes.iter().find(|n| n.alive()) else {
            return false;
        };
        self.redis_cli()
            .args(["--cluster", "check", &format!("127.0.0.1:{}", n.port)])
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout);
                o.status.success()
                    && s.contains("[OK] All 16384 slots covered")
                    && !s.contains("[ERR]")
                    && !s.contains("[WARNING]")
            })
            .unwrap_or(false)
    }

    /// A Redis engine config for this cluster under `prefix`.
    pub fn config(&self, prefix: &str) -> chat_gateway::config::Config {
        let mut config = chat_gateway::config::Config::default();
        config.engine = chat_gateway::config::EngineKind::Redis;
        config.redis.mode = chat_gateway::config::RedisMode::Cluster;
        config.redis.nodes = self.seeds();
        config.redis.key_prefix = prefix.into();
        if let Some(files) = &self.tls {
            config.redis.tls = files.config(false);
        }
        config
    }

    /// Environment for a gateway process on this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("CHATGW_REDIS__MODE".into(), "cluster".into()),
            (
                "CHATGW_REDIS__NODES".into(),
                format!("[{}]", self.seeds().join(", ")),
            ),
        ];
        if let Some(files) = &self.tls {
            let ca = files.ca().display().to_string();
            env.push(("CHATGW_REDIS__TLS__CA_FILE".into(), ca));
        }
        env
    }

    /// Seed URLs (every live node).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(Node::url)
            .collect()
    }

    /// `(node id, port)` of the live masters that own slots, by port.
    pub fn masters(&self) -> Vec<(String, u16)> {
        let mut out: Vec<(String, u16)> = self
            .cluster_nodes()
            .into_iter()
            .filter(|l| {
                l.flags.contains("master") && !l.flags.contains("fail") && !l.slots.is_empty()
            })
            .map(|l| (l.id, l.port))
            .collect();
        out.sort_by_key(|m| m.1);
        out
    }

    /// The port of the master serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.cluster_nodes()
            .into_iter()
            .find(|l| {
                l.flags.contains("master")
                    && !l.flags.contains("fail")
                    && l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|l| l.port)
            .expect("a master serves every slot")
    }

    fn cluster_nodes(&self) -> Vec<NodeLine> {
        let Some(n) = self.nodes.iter().find(|n| n.alive()) else {
            return Vec::new();
        };
        text(n.command(&["CLUSTER", "NODES"]))
            .lines()
            .filter_map(NodeLine::parse)
            .collect()
    }

    /// Kills the master serving `slot` and waits until its replica took over.
    /// With `lag`, the replica is made to fall behind first: the master refuses `PSYNC`
    /// and drops its replica link, then takes writes for that long, which the promoted
    /// replica never gets.
    pub fn kill_master_of_slot(&mut self, slot: u16, lag: Option<Duration>) -> u16 {
        let port = self.master_of_slot(slot);
        if let Some(lag) = lag {
            for cmd in [
                &["ACL", "SETUSER", "default", "-psync", "-sync"][..],
                &["CLIENT", "KILL", "TYPE", "replica"],
            ] {
                let done = command_on(port, self.tls.as_deref(), cmd);
                assert!(done.is_ok(), "{cmd:?}: {done:?}");
            }
            std::thread::sleep(lag);
        }
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
        self.wait_promoted(slot, port);
        port
    }

    /// Freezes the master serving `slot` (SIGSTOP, see [`Node::freeze`]) and waits until
    /// its replica took over.
    pub fn freeze_master_of_slot(&mut self, slot: u16) -> u16 {
        let port = self.master_of_slot(slot);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.freeze();
        }
        self.wait_promoted(slot, port);
        port
    }

    fn wait_promoted(&self, slot: u16, port: u16) {
        self.wait("a replica promoted", || {
            self.cluster_nodes().iter().any(|l| {
                l.port != port
                    && l.flags.contains("master")
                    && !l.flags.contains("fail")
                    && l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
        });
    }

    /// Moves `count` slots from the master on port `from` to the one on port `to` with
    /// `redis-cli --cluster reshard` (keys migrate with them), while traffic may run.
    pub fn reshard(&self, from: u16, to: u16, count: u32) {
        let id = |port: u16| {
            self.masters()
                .into_iter()
                .find(|m| m.1 == port)
                .map(|m| m.0)
                .expect("a master on that port")
        };
        let out = self
            .redis_cli()
            .args(["--cluster", "reshard", &format!("127.0.0.1:{to}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "reshard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What each live node serves of sharded pub/sub, for a failed test's diagnosis: one
    /// line per node (port, role) with every shard channel and its subscriber count there.
    pub fn shard_subscriptions(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let tls = self.tls.as_deref();
            let role = match command_on(n.port, tls, &["ROLE"]) {
                Ok(redis::Value::Array(v)) => v.first().map(|r| text(Ok(r.clone()))),
                _ => None,
            };
            let channels: Vec<String> = command_on(n.port, tls, &["PUBSUB", "SHARDCHANNELS"])
                .ok()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let mut args = vec!["PUBSUB", "SHARDNUMSUB"];
            args.extend(channels.iter().map(String::as_str));
            let counts: Vec<(String, u64)> = command_on(n.port, tls, &args)
                .ok()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            out.push_str(&format!(
                "node {} ({}): {counts:?}\n",
                n.port,
                role.unwrap_or_default()
            ));
        }
        out
    }

    /// Sums `INFO commandstats` calls of each command over the live masters.
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for (_, port) in self.masters() {
            let info = text(command_on(
                port,
                self.tls.as_deref(),
                &["INFO", "commandstats"],
            ));
            for (name, stats) in crate::redis::command_stats(&info) {
                *out.entry(name.to_string()).or_insert(0) += stats.calls;
            }
        }
        out
    }

    /// Resets the command statistics of every live node.
    pub fn reset_stats(&self) {
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let _ = n.command(&["CONFIG", "RESETSTAT"]);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
