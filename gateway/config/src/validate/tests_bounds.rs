//! The upper bounds (`bounds.rs`), each at its edge: the most a key takes, and one more.

use super::tests::{bots_route, holds_the_edge};
use super::*;
use crate::RouteConfig;

type Set = fn(&mut Config, Duration);

#[test]
fn durations_past_their_bound_are_refused() {
    let hook = |c: &mut Config, d| {
        c.hooks.send = Some(crate::backend::HookConfig {
            url: "http://backend:8000/send".into(),
            breaker_cooldown: d,
            ..Default::default()
        })
    };
    let route = |c: &mut Config, d| {
        c.routes = vec![RouteConfig {
            retry_backoff: d,
            ..bots_route()
        }]
    };
    let retention = |c: &mut Config, d| {
        c.namespaces = vec![crate::NamespaceConfig {
            prefix: "game:".into(),
            retention: Some(crate::RetentionConfig {
                max_messages: 10,
                max_age: d,
            }),
            ..Default::default()
        }]
    };
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let bounds: [(&str, Set, Duration); 12] = [
        ("auth.jwt.leeway", |c, d| c.auth.jwt.leeway = d, hours(1)),
        (
            "heartbeat.interval",
            |c, d| c.heartbeat.interval = d,
            Duration::from_secs(600),
        ),
        (
            "limits.presenceLinger",
            |c, d| c.limits.presence_linger = d,
            Duration::from_secs(60),
        ),
        (
            "sessions.resumeTtl",
            |c, d| c.sessions.resume_ttl = d,
            hours(168),
        ),
        (
            "sessions.dedupWindow",
            |c, d| c.sessions.dedup_window = d,
            hours(24),
        ),
        (
            "history.maxAge",
            |c, d| c.history.max_age = d,
            hours(87_600),
        ),
        ("inbox.maxAge", |c, d| c.inbox.max_age = d, hours(87_600)),
        // (The drain's accept grace must stay shorter: it is 0 by default.)
        ("drain.timeout", |c, d| c.drain.timeout = d, hours(24)),
        (
            "drain.reconnectJitter",
            |c, d| c.drain.reconnect_jitter = d,
            Duration::from_secs(300),
        ),
        ("hooks.send.breakerCooldown", hook, hours(1)),
        (
            "retryBackoff must be at most 30s",
            route,
            Duration::from_secs(30),
        ),
        (
            "retention.maxAge must be at most 87600h",
            retention,
            hours(87_600),
        ),
    ];
    // `Duration::MAX`: what an `Instant` plus it, or a product of it, panicked on.
    for (key, set, most) in bounds {
        for past in [most + Duration::from_millis(1), Duration::MAX] {
            holds_the_edge(key, |c| set(c, most), |c| set(c, past));
        }
    }
}

#[test]
fn counts_past_their_bound_are_refused() {
    type SetN = fn(&mut Config, usize);
    let bounds: [(&str, SetN, usize); 8] = [
        (
            "limits.maxFrameBytes",
            |c, n| c.limits.max_frame_bytes = n,
            16 << 20,
        ),
        (
            "limits.roomsPerConnection",
            |c, n| c.limits.rooms_per_connection = n,
            100_000,
        ),
        (
            "limits.outboundQueueFrames",
            |c, n| c.limits.outbound_queue_frames = n,
            1_000_000,
        ),
        (
            "limits.outboundQueueBytes",
            |c, n| c.limits.outbound_queue_bytes = n,
            1 << 30,
        ),
        (
            "limits.historyPageBytes",
            |c, n| c.limits.history_page_bytes = n,
            1 << 30,
        ),
        (
            "limits.replayChunkBytes",
            |c, n| c.limits.replay_chunk_bytes = n,
            1 << 30,
        ),
        (
            "limits.presenceUsers",
            |c, n| c.limits.presence_users = n,
            1_000_000,
        ),
        (
            "server.maxHeaderBytes",
            |c, n| c.server.max_header_bytes = n,
            1 << 20,
        ),
    ];
    for (key, set, most) in bounds {
        // The frame bound needs a queue that holds a frame.
        let fits = |c: &mut Config| c.limits.outbound_queue_bytes = 1 << 30;
        holds_the_edge(
            key,
            |c| {
                fits(c);
                set(c, most)
            },
            |c| set(c, most + 1),
        );
        holds_the_edge(key, fits, |c| set(c, usize::MAX));
    }
    holds_the_edge(
        "limits.roomsPerConnection must be at least 1",
        |c| c.limits.rooms_per_connection = 1,
        |c| c.limits.rooms_per_connection = 0,
    );
    holds_the_edge(
        "hooks.join.retries must be at most 10",
        |c| c.hooks.join = Some(hook_with_retries(10)),
        |c| c.hooks.join = Some(hook_with_retries(11)),
    );
}

fn hook_with_retries(retries: u32) -> crate::backend::HookConfig {
    crate::backend::HookConfig {
        url: "http://backend:8000/join".into(),
        retries,
        ..Default::default()
    }
}
