//! Where the engine's Redis is and how it reaches it, per `redis.mode`: one server, a
//! Redis Cluster (the redis crate's cluster client routes every command by its keys' slot
//! and follows `MOVED`/`ASK`), or the master Sentinel names (asked once a second, so a
//! failover is followed without a restart). Over `rediss://`, the certificates of
//! `redis.tls` ([`super::tls`]) go to every client of the mode.

use crate::config::{RedisConfig, RedisMode};
use crate::engine::EngineError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, TlsMode, Value,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The command connection of a mode. Clones share the underlying connection(s).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (mode single, or sentinel's current master): reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per node, routed by slot.
    Cluster(ClusterConnection),
    /// Sentinel mode before any master was found: every call fails as not run.
    NoMaster,
}

fn no_master() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "no redis master known yet (asking the sentinels)",
    ))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::NoMaster => Box::pin(async { Err(no_master()) }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::NoMaster => Box::pin(async { Err(no_master()) }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            _ => 0,
        }
    }
}

/// A connection info from a URL with the configured credentials on top.
fn info(url: &str, cfg: &RedisConfig) -> Result<ConnectionInfo, EngineError> {
    let info = url
        .into_connection_info()
        .map_err(|e| EngineError::Internal(format!("redis url: {e}")))?;
    let mut redis = info.redis_settings().clone();
    if let Some(u) = &cfg.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &cfg.password {
        redis = redis.set_password(p);
    }
    Ok(info.set_redis_settings(redis))
}

/// How the engine reaches Redis in its mode.
pub(crate) enum Backend {
    /// One server.
    Single(Box<redis::Client>),
    /// A Redis Cluster: the command client (RESP2), and the seeds and certificates the
    /// subscriber builds its pub/sub client from (RESP3: pushes go to the subscriber).
    Cluster {
        commands: Box<ClusterClient>,
        seeds: Vec<ConnectionInfo>,
        certs: Option<TlsCertificates>,
    },
    /// The master Sentinel names.
    Sentinel(Arc<SentinelTarget>),
}

/// Connection timeouts shared by every mode.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Backend {
    /// The backend `cfg` describes (validated config: errors here are unexpected, apart
    /// from `redis.tls` files that cannot be read or hold no PEM).
    pub(crate) fn new(
        cfg: &RedisConfig,
        response_timeout: Duration,
    ) -> Result<Backend, EngineError> {
        let bad = |e: redis::RedisError| EngineError::Internal(format!("redis: {e}"));
        // Also checked at config load; here too for configs built in code, since the
        // cluster builder would turn redis:// seeds into TLS once given certificates.
        cfg.validate_tls_scheme()
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let certs = super::tls::certificates(&cfg.tls)?;
        match cfg.mode {
            RedisMode::Single => {
                let info = info(&cfg.url, cfg)?;
                let client = match certs {
                    // Replaces the system roots with the CA (and adds a client identity).
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                };
                Ok(Backend::Single(Box::new(client.map_err(bad)?)))
            }
            RedisMode::Cluster => {
                let seeds = cfg
                    .seeds()
                    .into_iter()
                    .map(|u| info(u, cfg))
                    .collect::<Result<Vec<_>, _>>()?;
                let commands = cluster_builder(seeds.clone(), certs.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .retries(3)
                    .build()
                    .map_err(bad)?;
                Ok(Backend::Cluster {
                    commands: Box::new(commands),
                    seeds,
                    certs,
                })
            }
            RedisMode::Sentinel => Ok(Backend::Sentinel(Arc::new(SentinelTarget::new(
                cfg, certs,
            )?))),
        }
    }

    /// A fresh command connection (lazy: nothing is dialled until the first command).
    pub(crate) fn connect(&self, config: &ConnectionManagerConfig) -> Result<Conn, EngineError> {
        let bad = |e: redis::RedisError| EngineError::Internal(format!("redis: {e}"));
        match self {
            Backend::Single(client) => {
                ConnectionManager::new_lazy_with_config((**client).clone(), config.clone())
                    .map(Conn::Single)
                    .map_err(bad)
            }
            Backend::Cluster { commands, .. } => Ok(Conn::Cluster(
                commands
                    .get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new()),
            )),
            Backend::Sentinel(s) => match s.master() {
                Some(client) => ConnectionManager::new_lazy_with_config(client, config.clone())
                    .map(Conn::Single)
                    .map_err(bad),
                None => Ok(Conn::NoMaster),
            },
        }
    }

    /// The client the single-server subscriber connects with now (the current master in
    /// sentinel mode), or None while no master is known.
    pub(crate) fn pubsub_client(&self) -> Option<redis::Client> {
        match self {
            Backend::Single(c) => Some((**c).clone()),
            Backend::Sentinel(s) => s.master(),
            Backend::Cluster { .. } => None,
        }
    }

    /// The database commands go to: the single server's URL's, else 0 (a cluster has only
    /// database 0; a Sentinel's master is used on 0).
    pub(crate) fn db(&self) -> i64 {
        match self {
            Backend::Single(c) => c.get_connection_info().redis_settings().db(),
            Backend::Cluster { .. } | Backend::Sentinel(_) => 0,
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }
}

/// A cluster client builder on `seeds`, with the `redis.tls` certificates when there are
/// any: they reach every node the client discovers, not only the seeds. (Without
/// `certs`, a `rediss://` seed still means TLS with the system roots.)
pub(crate) fn cluster_builder(
    seeds: Vec<ConnectionInfo>,
    certs: Option<TlsCertificates>,
) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(seeds);
    match certs {
        Some(certs) => builder.certs(certs),
        None => builder,
    }
}

/// The address a master's client is known by: the one it connects to, whatever a
/// Sentinel was asked before (see [`SentinelTarget::refresh`]); the asked one only for a
/// client on a Unix socket.
fn known_as(asked: (String, u16), client: &redis::Client) -> (String, u16) {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            (host.clone(), *port)
        }
        _ => asked,
    }
}

/// The master Sentinel names, as last found.
pub(crate) struct SentinelTarget {
    master_name: String,
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// A connection to a sentinel for the cheap once-a-second question.
    asking: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    current: Mutex<Option<(String, u16, redis::Client)>>,
}

impl SentinelTarget {
    fn new(
        cfg: &RedisConfig,
        certs: Option<TlsCertificates>,
    ) -> Result<SentinelTarget, EngineError> {
        let bad = |e: redis::RedisError| EngineError::Internal(format!("redis sentinel: {e}"));
        let mut addrs = Vec::new();
        let mut tls = false;
        for a in &cfg.sentinel.addresses {
            let i = a.as_str().into_connection_info().map_err(bad)?;
            tls |= matches!(i.addr(), ConnectionAddr::TcpTls { .. });
            addrs.push(i.addr().clone());
        }
        let mut b = SentinelClientBuilder::new(
            addrs,
            &cfg.sentinel.master_name,
            SentinelServerType::Master,
        )
        .map_err(bad)?;
        if tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            // One CA and client certificate for both: the Sentinels and the servers they
            // watch share a TLS setup (config validation allows `redis.tls` only with
            // rediss:// Sentinels, where the crate takes certificates for both sides).
            if let Some(certs) = certs {
                b = b
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs);
            }
        }
        if let Some(u) = &cfg.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &cfg.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &cfg.sentinel.username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &cfg.sentinel.password {
            b = b.set_client_to_sentinel_password(p);
        }
        Ok(SentinelTarget {
            master_name: cfg.sentinel.master_name.clone(),
            sentinel: tokio::sync::Mutex::new(b.build().map_err(bad)?),
            asking: tokio::sync::Mutex::new(None),
            current: Mutex::new(None),
        })
    }

    /// A client for the master as last found.
    pub(crate) fn master(&self) -> Option<redis::Client> {
        super::shared::lock(&self.current)
            .as_ref()
            .map(|c| c.2.clone())
    }

    /// Asks the sentinels where the master is; true when it moved since the last answer
    /// (the caller then replaces its connections). A new address is checked (the crate
    /// asks the node its role) before it is used.
    pub(crate) async fn refresh(&self) -> Result<bool, EngineError> {
        let addr = self.ask().await?;
        let known = super::shared::lock(&self.current)
            .as_ref()
            .map(|c| (c.0.clone(), c.1));
        if known.as_ref() == Some(&addr) {
            return Ok(false);
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT * 3, async {
            self.sentinel.lock().await.async_get_client().await
        })
        .await
        .map_err(|_| EngineError::Unavailable("the sentinels did not answer in time".into()))?
        .map_err(|e| EngineError::Unavailable(format!("redis sentinel: {e}")))?;
        let at = client.get_connection_info().addr().to_string();
        tracing::warn!(master = %self.master_name, at, "redis master (from sentinel)");
        // Stored under the address of the client the crate built, not the one asked: the
        // crate asks the Sentinels again, in their order, and during a failover one may
        // still name the old master. Stored under the asked (new) address, that client to
        // the old master was never replaced: every later answer matched, and once the old
        // master was demoted every write failed READONLY for good.
        let (host, port) = known_as(addr, &client);
        *super::shared::lock(&self.current) = Some((host, port, client));
        Ok(true)
    }

    /// `SENTINEL get-master-addr-by-name` on a sentinel (the first that answers).
    async fn ask(&self) -> Result<(String, u16), EngineError> {
        let mut asking = self.asking.lock().await;
        if asking.is_none() {
            let client = tokio::time::timeout(CONNECT_TIMEOUT * 3, async {
                self.sentinel.lock().await.async_get_sentinel_client().await
            })
            .await
            .map_err(|_| EngineError::Unavailable("no sentinel answered in time".into()))?
            .map_err(|e| EngineError::Unavailable(format!("redis sentinel: {e}")))?;
            let conn =
                tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
                    .map_err(|_| EngineError::Unavailable("sentinel connect timed out".into()))?
                    .map_err(|e| EngineError::Unavailable(format!("redis sentinel: {e}")))?;
            *asking = Some(conn);
        }
        let Some(conn) = asking.as_mut() else {
            return Err(EngineError::Unavailable("no sentinel connection".into()));
        };
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.master_name);
        let reply = tokio::time::timeout(
            CONNECT_TIMEOUT,
            cmd.query_async::<Option<(String, u16)>>(conn),
        )
        .await;
        match reply {
            Ok(Ok(Some(addr))) => Ok(addr),
            Ok(Ok(None)) => Err(EngineError::Unavailable(format!(
                "the sentinels know no master named {:?}",
                self.master_name
            ))),
            failed => {
                *asking = None; // ask another sentinel next time
                Err(EngineError::Unavailable(match failed {
                    Ok(Err(e)) => format!("redis sentinel: {e}"),
                    _ => "the sentinel did not answer in time".into(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_is_known_by_the_address_its_client_connects_to() {
        let client = redis::Client::open("redis://10.0.0.1:6379").expect("client");
        let asked = ("10.0.0.2".to_string(), 6379);
        assert_eq!(known_as(asked, &client), ("10.0.0.1".to_string(), 6379));
    }
}
