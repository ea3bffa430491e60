//! The validation's rules, each shown at its edge: the last value it takes and the first it refuses.

use super::*;
use crate::{RouteConfig, RESERVED_PATHS};

/// The documented defaults are checked against docs/configuration.md itself
/// (tests/documented_defaults.rs); a route's idle timeout is in an example there.
#[test]
fn a_routes_idle_timeout_defaults_to_five_minutes() {
    assert_eq!(
        RouteConfig::default().idle_timeout,
        Duration::from_secs(300)
    );
}

/// A config that validates: insecure auth, as the tests use it, on loopback (insecure
/// auth refuses any other address).
pub(super) fn on_loopback() -> Config {
    let mut c = Config::default();
    c.auth.mode = AuthMode::Insecure;
    c.server.listen = "127.0.0.1:8080".parse().expect("addr");
    c
}

/// A setting at its edge (`at`) is valid; past it (`past`) it is refused, the error
/// naming `key`.
pub(super) fn holds_the_edge(
    key: &str,
    at: impl FnOnce(&mut Config),
    past: impl FnOnce(&mut Config),
) {
    let mut c = on_loopback();
    at(&mut c);
    c.validate().expect("valid");
    past(&mut c);
    let err = c.validate().expect_err("refused");
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn an_accept_grace_not_shorter_than_the_drain_timeout_is_refused() {
    holds_the_edge(
        "drain.acceptGrace",
        |c| c.drain.accept_grace = c.drain.timeout - Duration::from_millis(1),
        |c| c.drain.accept_grace = c.drain.timeout,
    );
}

#[test]
fn an_api_reload_interval_under_100ms_is_refused() {
    holds_the_edge(
        "api.reloadInterval",
        |c| c.api.reload_interval = Duration::from_millis(100),
        |c| c.api.reload_interval = Duration::ZERO,
    );
}

#[test]
fn a_listen_backlog_of_zero_is_refused() {
    holds_the_edge(
        "server.listenBacklog",
        |_| {},
        |c| c.server.listen_backlog = 0,
    );
}

#[test]
fn a_max_header_bytes_under_hypers_floor_is_refused() {
    holds_the_edge(
        "server.maxHeaderBytes",
        |c| c.server.max_header_bytes = 8192,
        |c| c.server.max_header_bytes = 8191,
    );
}

#[test]
fn a_presence_users_of_zero_is_refused() {
    holds_the_edge(
        "limits.presenceUsers",
        |c| c.limits.presence_users = 1,
        |c| c.limits.presence_users = 0,
    );
}

#[test]
fn a_memory_budget_holds_a_mebibyte_and_four_of_the_largest_frames() {
    holds_the_edge(
        "memory.maxBytes",
        |c| c.memory.max_bytes = Some(1 << 20),
        |c| c.memory.max_bytes = Some((1 << 20) - 1),
    );
    holds_the_edge(
        "memory.maxBytes",
        |c| {
            c.limits.max_frame_bytes = 512 << 10;
            c.memory.max_bytes = Some(2 << 20);
        },
        |c| c.limits.max_frame_bytes += 1,
    );
}

#[test]
fn a_memory_budget_with_the_redis_engine_is_refused() {
    holds_the_edge(
        "memory.maxBytes applies to engine: memory",
        |c| c.engine = EngineKind::Redis,
        |c| c.memory.max_bytes = Some(1 << 30),
    );
}

#[test]
fn a_presence_batch_over_5s_is_refused() {
    holds_the_edge(
        "limits.presenceBatch",
        |c| c.limits.presence_batch = Duration::from_secs(5),
        |c| c.limits.presence_batch = Duration::from_millis(5001),
    );
}

#[test]
fn a_fanout_batch_over_1s_is_refused() {
    holds_the_edge(
        "limits.fanoutBatch",
        |c| c.limits.fanout_batch = Duration::from_secs(1),
        |c| c.limits.fanout_batch = Duration::from_millis(1001),
    );
}

#[test]
fn an_optional_budget_needs_a_rate_and_a_burst() {
    type Set = fn(&mut Config, f64, u32);
    let budgets: [(&str, Set); 2] = [
        ("limits.frameRate", |c, r, b| {
            (c.limits.frame_rate, c.limits.frame_burst) = (r, b)
        }),
        ("limits.userMessageRate", |c, r, b| {
            (c.limits.user_message_rate, c.limits.user_message_burst) = (r, b)
        }),
    ];
    for (key, set) in budgets {
        let mut c = on_loopback();
        set(&mut c, 0.5, 1);
        c.validate().expect("valid");
        set(&mut c, 0.0, 0);
        c.validate().expect("0: no limit");
        for (rate, burst) in [(10.0, 0), (-1.0, 100), (f64::NAN, 100), (f64::INFINITY, 1)] {
            set(&mut c, rate, burst);
            let err = c.validate().expect_err("refused");
            assert!(err.to_string().contains(key), "{key} {rate} {burst}: {err}");
        }
    }
}

#[test]
fn jwt_mode_without_key_is_refused() {
    let e = Config::load(None, Vec::new()).expect_err("no key");
    assert!(e.to_string().contains("auth.jwt.secret"), "{e}");
}

fn jwt(secret: &str, audience: Option<&str>) -> Config {
    let mut c = Config::default();
    c.auth.jwt.secret = Some(secret.into());
    c.auth.jwt.audience = audience.map(Into::into);
    c
}

#[test]
fn short_hs256_secrets_and_a_missing_audience_are_refused() {
    let long = "0123456789abcdef0123456789abcdef";
    assert!(jwt(long, Some("chat")).validate().is_ok());
    let e = jwt("too-short", Some("chat"))
        .validate()
        .expect_err("short");
    assert!(e.to_string().contains("shorter than 32 bytes"), "{e}");
    let e = jwt(long, None).validate().expect_err("no aud");
    assert!(e.to_string().contains("auth.jwt.audience"), "{e}");
    let mut any_aud = jwt(long, None);
    any_aud.auth.jwt.require_audience = false;
    assert!(any_aud.validate().is_ok(), "explicitly disabled");
}

#[test]
fn insecure_mode_stays_on_loopback_unless_told_loudly() {
    let mut c = Config::default();
    c.auth.mode = AuthMode::Insecure;
    let e = c.validate().expect_err("0.0.0.0");
    assert!(
        e.to_string().contains("dangerouslyAllowInsecureOnNetwork"),
        "{e}"
    );
    c.server.listen = "127.0.0.1:8080".parse().expect("addr");
    assert!(c.validate().is_ok());
    c.server.listen = "[::1]:8080".parse().expect("addr");
    assert!(c.validate().is_ok());
    c.server.listen = "0.0.0.0:8080".parse().expect("addr");
    c.auth.dangerously_allow_insecure_on_network = true;
    assert!(c.validate().is_ok());
}

#[test]
fn upstreams() {
    assert_eq!(
        upstream_url("bots:9000").map(|u| u.to_string()),
        Ok("ws://bots:9000/".into())
    );
    assert!(upstream_url("ws://a.b.svc:80/base").is_ok());
    assert!(upstream_url("wss://x:443")
        .unwrap_err()
        .contains("not supported"));
    assert!(upstream_url("http://x:80").is_err());
    assert!(upstream_url("ws://x:80/?q=1").is_err());
    assert!(upstream_url("").is_err());
}

#[test]
fn routes_may_not_shadow_the_gateways_own_paths() {
    let with_prefix = |p: &str| {
        let mut c = on_loopback();
        c.routes = vec![RouteConfig {
            name: "r".into(),
            path_prefix: p.into(),
            upstream: "s:80".into(),
            ..Default::default()
        }];
        c.validate()
    };
    for p in RESERVED_PATHS {
        assert!(with_prefix(p).is_err(), "{p}");
        assert!(with_prefix(&format!("{p}/x")).is_err(), "{p}/x");
        assert!(
            with_prefix(&format!("{p}x")).is_ok(),
            "{p}x is another path"
        );
    }
    assert!(with_prefix("/").is_err());
    assert!(with_prefix("/bots").is_ok());
}

#[test]
fn an_empty_api_key_is_refused() {
    holds_the_edge(
        "api.keys[1]",
        |c| {
            c.api.listen = Some("127.0.0.1:9090".parse().expect("addr"));
            c.api.keys = vec!["k".into(), "k2".into()];
        },
        |c| c.api.keys[1] = " ".into(),
    );
}

#[test]
fn a_hook_timeout_of_zero_is_refused() {
    let hook = || crate::backend::HookConfig {
        url: "http://backend:8000/join".into(),
        ..Default::default()
    };
    holds_the_edge(
        "hooks.join.timeout",
        |c| c.hooks.join = Some(hook()),
        |c| {
            c.hooks.join = Some(crate::backend::HookConfig {
                timeout: Duration::ZERO,
                ..hook()
            })
        },
    );
    // No call could ever go out.
    holds_the_edge(
        "hooks.join.maxConcurrent",
        |c| c.hooks.join = Some(hook()),
        |c| {
            c.hooks.join = Some(crate::backend::HookConfig {
                max_concurrent: 0,
                ..hook()
            })
        },
    );
    let events = || crate::backend::EventsConfig {
        url: "http://backend:8000/events".into(),
        ..Default::default()
    };
    // Every post would time out at once, and a batch is retried until it is taken.
    holds_the_edge(
        "hooks.events.timeout",
        |c| c.hooks.events = Some(events()),
        |c| {
            c.hooks.events = Some(crate::backend::EventsConfig {
                timeout: Duration::ZERO,
                ..events()
            })
        },
    );
}

/// The Redis engine hands these to Redis in whole milliseconds (`SET … PX`, `PEXPIRE`):
/// 0 ms is refused by `PX` (in publish.lua after the message was already appended:
/// stored, never published) and deletes the key under `PEXPIRE`.
#[test]
fn stored_durations_under_1ms_are_refused() {
    type Set = fn(&mut Config, Duration);
    let durations: [(&str, Set); 4] = [
        ("sessions.dedupWindow", |c, d| c.sessions.dedup_window = d),
        ("sessions.resumeTtl", |c, d| c.sessions.resume_ttl = d),
        ("history.maxAge", |c, d| c.history.max_age = d),
        ("inbox.maxAge", |c, d| c.inbox.max_age = d),
    ];
    for (key, set) in durations {
        for under in [Duration::ZERO, Duration::from_micros(999)] {
            holds_the_edge(
                &format!("{key} must be at least 1ms"),
                |c| set(c, Duration::from_millis(1)),
                |c| set(c, under),
            );
        }
    }
}

#[test]
fn a_namespace_retention_max_age_under_1ms_is_refused() {
    let with_max_age = |max_age| {
        let mut c = on_loopback();
        c.namespaces = vec![crate::NamespaceConfig {
            prefix: "game:".into(),
            retention: Some(crate::RetentionConfig {
                max_messages: 10,
                max_age,
            }),
            ..Default::default()
        }];
        c.validate()
    };
    with_max_age(Duration::from_millis(1)).expect("1ms is valid");
    for under in [Duration::ZERO, Duration::from_micros(500)] {
        let err = with_max_age(under).expect_err("refused").to_string();
        assert!(
            err.contains("namespaces[0]") && err.contains("retention.maxAge must be at least 1ms"),
            "{err}"
        );
    }
}

/// The token check counts the leeway in whole seconds (jsonwebtoken's `leeway`), the 4401
/// close timer in milliseconds: `1500ms` would be 1 s at connect and 1.5 s at the close.
#[test]
fn a_jwt_leeway_that_is_not_whole_seconds_is_refused() {
    holds_the_edge(
        "auth.jwt.leeway must be whole seconds",
        |c| c.auth.jwt.leeway = Duration::from_secs(2),
        |c| c.auth.jwt.leeway = Duration::from_millis(1500),
    );
    holds_the_edge(
        "auth.jwt.leeway must be whole seconds",
        |c| c.auth.jwt.leeway = Duration::ZERO,
        |c| c.auth.jwt.leeway = Duration::from_millis(500),
    );
}

/// A valid route, `/bots` to `bots:9000`.
pub(super) fn bots_route() -> RouteConfig {
    RouteConfig {
        name: "bots".into(),
        path_prefix: "/bots".into(),
        upstream: "bots:9000".into(),
        ..Default::default()
    }
}

/// The CRD's bounds of a route, held by the gateway too: at most 10 retries (each one a
/// wait a client sits out holding its slots) and messages of at most 64 MiB (whose
/// buffer size overflowed near `usize::MAX`).
#[test]
fn a_route_holds_the_crds_bounds() {
    holds_the_edge(
        "retries must be at most 10",
        |c| {
            c.routes = vec![RouteConfig {
                retries: 10,
                ..bots_route()
            }]
        },
        |c| {
            c.routes = vec![RouteConfig {
                retries: 11,
                ..bots_route()
            }]
        },
    );
    holds_the_edge(
        "maxFrameBytes must be from 256",
        |c| {
            c.routes = vec![RouteConfig {
                max_frame_bytes: 64 << 20,
                ..bots_route()
            }]
        },
        |c| {
            c.routes = vec![RouteConfig {
                max_frame_bytes: usize::MAX,
                ..bots_route()
            }]
        },
    );
}

/// Every dial would time out at once: the route answers 502 to every client.
#[test]
fn a_route_connect_timeout_of_zero_is_refused() {
    holds_the_edge(
        "connectTimeout must be positive",
        |c| {
            c.routes = vec![RouteConfig {
                connect_timeout: Duration::from_millis(1),
                ..bots_route()
            }]
        },
        |c| {
            c.routes = vec![RouteConfig {
                connect_timeout: Duration::ZERO,
                ..bots_route()
            }]
        },
    );
}
