//! redis-server's work over a fan-out's measured window, for its figures per message: the
//! commands it ran (`INFO commandstats`, every command's `calls` summed, a script's own
//! commands included) and its CPU time (/proc), read at the window's start and end. The
//! messages they are divided by are those acknowledged in the same window: read from
//! outside the run (before and after the whole process), the totals took in the set-up and
//! the warm-up while the count of messages did not.

use std::net::SocketAddr;
use std::time::Duration;

/// The most one `INFO` may take: a Redis that does not answer leaves the figures out
/// rather than holding up the run.
const INFO_WAIT: Duration = Duration::from_secs(5);

/// Where to read: the server (`--redis`) and its process (`--redis-pid`).
pub(super) struct Probe {
    conn: Option<redis::aio::MultiplexedConnection>,
    pid: Option<u32>,
}

/// One reading; None for what could not be read.
#[derive(Clone, Copy)]
pub(super) struct Reading {
    calls: Option<u64>,
    cpu_secs: Option<f64>,
}

impl Probe {
    /// Connects to `addr` (set up before the window: connecting is no part of it).
    pub(super) async fn connect(addr: Option<SocketAddr>, pid: Option<u32>) -> Probe {
        let conn = match addr {
            Some(addr) => {
                let conn = async {
                    let client = redis::Client::open(format!("redis://{addr}/"))?;
                    client.get_multiplexed_async_connection().await
                };
                match tokio::time::timeout(INFO_WAIT, conn).await {
                    Ok(Ok(conn)) => Some(conn),
                    Ok(Err(e)) => {
                        eprintln!("fanout: redis {addr}: {e}");
                        None
                    }
                    Err(_) => {
                        eprintln!("fanout: redis {addr}: no connection within {INFO_WAIT:?}");
                        None
                    }
                }
            }
            None => None,
        };
        Probe { conn, pid }
    }

    /// The server's command count and CPU time now.
    pub(super) async fn read(&mut self) -> Reading {
        let calls = match self.conn.as_mut() {
            Some(conn) => {
                let mut info = redis::cmd("INFO");
                info.arg("commandstats");
                match tokio::time::timeout(INFO_WAIT, info.query_async::<String>(conn)).await {
                    Ok(Ok(info)) => Some(
                        crate::redis::command_stats(&info)
                            .map(|(_, s)| s.calls)
                            .sum(),
                    ),
                    _ => None,
                }
            }
            None => None,
        };
        let cpu_secs = self
            .pid
            .and_then(|pid| crate::procstat::usage(pid).ok())
            .map(|u| u.cpu_secs);
        Reading { calls, cpu_secs }
    }
}

/// Commands run and CPU µs between two readings (the later `INFO` counts the earlier one:
/// one command in a window's tens of thousands).
pub(super) fn between(from: Reading, to: Reading) -> (Option<u64>, Option<u64>) {
    let calls = from.calls.zip(to.calls).map(|(a, b)| b.saturating_sub(a));
    let cpu_us = from
        .cpu_secs
        .zip(to.cpu_secs)
        .map(|(a, b)| ((b - a).max(0.0) * 1e6).round() as u64);
    (calls, cpu_us)
}
