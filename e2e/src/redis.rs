//! A real `redis-server` process on a free loopback port, for tests; plain, or serving
//! TLS only ([`RedisServer::start_tls`]).

use crate::process::free_port;
use crate::tls::TlsFiles;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server started by a test; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Data directory when persistent (append-only file, fsync always).
    dir: Option<std::path::PathBuf>,
    /// Persistence is by explicit snapshots only ([`snapshot`](Self::snapshot)).
    snapshots: bool,
    /// TLS only (no plain port): the certificates, and whether clients must show one.
    tls: Option<(TlsFiles, bool)>,
}

impl RedisServer {
    /// Starts an empty, non-persistent server on a free port.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: None,
            snapshots: false,
            tls: None,
        };
        r.spawn();
        r
    }

    /// Starts an empty, non-persistent server that speaks TLS only, with a certificate
    /// for 127.0.0.1 from a CA of its own ([`tls`](Self::tls)); with `mutual`, clients
    /// must show a certificate from that CA (`--tls-auth-clients yes`).
    pub fn start_tls(mutual: bool) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir: None,
            snapshots: false,
            tls: Some((TlsFiles::generate("chatgw test redis CA"), mutual)),
        };
        r.spawn();
        r
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|t| &t.0)
    }

    /// Starts a server that keeps only what [`snapshot`](Self::snapshot) saved: after
    /// [`stop`](Self::stop) and [`start_again`](Self::start_again) it comes back as of the
    /// last snapshot (a restore from an older backup, or a replica that lagged).
    pub fn start_with_snapshots() -> RedisServer {
        let mut r = RedisServer::start_persistent_without_spawn();
        r.snapshots = true;
        r.spawn();
        r
    }

    fn start_persistent_without_spawn() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "chatgw-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        RedisServer {
            child: None,
            port: free_port(),
            dir: Some(dir),
            snapshots: false,
            tls: None,
        }
    }

    /// Saves a snapshot (SAVE) that the next start loads.
    pub fn snapshot(&self) {
        let reply = self.command(&["SAVE"]).expect("SAVE");
        assert_eq!(reply, redis::Value::Okay, "SAVE: {reply:?}");
    }

    /// A Redis engine outside any gateway on this server, under `prefix`, delivering into
    /// `hub`; returns once it is healthy.
    pub async fn engine(
        &self,
        prefix: &str,
        hub: std::sync::Arc<chat_gateway::hub::Hub>,
    ) -> std::sync::Arc<chat_gateway::engine::redis::RedisEngine> {
        use chat_gateway::engine::Engine;
        let mut config = chat_gateway::config::Config::default();
        config.redis.url = self.url();
        config.redis.key_prefix = prefix.into();
        if let Some((files, mutual)) = &self.tls {
            config.redis.tls = files.config(*mutual);
        }
        let engine =
            chat_gateway::engine::redis::RedisEngine::new(hub, &config, Default::default())
                .expect("redis engine");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !engine.healthy() {
            assert!(
                Instant::now() < deadline,
                "redis engine never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::sync::Arc::new(engine)
    }

    /// Runs one command on the server (test set-up and inspection).
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = match &self.tls {
            Some((files, _)) => {
                redis::Client::build_with_tls(self.url(), files.redis_certificates())?
            }
            None => redis::Client::open(self.url())?,
        };
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// The session stored for a resume under `token` (`<prefix>:sess:<token>`, any
    /// prefix), parsed; None while there is none.
    pub fn stored_session(&self, token: &str) -> Option<serde_json::Value> {
        let pattern = format!("*:sess:{token}");
        let Ok(redis::Value::Array(keys)) = self.command(&["KEYS", &pattern]) else {
            return None;
        };
        let Some(redis::Value::BulkString(key)) = keys.first() else {
            return None;
        };
        let key = String::from_utf8_lossy(key).into_owned();
        match self.command(&["GET", &key]) {
            Ok(redis::Value::BulkString(v)) => serde_json::from_slice(&v).ok(),
            _ => None,
        }
    }

    /// How many times this server ran `command` (lowercase) without an error so far, a
    /// script's own commands included; 0 for one it never ran. From `INFO commandstats`,
    /// whose `calls` also counts the failures: an `EVALSHA` answered `NOSCRIPT` (the
    /// client then loads the script and calls again) would count twice.
    pub fn calls(&self, command: &str) -> u64 {
        self.stats(command)
            .map_or(0, |s| s.calls.saturating_sub(s.failed_calls))
    }

    /// How many times this server refused `command` (lowercase) before running it (an
    /// ACL), from `INFO commandstats`.
    pub fn rejected(&self, command: &str) -> u64 {
        self.stats(command).map_or(0, |s| s.rejected_calls)
    }

    /// `command`'s line of `INFO commandstats`, if it has one.
    fn stats(&self, command: &str) -> Option<CommandStats> {
        let info = self
            .command(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        let info: String = redis::from_redis_value(info).expect("INFO text");
        let found = command_stats(&info)
            .find(|(name, _)| *name == command)
            .map(|(_, s)| s);
        found
    }

    /// Starts a server that keeps its data across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again) (append-only file, fsync on every write).
    pub fn start_persistent() -> RedisServer {
        let mut r = RedisServer::start_persistent_without_spawn();
        r.spawn();
        r
    }

    /// Starts a stopped server again on the same port (with its data when persistent).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            Some((files, mutual)) => cmd.args(files.server_args(self.port, *mutual)),
            None => cmd.args(["--port", &self.port.to_string()]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", ""]);
        match &self.dir {
            Some(dir) if self.snapshots => cmd.args(["--appendonly", "no", "--dir"]).arg(dir),
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it: apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// URL of the server: `redis://`, or `rediss://` when it speaks TLS.
    pub fn url(&self) -> String {
        loopback_url(self.tls.is_some(), self.port)
    }

    /// Whether the server answers PING.
    pub fn ping(&self) -> bool {
        if self.tls.is_some() {
            // Through the redis crate's TLS (with the CA and the client certificate).
            return matches!(self.command(&["PING"]), Ok(redis::Value::SimpleString(s)) if s == "PONG");
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// A connection for administrative commands that stays open: it keeps working while
    /// `CONFIG SET maxclients` refuses new connections. Plain servers only.
    pub fn admin(&self) -> RedisAdmin {
        assert!(
            self.tls.is_none(),
            "admin() speaks plain TCP: use command() over TLS"
        );
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        RedisAdmin { stream }
    }

    /// Kills the server (SIGKILL); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::create_dir_all(dir);
        }
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The URL of a Redis on 127.0.0.1:`port`: `redis://`, `rediss://` with `tls`.
pub fn loopback_url(tls: bool, port: u16) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// One command's line of `INFO commandstats`.
pub struct CommandStats {
    /// Every call, the failed ones included.
    pub calls: u64,
    /// The calls answered with an error.
    pub failed_calls: u64,
    /// The calls refused before they ran (an ACL, wrong arguments), not in `calls`.
    pub rejected_calls: u64,
}

/// The commands of an `INFO commandstats` reply, each with its counts (0 for a count the
/// server does not report).
pub fn command_stats(info: &str) -> impl Iterator<Item = (&str, CommandStats)> {
    info.lines().filter_map(|line| {
        let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
        let field = |key: &str| -> u64 {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        Some((
            name,
            CommandStats {
                calls: field("calls"),
                failed_calls: field("failed_calls"),
                rejected_calls: field("rejected_calls"),
            },
        ))
    })
}

/// A raw connection to a test's Redis, for commands with one-line replies.
pub struct RedisAdmin {
    stream: TcpStream,
}

impl RedisAdmin {
    /// Kills the pub/sub connections and refuses new connections until
    /// [`end_outage`](Self::end_outage): the engines' open command connections go on, their
    /// subscribers cannot reconnect yet.
    pub fn start_pubsub_outage(&mut self) {
        assert_eq!(self.command(&["CONFIG", "SET", "maxclients", "1"]), "+OK");
        let killed = self.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(killed.starts_with(':') && killed != ":0", "{killed}");
    }

    /// Accepts new connections again.
    pub fn end_outage(&mut self) {
        let reply = self.command(&["CONFIG", "SET", "maxclients", "10000"]);
        assert_eq!(reply, "+OK");
    }

    /// Sends a command and returns the first line of its reply (`+OK`, `:1`, `-ERR ...`).
    pub fn command(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream
            .write_all(req.as_bytes())
            .expect("write to redis");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while self.stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        assert!(!line.is_empty(), "no reply from redis to {args:?}");
        String::from_utf8_lossy(&line).trim_end().to_string()
    }
}
