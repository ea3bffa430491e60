//! A room's keys in a real redis-server expire (its stream two max ages after the last
//! refresh, its meta a week later), and a publish refreshes them only when less than one
//! and a half max ages are left or the stream has none yet, not on every message. A
//! listing of some of a big room's users costs Redis what it lists, not the room. A room
//! whose meta went from over its stream starts a new epoch at its next message; a Redis at
//! `maxmemory` answers a send `unavailable`, with nothing half-written. A user
//! reconnecting in a loop keeps `sessions.keptPerUser` stored sessions, not one per
//! connection for `sessions.resumeTtl`; and starts at most `limits.newRoomsPerHour` rooms
//! and inboxes an hour, on all pods together.

use chat_gateway::config::Config;
use chat_gateway::engine::Engine;
use chat_gateway::hub::Hub;
use e2e::engines::message;
use e2e::gateways::Gateways;
use e2e::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
const WEEK_MS: i64 = 7 * 24 * HOUR_MS;

/// A Redis engine on `redis` under `prefix`, keeping room history for `max_age`.
async fn engine(redis: &RedisServer, prefix: &str, max_age: Duration) -> Arc<dyn Engine> {
    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.key_prefix = prefix.into();
    config.history.max_age = max_age;
    e2e::engines::start(&config, Arc::new(Hub::default())).await
}

async fn publish(engine: &dyn Engine, room: &str, n: u64) {
    let published = engine.publish(message(room, n)).await.expect("publish");
    assert!(!published.duplicate, "message {n} is new");
}

/// The key's time to live in ms (-1: none, -2: no key).
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    match redis.command(&["PTTL", key]) {
        Ok(redis::Value::Int(ms)) => ms,
        other => panic!("PTTL {key}: {other:?}"),
    }
}

fn fresh_prefix() -> String {
    format!("x{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_s_keys_expire_and_messages_do_not_refresh_them_each_time() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    let (meta, stream) = (format!("{prefix}:{{r}}:m"), format!("{prefix}:{{r}}:s"));
    let before = redis.calls("pexpire");
    for n in 1..=20 {
        publish(&*engine, "r", n).await;
    }
    // The first message gave both keys their expiry; the other 19 left it.
    assert_eq!(
        redis.calls("pexpire") - before,
        2,
        "one refresh of meta and stream"
    );
    let (m, s) = (pttl(&redis, &meta), pttl(&redis, &stream));
    assert!(
        s > HOUR_MS && s <= 2 * HOUR_MS,
        "stream lives two max ages: {s} ms"
    );
    assert!(
        m > WEEK_MS + HOUR_MS && m <= WEEK_MS + 2 * HOUR_MS,
        "meta a week longer: {m} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gone_under_its_meta_gets_an_expiry_again() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    let stream = format!("{prefix}:{{r}}:s");
    publish(&*engine, "r", 1).await;
    // As an eviction would: the stream goes, the meta (and its record of the expiry) stays.
    redis.command(&["DEL", &stream]).expect("DEL");
    publish(&*engine, "r", 2).await;
    let s = pttl(&redis, &stream);
    assert!(
        s > HOUR_MS && s <= 2 * HOUR_MS,
        "the new stream expires: {s} ms"
    );
}

/// The other way round: a meta gone from over its stream (evicted first under an evicting
/// `maxmemory-policy`, or deleted by hand). Every publish to the room was refused
/// (`internal`: XADD will not take seq 1 under the stream's top) until the seq counter,
/// starting over, passed the old top: as many failed sends as the room had messages. Now
/// the first publish starts a new epoch on an empty stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_gone_from_over_its_stream_starts_a_new_epoch_at_once() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    for n in 1..=3 {
        publish(&*engine, "r", n).await;
    }
    let all = || chat_gateway::engine::HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    let old = engine.history("r", all()).await.expect("page");
    assert_eq!(old.messages.len(), 3);
    redis
        .command(&["DEL", &format!("{prefix}:{{r}}:m")])
        .expect("DEL");
    let published = engine.publish(message("r", 4)).await.expect("publish");
    assert_eq!(published.at.seq, 1);
    assert_ne!(published.at.epoch, old.epoch, "a new epoch");
    let page = engine.history("r", all()).await.expect("page");
    assert_eq!(page.epoch, published.at.epoch);
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1], "the new epoch's message alone");
}

/// A Redis at `maxmemory` under `noeviction` refuses writes. A send answered `internal`
/// with Redis' own text (the script's sha and line); it is `unavailable` now, the
/// client's cue to retry, and the retry with the same msg id is the message's only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_answers_unavailable_and_a_retry_stores_the_message_once() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let engine = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    publish(&*engine, "r", 1).await;
    // One byte: every write is refused.
    for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        redis.command(&["CONFIG", "SET", k, v]).expect("CONFIG SET");
    }
    let refused = engine.publish(message("r", 2)).await;
    match &refused {
        Err(chat_gateway::engine::EngineError::Unavailable(m)) => {
            assert!(m.contains("out of memory"), "{m}")
        }
        other => panic!("a full Redis answered {other:?}"),
    }
    redis
        .command(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("CONFIG SET");
    let retried = engine.publish(message("r", 2)).await.expect("retry");
    assert_eq!(
        (retried.at.seq, retried.duplicate),
        (2, false),
        "nothing was half-stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_max_age_refreshes_the_expiry_at_once() {
    let redis = RedisServer::start();
    let prefix = fresh_prefix();
    let short = engine(&redis, &prefix, Duration::from_secs(3600)).await;
    publish(&*short, "r", 1).await;
    // Another node (or a new config) keeps the room's messages a day.
    let long = engine(&redis, &prefix, Duration::from_secs(24 * 3600)).await;
    publish(&*long, "r", 2).await;
    let s = pttl(&redis, &format!("{prefix}:{{r}}:s"));
    assert!(
        s > 24 * HOUR_MS && s <= 48 * HOUR_MS,
        "message 2 outlives its day: {s} ms"
    );
}

/// Listing 100 users of a room of 1,000 pages through the hash's scan, a page or two:
/// Redis never lists them all (HKEYS, 50 ms for a room of 100,000, during which it serves
/// nothing else), so what a client's `presence` costs it grows with the limit, not the
/// room. The full listing (`presence`, which only tests call now: the server API takes a
/// `limit` too) still takes them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_some_of_a_big_rooms_users_never_lists_them_all() {
    let redis = RedisServer::start();
    let engine = engine(&redis, "big", Duration::from_secs(3600)).await;
    for i in 0..1000 {
        let user = format!("u{i:04}");
        engine
            .presence_join("hall", &user, "c1")
            .await
            .expect("join");
    }
    let (hkeys, hscan) = (redis.calls("hkeys"), redis.calls("hscan"));
    let some = engine.presence_upto("hall", 100).await.expect("list");
    assert_eq!((some.users.len(), some.count), (100, 1000));
    assert_eq!(redis.calls("hkeys"), hkeys, "the listing took every user");
    // COUNT is a hint: a page holds about 100; scanning all 1,000 takes about ten.
    let pages = redis.calls("hscan") - hscan;
    assert!(
        (1..=3).contains(&pages),
        "{pages} HSCAN pages for 100 users"
    );
    assert_eq!(engine.presence("hall").await.expect("all").len(), 1000);
    assert_eq!(redis.calls("hkeys"), hkeys + 1);
}

/// The keys on `redis` matching `pattern`.
fn keys(redis: &RedisServer, pattern: &str) -> usize {
    match redis.command(&["KEYS", pattern]) {
        Ok(redis::Value::Array(keys)) => keys.len(),
        other => panic!("KEYS: {other:?}"),
    }
}

/// The stored sessions (`<prefix>:sess:<token>`) on `redis`.
fn stored_sessions(redis: &RedisServer) -> usize {
    keys(redis, "*:sess:*")
}

/// Before `sessions.keptPerUser`, each of mallory's ten connections left a stored session
/// behind for five minutes (a user at `admission.perUserRate` kept 1,520 of them per pod,
/// ~7 KB each with 40 long room names: measured 1.6 MB of Redis in 30 s). Now a pod drops
/// a user's oldest ended session past the allowance; alice's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reconnecting_in_a_loop_keeps_kept_per_user_sessions() {
    let redis = RedisServer::start();
    let gws = Gateways::start(&redis, 1, &[("CHATGW_SESSIONS__KEPT_PER_USER", "3")]);
    for user in std::iter::once("alice").chain(std::iter::repeat_n("mallory", 10)) {
        let mut c = gws.connect(0, user).await;
        assert_eq!(c.join("r").await["type"], "ok");
        c.kill();
    }
    // A session is stored, and the oldest dropped, as the gateway sees each socket end.
    let gw = &gws.procs[0];
    let settled = std::time::Instant::now() + Duration::from_secs(10);
    while gw.metric("chatgateway_connections") > 0.0 && std::time::Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("chatgateway_connections"), 0.0);
    assert_eq!(gw.metric("chatgateway_sessions_dropped_total"), 7.0);
    assert_eq!(
        stored_sessions(&redis),
        1 + 3,
        "alice's and mallory's last three"
    );
}

/// A room's or inbox's first message creates keys kept for days (a one-message room about
/// 7 KB for two `history.maxAge`, an inbox 5.5 KB for two weeks), and one connection
/// started them at its command rate: 6.7 rooms or 20 inboxes a second, measured. Past
/// `limits.newRoomsPerHour` a user's send to a room without messages is refused and
/// writes nothing; rooms with messages still take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_new_rooms_per_hour_starts_no_room_or_inbox() {
    let redis = RedisServer::start();
    let gws = Gateways::start(&redis, 1, &[("CHATGW_LIMITS__NEW_ROOMS_PER_HOUR", "3")]);
    let mut mallory = gws.connect(0, "mallory").await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let room = format!("spam{i}");
        assert_eq!(mallory.join(&room).await["type"], "ok");
        let r = mallory.send(&room, serde_json::json!("hi")).await;
        codes.push(r["code"].as_str().unwrap_or("ok").to_string());
    }
    let r = mallory.send("user:nobody", serde_json::json!("hi")).await;
    codes.push(r["code"].as_str().unwrap_or("ok").to_string());
    assert_eq!(
        codes,
        [
            "ok",
            "ok",
            "ok",
            "quota_exceeded",
            "quota_exceeded",
            "quota_exceeded"
        ]
    );
    assert_eq!(keys(&redis, "*{spam*}:m"), 3, "three rooms started");
    assert_eq!(keys(&redis, "*{user:nobody}*"), 0, "no inbox started");
    assert_eq!(
        mallory.send("spam0", serde_json::json!("again")).await["type"],
        "ok",
        "a room with messages"
    );
    assert_eq!(
        gws.procs[0].metric("chatgateway_new_rooms_refused_total"),
        3.0
    );
}

/// `limits.newRoomsPerHour` counts a user's starts on every pod together (Redis keeps one
/// bucket per user): past it, a pod the user had not yet started a room on lets one more
/// through (it had not seen the others' starts) and then refuses, as does the first.
/// Each pod counting alone, the user started the limit on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_per_hour_counts_a_users_starts_on_every_pod() {
    let redis = RedisServer::start();
    let gws = Gateways::start(&redis, 2, &[("CHATGW_LIMITS__NEW_ROOMS_PER_HOUR", "3")]);
    let mut on = [
        gws.connect(0, "mallory").await,
        gws.connect(1, "mallory").await,
    ];
    let mut codes = Vec::new();
    for (i, pod) in [0, 0, 0, 1, 1, 0].into_iter().enumerate() {
        let room = format!("spam{i}");
        assert_eq!(on[pod].join(&room).await["type"], "ok");
        let r = on[pod].send(&room, serde_json::json!("hi")).await;
        codes.push(r["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(
        codes,
        ["ok", "ok", "ok", "ok", "quota_exceeded", "quota_exceeded"]
    );
    assert_eq!(keys(&redis, "*{spam*}:m"), 4, "the limit and one more");
    let bucket = match redis.command(&["KEYS", "*:nr:mallory"]) {
        Ok(redis::Value::Array(k)) if k.len() == 1 => {
            redis::from_redis_value::<String>(k[0].clone())
        }
        other => panic!("mallory's bucket: {other:?}"),
    };
    let ttl = pttl(&redis, &bucket.expect("a key name"));
    // Four taken of three (a debt of one): full again after four thirds of an hour.
    assert!(
        ttl > 4 * HOUR_MS / 3 - 60_000 && ttl <= 4 * HOUR_MS / 3,
        "the bucket goes once full again: {ttl} ms"
    );
}

/// Whether a send starts a room is known only once it is published, and every send in
/// flight used to pass the check on the tokens left: ten connections of one user sending
/// to ten new rooms at once started ten. A send in flight holds one of the user's starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_flight_at_once_start_no_more_rooms_than_the_limit() {
    let redis = RedisServer::start();
    let gws = Gateways::start(&redis, 1, &[("CHATGW_LIMITS__NEW_ROOMS_PER_HOUR", "3")]);
    let mut conns = Vec::new();
    for i in 0..10 {
        let mut c = gws.connect(0, "mallory").await;
        assert_eq!(c.join(&format!("burst{i}")).await["type"], "ok");
        conns.push(c);
    }
    let sends = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| async move { c.send(&format!("burst{i}"), serde_json::json!("hi")).await });
    let replies = futures_util::future::join_all(sends).await;
    let ok = replies.iter().filter(|r| r["type"] == "ok").count();
    let refused = replies
        .iter()
        .filter(|r| r["code"] == "quota_exceeded")
        .count();
    assert_eq!((ok, refused), (3, 7), "{replies:?}");
    assert_eq!(keys(&redis, "*{burst*}:m"), 3, "three rooms started");
}
