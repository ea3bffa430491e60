//! What a failed Redis operation means, to each who hears of it.
//!
//! - Its effect: whether it ran ([`Effect`]), which decides the client's code
//!   (`unavailable`, `unknown_outcome`, `internal`).
//! - The client's message: a fixed text per cause. Redis' own text names keys, script
//!   hashes and lines, and node addresses; a chat client has no use for them, and a
//!   hostile one learns the deployment from them.
//! - The operator's line: Redis' own text, in the pod's log, through a
//!   [`LogGate`](crate::log_gate::LogGate) (a Redis outage fails every client's commands
//!   at once). `chatgateway_redis_errors_total` counts them all.

/// Whether a failed operation happened, as far as the gateway can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Redis refused or could not take it: the operation did not run.
    NotRun,
    /// Redis was asked and did not answer (a timeout, a connection lost mid-call): the
    /// operation may have run.
    Unknown,
    /// Redis answered with an error.
    Error,
}

impl Effect {
    /// The log line's `outcome`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Effect::NotRun => "not run",
            Effect::Unknown => "unknown",
            Effect::Error => "error",
        }
    }
}

/// A failed operation: its effect, what the client is told, and whether Redis is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Failure {
    pub effect: Effect,
    pub told: &'static str,
    /// Redis is up and taking commands, whatever this one's fate: the node's readiness
    /// does not count it as down. (Not while it fails over or loads: after
    /// `redis.readinessGrace` of that the pod turns unready.)
    up: bool,
}

/// What a client is told when Redis is full.
const OUT_OF_MEMORY: &str = "redis is out of memory (maxmemory) and refuses writes; retry later";
const UNREACHABLE: &str = "redis is unreachable";
const NOT_READY: &str = "redis is failing over or not ready";
const NO_ANSWER: &str = "redis did not answer in time";
const LOST: &str = "the connection to redis was lost";
const FAILED: &str = "the redis operation failed (the gateway logged why)";

impl Failure {
    /// No answer within the deadline.
    pub(super) const TIMED_OUT: Failure = Failure {
        effect: Effect::Unknown,
        told: NO_ANSWER,
        up: false,
    };

    /// What `e` means.
    pub(super) fn of(e: &redis::RedisError) -> Failure {
        let (effect, told, up) = if out_of_memory(e) {
            (Effect::NotRun, OUT_OF_MEMORY, true)
        } else if e.is_connection_refusal() {
            (Effect::NotRun, UNREACHABLE, false)
        } else if refused_unrun(e) {
            (Effect::NotRun, NOT_READY, false)
        } else if e.is_timeout() {
            (Effect::Unknown, NO_ANSWER, false)
        } else if e.is_connection_dropped() || e.is_io_error() {
            (Effect::Unknown, LOST, false)
        } else {
            (Effect::Error, FAILED, true)
        };
        Failure { effect, told, up }
    }

    /// Whether Redis is up (see the field).
    pub(super) fn redis_up(&self) -> bool {
        self.up
    }
}

/// Redis at `maxmemory` refused a write (`OOM`: `maxmemory-policy noeviction`, or nothing
/// left to evict). Redis decides it once, before a command or a script runs, so a script
/// stops at its first write with nothing written (ours only read or free memory before
/// theirs): the operation did not happen, and a retry (the same msg id) is safe. Redis is
/// up (reads still work: readiness stays); the error is counted, for the operator's alert.
fn out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
}

/// Redis refused the command before running it for a passing reason of the deployment: a
/// slot elsewhere or in mid-migration (`MOVED`, `ASK`, `TRYAGAIN`: the cluster client
/// follows them, this is what is left when its retries ran out during a failover), a
/// cluster or master down (`CLUSTERDOWN`, `MASTERDOWN`), a node loading its data
/// (`LOADING`), a demoted master (`READONLY`, until the new one is found). The client may
/// retry: `unavailable`, not `internal`.
fn refused_unrun(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    matches!(
        e.kind(),
        ErrorKind::Server(
            S::Moved
                | S::Ask
                | S::TryAgain
                | S::ClusterDown
                | S::MasterDown
                | S::BusyLoading
                | S::ReadOnly
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::RedisError;

    /// An error reply as Redis sends it (`-CODE detail`), parsed as the client parses it.
    fn reply(line: &str) -> RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn io(kind: std::io::ErrorKind) -> RedisError {
        std::io::Error::from(kind).into()
    }

    #[test]
    fn each_cause_has_its_effect_and_a_text_without_redis_internals() {
        use std::io::ErrorKind as Io;
        let (not_run, unknown, error) = (Effect::NotRun, Effect::Unknown, Effect::Error);
        let script = "script: fe03b4, on @user_script:36.";
        let cases = [
            (
                reply(&format!("WRONGTYPE Operation against a key {script}")),
                error,
                FAILED,
            ),
            (
                reply("ERR Script attempted to access nonexistent global"),
                error,
                FAILED,
            ),
            (
                reply(&format!("OOM command not allowed {script}")),
                not_run,
                OUT_OF_MEMORY,
            ),
            (reply("MOVED 3999 10.0.0.7:6379"), not_run, NOT_READY),
            (
                reply("LOADING Redis is loading the dataset"),
                not_run,
                NOT_READY,
            ),
            (
                reply("READONLY You can't write against a replica."),
                not_run,
                NOT_READY,
            ),
            (io(Io::ConnectionRefused), not_run, UNREACHABLE),
            (io(Io::TimedOut), unknown, NO_ANSWER),
            (io(Io::ConnectionReset), unknown, LOST),
        ];
        for (e, effect, told) in cases {
            let f = Failure::of(&e);
            assert_eq!((f.effect, f.told), (effect, told), "{e}");
            for internal in ["WRONGTYPE", "script", "10.0.0.7", "fe03b4", "global"] {
                assert!(!f.told.contains(internal), "{e}: {}", f.told);
            }
        }
    }

    #[test]
    fn redis_is_up_when_it_answered_an_error_or_is_full() {
        assert!(Failure::of(&reply("WRONGTYPE Operation against a key")).redis_up());
        assert!(Failure::of(&reply("OOM command not allowed")).redis_up());
        assert!(!Failure::of(&reply("LOADING Redis is loading")).redis_up());
        assert!(!Failure::of(&io(std::io::ErrorKind::ConnectionRefused)).redis_up());
        assert!(!Failure::of(&io(std::io::ErrorKind::ConnectionReset)).redis_up());
        assert!(!Failure::TIMED_OUT.redis_up());
    }
}
