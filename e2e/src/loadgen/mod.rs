//! `chat-loadgen`: load against one gateway on loopback, with numbers a human and a
//! machine can read. Modes: `idle` (hold N connections), `fanout` (rooms x members with
//! publishers), `churn` (connect/join/leave/close at a rate), `storm` (N members join one
//! room at once; presence frames counted), `floor` (no gateway: what the kernel alone costs
//! a fan-out here), `stub` (a bare WebSocket endpoint: the connect floor).

pub mod churn;
pub mod conn;
pub mod fanout;
pub mod floor;
pub mod idle;
mod raw;
mod redis_stats;
pub mod stats;
pub mod storm;
pub mod stub;
mod upgrade;

use crate::procstat;
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How a run's members read what the gateway sends them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reader {
    /// A tokio task and a tungstenite stream per member (the default).
    Tungstenite,
    /// One thread reading every member's raw frames over one epoll (`raw`).
    Raw,
}

/// Command line of `chat-loadgen`.
#[derive(Parser, Debug)]
#[command(about = "Load generator for chatgateway (loopback targets only)")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Options every mode shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Gateway address; only 127.0.0.0/8 and ::1 are accepted.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,
    /// Gateway pid, for its CPU time and RSS from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// HS256 secret: sign a JWT per user; without it, insecure dev mode (`?user=`).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Client source addresses 127.0.0.2 .. 127.0.0.(1+N), spread round-robin.
    #[arg(long, default_value_t = 32)]
    pub source_ips: u8,
    /// Hard cap on the run time.
    #[arg(long, default_value = "60s", value_parser = humantime_parse)]
    pub max_time: Duration,
    /// Also print a human-readable table.
    #[arg(long)]
    pub table: bool,
    /// Label for the summary line.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[cfg(test)]
impl Common {
    /// A test run's options against `target`: `?user=` connects from two source
    /// addresses, no gateway pid, 30 s at most.
    pub(crate) fn for_test(target: SocketAddr) -> Common {
        Common {
            target,
            pid: None,
            jwt_secret: None,
            source_ips: 2,
            max_time: Duration::from_secs(30),
            table: false,
            label: String::new(),
        }
    }
}

/// The modes.
#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Open N authenticated connections, hold them, report connect rate and RSS per conn.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// How long to hold them before measuring.
        #[arg(long, default_value = "3s", value_parser = humantime_parse)]
        hold: Duration,
    },
    /// R rooms x M members, P publishers; delivered/s, latency, drops, CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        shape: fanout::Shape,
    },
    /// Connect, authenticate, join, leave, close, at a target rate.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Cycles per second to attempt.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Cycles in flight at most.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Measured duration.
        #[arg(long, default_value = "10s", value_parser = humantime_parse)]
        duration: Duration,
    },
    /// N members join one room at once; presence frames they receive (vs N²/2).
    Storm {
        #[command(flatten)]
        common: Common,
        /// Members joining.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Connections being opened at once (before the storm).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// The room.
        #[arg(long, default_value = "storm")]
        room: String,
    },
    /// No gateway: one thread writes a `msg` frame to N loopback sockets in turn at a
    /// rate; its CPU per delivery is the kernel's floor under the `fanout` figures.
    Floor {
        #[command(flatten)]
        shape: floor::FloorShape,
    },
    /// Serve as a bare WebSocket endpoint (a `101` and a `welcome`, nothing more) until
    /// killed: `idle` against it measures connects with no gateway behind them.
    Stub {
        /// Where to listen (loopback only; port 0 picks one, printed first).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

pub(crate) fn humantime_parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Refuses any target outside loopback: load tests never leave the machine.
pub fn check_loopback(target: &SocketAddr) -> Result<(), String> {
    let ok = match target.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "refusing target {target}: chat-loadgen only targets loopback (127.0.0.0/8, ::1)"
        ))
    }
}

/// Runs the chosen mode; returns the one-line JSON summary.
pub async fn run(cli: Cli) -> Result<serde_json::Value, String> {
    let limit = procstat::raise_fd_limit();
    match cli.mode {
        Mode::Idle {
            common,
            connections,
            concurrency,
            hold,
        } => {
            check_loopback(&common.target)?;
            // Two fds of headroom per hundred for the runtime and stdio.
            let fit = limit.saturating_sub(64) as usize;
            if connections > fit {
                return Err(format!(
                    "{connections} connections do not fit: open-file limit is {limit} per process (hard limit); use at most {fit}"
                ));
            }
            idle::idle(&common, connections, concurrency, hold).await
        }
        Mode::Fanout { common, shape } => {
            check_loopback(&common.target)?;
            for p in shape.publish_to.iter().chain(&shape.redis) {
                check_loopback(p)?;
            }
            let needed = shape.rooms * shape.members + shape.publishers;
            if needed as u64 + 64 > limit {
                return Err(format!(
                    "{needed} connections do not fit under the open-file limit {limit}"
                ));
            }
            fanout::fanout(&common, shape).await
        }
        Mode::Churn {
            common,
            rate,
            concurrency,
            duration,
        } => {
            check_loopback(&common.target)?;
            churn::churn(&common, rate, concurrency, duration).await
        }
        Mode::Storm {
            common,
            members,
            concurrency,
            room,
        } => {
            check_loopback(&common.target)?;
            if members as u64 + 64 > limit {
                return Err(format!(
                    "{members} connections do not fit under the open-file limit {limit}"
                ));
            }
            storm::storm(&common, members, concurrency, &room).await
        }
        Mode::Floor { shape } => {
            // Both ends of every socket are in this process.
            if 2 * shape.members as u64 + 64 > limit {
                return Err(format!(
                    "{} sockets do not fit under the open-file limit {limit}",
                    2 * shape.members
                ));
            }
            floor::floor(shape).await
        }
        Mode::Stub { listen } => stub::stub(listen).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback(&"127.0.0.1:8080".parse().expect("addr")).is_ok());
        assert!(check_loopback(&"127.9.9.9:1".parse().expect("addr")).is_ok());
        assert!(check_loopback(&"[::1]:80".parse().expect("addr")).is_ok());
        assert!(check_loopback(&"10.0.0.1:8080".parse().expect("addr")).is_err());
        assert!(check_loopback(&"192.168.1.1:8080".parse().expect("addr")).is_err());
        assert!(check_loopback(&"8.8.8.8:80".parse().expect("addr")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(humantime_parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(humantime_parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(humantime_parse("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_parse("3h").is_err());
    }
}
