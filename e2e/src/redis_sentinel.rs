//! A real local Redis with Sentinel for tests: one master, one replica and three
//! sentinels (`redis-server <conf> --sentinel`), each a process on a free loopback port.
//! Killed and removed on drop. [`RedisSentinel::start_tls`]: all of them speak TLS only.

use crate::process::free_port;
use crate::redis_cluster::command_on;
use crate::tls::TlsFiles;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The master's name in the sentinels' configuration.
pub const MASTER_NAME: &str = "chat";

/// The ACL user the sentinels log in as (created on both servers at start): the tests
/// change the default user's rights (what the gateways log in as) to provoke faults, and
/// that must not also cut the sentinels' own links (their hello channel is a SUBSCRIBE).
const SENTINEL_USER: &str = "sentinel";
const SENTINEL_PASS: &str = "sentinel-test-pass";

struct Proc {
    child: Option<Child>,
    port: u16,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn text(v: redis::RedisResult<redis::Value>) -> String {
    match v {
        Ok(v) => redis::from_redis_value::<String>(v).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// One master, one replica, three sentinels (quorum 2, a master is down after 1 s).
pub struct RedisSentinel {
    servers: Vec<Proc>,
    sentinels: Vec<Proc>,
    root: PathBuf,
    tls: Option<TlsFiles>,
}

fn spawn(args: &[&str], dir: &PathBuf) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (make deps installs it: apt-get install redis-server)")
}

impl RedisSentinel {
    /// Starts the five processes; returns once the replica is in sync and every sentinel
    /// knows the master, the replica and the other sentinels (so a failover can happen).
    pub fn start() -> RedisSentinel {
        RedisSentinel::start_with(None)
    }

    /// The same over TLS only: clients, replication, and the Sentinels (to each other and
    /// to the servers), with a CA of its own that [`config`](Self::config) trusts.
    pub fn start_tls() -> RedisSentinel {
        RedisSentinel::start_with(Some(TlsFiles::generate("chatgw test sentinel CA")))
    }

    fn start_with(tls: Option<TlsFiles>) -> RedisSentinel {
        let root = std::env::temp_dir().join(format!(
            "chatgw-sentinel-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).expect("sentinel dir");
        let master = free_port();
        let mut s = RedisSentinel {
            servers: Vec::new(),
            sentinels: Vec::new(),
            root,
            tls,
        };
        for replica_of in [None, Some(master)] {
            let port = if replica_of.is_none() {
                master
            } else {
                free_port()
            };
            let p = port.to_string();
            let tls_args = s.tls.as_ref().map(|f| f.server_args(port, false));
            let mut args: Vec<&str> = match &tls_args {
                Some(a) => a.iter().map(String::as_str).collect(),
                None => vec!["--port", &p],
            };
            if tls_args.is_some() {
                args.extend(["--tls-replication", "yes"]);
            }
            args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            let sentinel_pass = format!(">{SENTINEL_PASS}");
            args.extend([
                "--user",
                SENTINEL_USER,
                "on",
                &sentinel_pass,
                "~*",
                "&*",
                "+@all",
            ]);
            let log = s.root.join(format!("server-{port}.log"));
            let log = log.to_string_lossy().to_string();
            args.extend(["--logfile", &log]);
            let of = replica_of.map(|m| m.to_string());
            if let Some(of) = &of {
                args.extend(["--replicaof", "127.0.0.1", of]);
            }
            let child = spawn(&args, &s.root);
            s.servers.push(Proc {
                child: Some(child),
                port,
            });
        }
        for i in 0..3 {
            let port = free_port();
            let conf = s.root.join(format!("sentinel-{i}.conf"));
            let listen = match &s.tls {
                Some(f) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    f.server_cert().display(),
                    f.server_key().display(),
                    f.ca().display()
                ),
                None => format!("port {port}\n"),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n\
                     sentinel auth-user {MASTER_NAME} {SENTINEL_USER}\n\
                     sentinel auth-pass {MASTER_NAME} {SENTINEL_PASS}\n\
                     logfile {}\n",
                    s.root.join(format!("sentinel-{i}.log")).display()
                ),
            )
            .expect("sentinel.conf");
            let conf = conf.to_string_lossy().to_string();
            let child = spawn(&[&conf, "--sentinel"], &s.root);
            s.sentinels.push(Proc {
                child: Some(child),
                port,
            });
        }
        s.wait("replica in sync", || {
            text(s.run(s.servers[1].port, &["INFO", "replication"]))
                .contains("master_link_status:up")
        });
        s.wait("sentinels see each other and the replica", || {
            s.sentinels.iter().all(|x| {
                let count = |what: &str| match s.run(x.port, &["SENTINEL", what, MASTER_NAME]) {
                    Ok(redis::Value::Array(v)) => v.len(),
                    _ => 0,
                };
                count("replicas") >= 1 && count("sentinels") >= 2
            })
        });
        s
    }

    fn wait(&self, what: &str, ok: impl FnMut() -> bool) {
        self.wait_up_to(what, Duration::from_secs(40), ok)
    }

    fn wait_up_to(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            if Instant::now() >= deadline {
                panic!("redis sentinel: {what} timed out\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every process's log, for a failure message: what the sentinels
    /// decided and the servers did is the only way to tell why a wait ran out.
    fn log_tails(&self) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        let mut out = String::new();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- {}\n{}\n", path.display(), tail.join("\n")));
        }
        out
    }

    /// The port of the master as the first live sentinel names it.
    pub fn master_port(&self) -> u16 {
        for x in self.sentinels.iter().filter(|x| x.child.is_some()) {
            let reply = self.run(
                x.port,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            );
            if let Ok(v) = reply {
                if let Ok((_, port)) = redis::from_redis_value::<(String, u16)>(v) {
                    return port;
                }
            }
        }
        panic!("no sentinel names a master")
    }

    /// The port of a live replica.
    pub fn replica_port(&self) -> u16 {
        let master = self.master_port();
        self.servers
            .iter()
            .find(|p| p.port != master && p.child.is_some())
            .map(|p| p.port)
            .expect("a live replica")
    }

    /// Kills sentinel `i` (of [`addresses`](Self::addresses)); the others keep quorum.
    pub fn kill_sentinel(&mut self, i: usize) {
        if let Some(x) = self.sentinels.get_mut(i) {
            x.kill();
        }
    }

    /// Sentinel URLs.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|x| {
                let scheme = if self.tls.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                format!("{scheme}://127.0.0.1:{}", x.port)
            })
            .collect()
    }

    /// A Redis engine config for this setup under `prefix`.
    pub fn config(&self, prefix: &str) -> chat_gateway::config::Config {
        let mut config = chat_gateway::config::Config::default();
        config.engine = chat_gateway::config::EngineKind::Redis;
        config.redis.mode = chat_gateway::config::RedisMode::Sentinel;
        config.redis.sentinel.master_name = MASTER_NAME.into();
        config.redis.sentinel.addresses = self.addresses();
        config.redis.key_prefix = prefix.into();
        if let Some(files) = &self.tls {
            config.redis.tls = files.config(false);
        }
        config
    }

    /// Environment for a gateway process on this setup.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("CHATGW_REDIS__MODE".into(), "sentinel".into()),
            (
                "CHATGW_REDIS__SENTINEL__MASTER_NAME".into(),
                MASTER_NAME.into(),
            ),
            (
                "CHATGW_REDIS__SENTINEL__ADDRESSES".into(),
                format!("[{}]", self.addresses().join(", ")),
            ),
        ];
        if let Some(files) = &self.tls {
            let ca = files.ca().display().to_string();
            env.push(("CHATGW_REDIS__TLS__CA_FILE".into(), ca));
        }
        env
    }

    /// Runs one command on the current master.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        self.run(self.master_port(), args)
    }

    /// Runs one command on the server or sentinel at `port` (over TLS in a TLS set-up).
    fn run(&self, port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
        command_on(port, self.tls.as_ref(), args)
    }

    /// `SENTINEL FAILOVER` (the replica promoted while the master is up, as for
    /// maintenance); waits until the old master follows the new one, in sync. Returns the
    /// new master's port.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let asked = self
            .sentinels
            .iter()
            .map(|x| self.run(x.port, &["SENTINEL", "FAILOVER", MASTER_NAME]))
            .find(|r| r.is_ok());
        assert!(asked.is_some(), "no sentinel accepted SENTINEL FAILOVER");
        let mut now = old;
        self.wait("the replica promoted", || {
            now = self.master_port();
            now != old && text(self.run(now, &["INFO", "replication"])).contains("role:master")
        });
        // Sentinel turns the old master into a replica only after it has reported itself
        // master for a while (INFO every 10 s), then the sync waits out the diskless
        // delay: ~16 s on an idle machine here; one CI run went past 40 s, one past 90 s
        // while the sentinels still logged in as the default user the test's ACLs change.
        let demoted = Duration::from_secs(90);
        self.wait_up_to("the old master in sync with the new one", demoted, || {
            text(self.run(old, &["INFO", "replication"])).contains("master_link_status:up")
        });
        now
    }

    /// Makes the replica fall behind: the master refuses it re-synchronising (an ACL
    /// without `PSYNC`/`SYNC` for the default user; the engine needs neither) and drops its
    /// link. Writes from now on exist on the master only, so a failover after this one
    /// hands the service a master with older data (what the epoch rule is for).
    pub fn cut_replication(&self) {
        let master = self.master_port();
        let acl = self.run(master, &["ACL", "SETUSER", "default", "-psync", "-sync"]);
        assert!(acl.is_ok(), "ACL SETUSER on the master: {acl:?}");
        let replica = self.replica_port();
        let _ = self.run(master, &["CLIENT", "KILL", "TYPE", "replica"]);
        self.wait("the replica's link down", || {
            text(self.run(replica, &["INFO", "replication"])).contains("master_link_status:down")
        });
    }

    /// Kills the master (SIGKILL) and waits until the sentinels promoted the replica;
    /// returns the new master's port.
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master_port();
        if let Some(p) = self.servers.iter_mut().find(|p| p.port == old) {
            p.kill();
        }
        let mut now = old;
        self.wait("failover to the replica", || {
            now = self.master_port();
            now != old && text(self.run(now, &["INFO", "replication"])).contains("role:master")
        });
        now
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for p in self.servers.iter_mut().chain(self.sentinels.iter_mut()) {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
