//! Who may do what, over real sockets, on both engines: grants from the token's rooms
//! claim, subscription tokens, namespace policies (public, claim, grant, read-only,
//! ephemeral), DM rules and quota, token expiry and refresh, key rotation.

use chat_gateway::config::{
    AuthMode, Config, DmPolicy, EngineKind, JoinPolicy, NamespaceConfig, SendPolicy,
};
use e2e::redis::RedisServer;
use e2e::{jwt, keys, test_config, Client, Connected, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "permissions-test-secret-0123456789abcdef";

fn namespace(prefix: &str, edit: impl FnOnce(&mut NamespaceConfig)) -> NamespaceConfig {
    let mut n = NamespaceConfig {
        prefix: prefix.into(),
        ..Default::default()
    };
    edit(&mut n);
    n
}

/// A JWT gateway with one namespace of each kind, on `engine` (Redis: `redis` given).
fn config(redis: Option<&RedisServer>) -> Config {
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    if let Some(r) = redis {
        c.engine = EngineKind::Redis;
        c.redis.url = r.url();
        c.redis.key_prefix = format!("p{:08x}", rand::random::<u32>());
    }
    c.namespaces = vec![
        namespace("team:", |n| n.join = JoinPolicy::Claim("teams".into())),
        namespace("vip:", |n| {
            n.join = JoinPolicy::Grant;
            n.send = SendPolicy::Grant;
        }),
        namespace("news:", |n| n.send = SendPolicy::None),
        namespace("typing:", |n| {
            n.keep_history = false;
            n.presence = false;
        }),
        namespace("open:", |n| n.history_without_join = true),
        namespace("user:", |n| {
            n.dm = DmPolicy::SharedRoom;
            n.dm_quota = 3;
        }),
    ];
    c
}

async fn connect(gw: &TestGateway, user: &str, extra: Value) -> Client {
    let token = jwt::hs256_with(SECRET, None, &jwt::claims(user, 300, extra));
    Client::connect(&gw.ws_url(&format!("token={token}")))
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("ok")
}

async fn cmd(c: &mut Client, cmd: Value) -> String {
    code(&c.request(cmd).await).to_string()
}

async fn grants_and_policies(gw: &TestGateway) {
    let mut alice = connect(
        gw,
        "alice",
        json!({"teams": ["blue"], "rooms": {"vip:lounge": ["join"]}}),
    )
    .await;
    let mut bob = connect(gw, "bob", json!({"teams": ["red"]})).await;
    let mut carol = connect(gw, "carol", json!({})).await;
    let join = |room: &str| json!({"type": "join", "room": room});
    let send = |room: &str| json!({"type": "send", "room": room, "body": "hi"});

    // Claim policy: the name after the prefix must be in the `teams` claim.
    assert_eq!(cmd(&mut alice, join("team:blue")).await, "ok");
    assert_eq!(cmd(&mut bob, join("team:blue")).await, "forbidden");
    assert_eq!(cmd(&mut alice, send("team:blue")).await, "ok");
    // Reading history without joining: members only by default...
    let history = |room: &str| json!({"type": "history", "room": room});
    assert_eq!(cmd(&mut bob, history("team:blue")).await, "forbidden");
    // ...unless the namespace opens it to whoever may join.
    assert_eq!(cmd(&mut alice, join("open:hall")).await, "ok");
    assert_eq!(cmd(&mut alice, send("open:hall")).await, "ok");
    let page = bob.request(history("open:hall")).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");

    // Grant policy: the token's rooms claim lets alice in, join only.
    assert_eq!(cmd(&mut alice, join("vip:lounge")).await, "ok");
    assert_eq!(cmd(&mut alice, send("vip:lounge")).await, "forbidden");
    assert_eq!(cmd(&mut carol, join("vip:lounge")).await, "forbidden");
    // A subscription token for carol and this room, with send.
    let sub = |user: &str, room: &str| {
        jwt::hs256_with(
            SECRET,
            None,
            &jwt::claims(user, 300, json!({"room": room, "rights": ["join", "send"]})),
        )
    };
    let wrong_room =
        json!({"type": "join", "room": "vip:lounge", "token": sub("carol", "vip:other")});
    assert_eq!(cmd(&mut carol, wrong_room).await, "invalid_token");
    let someone_elses =
        json!({"type": "join", "room": "vip:lounge", "token": sub("bob", "vip:lounge")});
    assert_eq!(cmd(&mut carol, someone_elses).await, "invalid_token");
    let right = json!({"type": "join", "room": "vip:lounge", "token": sub("carol", "vip:lounge")});
    assert_eq!(cmd(&mut carol, right).await, "ok");
    assert_eq!(cmd(&mut carol, send("vip:lounge")).await, "ok");
    let from_carol = loop {
        let m = alice.next_msg().await;
        if m["room"] == "vip:lounge" {
            break m;
        }
    };
    assert_eq!(from_carol["from"], "carol");

    // Read-only namespace.
    assert_eq!(cmd(&mut bob, join("news:today")).await, "ok");
    assert_eq!(cmd(&mut bob, send("news:today")).await, "forbidden");

    // Ephemeral namespace: delivered live without seq, never stored; no presence.
    assert_eq!(cmd(&mut alice, join("typing:blue")).await, "ok");
    assert_eq!(cmd(&mut bob, join("typing:blue")).await, "ok");
    let ack = alice
        .request(json!({"type": "send", "room": "typing:blue", "body": {"typing": true}}))
        .await;
    assert_eq!(ack["type"], "ok", "{ack}");
    assert!(
        ack.get("seq").is_none() && ack.get("epoch").is_none(),
        "{ack}"
    );
    let live = bob.next_msg().await;
    assert_eq!(
        (live["ephemeral"].clone(), live["body"]["typing"].clone()),
        (json!(true), json!(true))
    );
    assert!(live.get("seq").is_none(), "{live}");
    let page = bob.request(history("typing:blue")).await;
    assert_eq!(page["messages"], json!([]), "nothing kept: {page}");
    let presence = json!({"type": "presence", "room": "typing:blue"});
    assert_eq!(cmd(&mut bob, presence).await, "forbidden");

    // DMs: only to users sharing a room (carol and bob share none yet)...
    let dm = |to: &str| json!({"type": "send", "room": format!("user:{to}"), "body": "psst"});
    assert_eq!(cmd(&mut carol, dm("bob")).await, "forbidden");
    assert_eq!(cmd(&mut carol, join("news:today")).await, "ok");
    assert_eq!(cmd(&mut carol, dm("bob")).await, "ok");
    // ...and at most 3 of one sender's messages in one inbox at a time.
    assert_eq!(cmd(&mut carol, dm("bob")).await, "ok");
    assert_eq!(cmd(&mut carol, dm("bob")).await, "ok");
    assert_eq!(cmd(&mut carol, dm("bob")).await, "quota_exceeded");
    assert_eq!(cmd(&mut bob, join("open:hall")).await, "ok");
    assert_eq!(
        cmd(&mut bob, dm("alice")).await,
        "ok",
        "another sender has its own quota"
    );

    // Every refusal above counted.
    let denied =
        |action: &str| format!("chatgateway_permission_denied_total{{action=\"{action}\"}}");
    assert_eq!(
        gw.metric(&denied("join")).await,
        2.0,
        "bob in team:blue, carol in vip:lounge"
    );
    assert_eq!(gw.metric(&denied("send")).await, 2.0);
    assert_eq!(gw.metric(&denied("history")).await, 1.0);
    assert_eq!(gw.metric(&denied("presence")).await, 1.0);
    assert_eq!(gw.metric(&denied("dm")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_namespace_policies_on_the_memory_engine() {
    let gw = TestGateway::start(config(None)).await;
    grants_and_policies(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_namespace_policies_on_the_redis_engine() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(config(Some(&redis))).await;
    grants_and_policies(&gw).await;
    gw.stop().await;
}

/// A gateway whose tokens warn 2 s ahead and get no leeway.
fn expiring(redis: Option<&RedisServer>) -> Config {
    let mut c = config(redis);
    c.auth.jwt.leeway = Duration::ZERO;
    c.auth.expiry_warning = Duration::from_secs(2);
    c
}

async fn expiry_and_refresh(gw: &TestGateway) {
    // Without a refresh: warned, then closed with 4401.
    let mut lapsing = {
        let token = jwt::hs256_with(SECRET, None, &jwt::claims("lena", 3, json!({})));
        Client::connect(&gw.ws_url(&format!("token={token}")))
            .await
            .expect("connect")
    };
    assert!(
        lapsing.welcome["expires_at"].as_u64().is_some(),
        "{}",
        lapsing.welcome
    );
    let warned = lapsing.next_of("expiring").await;
    assert!(warned.get("room").is_none(), "{warned}");
    assert_eq!(
        lapsing.expect_close().await.map(|c| c.0),
        Some(4401),
        "closed when the token expired"
    );

    // With a refresh: kept past the first token's expiry.
    let mut kept = {
        let token = jwt::hs256_with(SECRET, None, &jwt::claims("kim", 3, json!({})));
        Client::connect(&gw.ws_url(&format!("token={token}")))
            .await
            .expect("connect")
    };
    kept.next_of("expiring").await;
    let fresh = jwt::hs256_with(SECRET, None, &jwt::claims("kim", 60, json!({})));
    let other_user = jwt::hs256_with(SECRET, None, &jwt::claims("mallory", 60, json!({})));
    let refused = kept
        .request(json!({"type": "refresh", "token": other_user}))
        .await;
    assert_eq!(code(&refused), "invalid_token");
    let ok = kept
        .request(json!({"type": "refresh", "token": fresh}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    kept.join("lobby").await;
    assert_eq!(kept.send("lobby", json!("still here")).await["type"], "ok");

    // A subscription token's expiry ends that room only.
    let sub = jwt::hs256_with(
        SECRET,
        None,
        &jwt::claims("kim", 3, json!({"room": "vip:x"})),
    );
    let joined = kept
        .request(json!({"type": "join", "room": "vip:x", "token": sub}))
        .await;
    assert_eq!(joined["type"], "ok", "{joined}");
    assert_eq!(kept.next_of("expiring").await["room"], "vip:x");
    let gone = kept.next_of("unsubscribed").await;
    assert_eq!(
        (gone["room"].clone(), gone["reason"].clone()),
        (json!("vip:x"), json!("token expired"))
    );
    assert_eq!(
        cmd(
            &mut kept,
            json!({"type": "send", "room": "vip:x", "body": 1})
        )
        .await,
        "not_joined"
    );
    assert_eq!(
        kept.send("lobby", json!("connection still open")).await["type"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_unless_refreshed_on_the_memory_engine() {
    let gw = TestGateway::start(expiring(None)).await;
    expiry_and_refresh(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_unless_refreshed_on_the_redis_engine() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(expiring(Some(&redis))).await;
    expiry_and_refresh(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_without_a_restart_and_removed_keys_revoke() {
    let dir = std::env::temp_dir().join(format!("chatgw-jwks-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    let es = keys::es256("es-1");
    let ed = keys::ed25519("ed-2");
    let write = |keys: Vec<&Value>| {
        // Written to a new file and renamed, like a Kubernetes Secret volume update.
        let tmp = dir.join("jwks.json.new");
        std::fs::write(&tmp, json!({ "keys": keys }).to_string()).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    write(vec![&es.jwk]);
    let mut c = test_config();
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.jwks_file = Some(file.clone());
    c.auth.jwt.reload_interval = Duration::from_millis(200);
    c.namespaces = vec![namespace("vip:", |n| n.join = JoinPolicy::Grant)];
    let gw = TestGateway::start(c).await;
    let token = |key: &keys::TestKey, alg, kid: &str, user: &str| {
        jwt::sign_pem(
            alg,
            &key.private_pem,
            Some(kid),
            &jwt::claims(user, 300, json!({})),
        )
    };
    use jsonwebtoken::Algorithm::{EdDSA, ES256};
    let url = |t: String| gw.ws_url(&format!("token={t}"));
    let mut old = Client::connect(&url(token(&es, ES256, "es-1", "olga")))
        .await
        .expect("es-1");
    assert!(
        Client::connect(&url(token(&ed, EdDSA, "ed-2", "ned")))
            .await
            .is_err(),
        "not yet"
    );

    // Rotation, step 1: the new key joins; the old one's connections stay.
    write(vec![&es.jwk, &ed.jwk]);
    let new_url = url(token(&ed, EdDSA, "ed-2", "ned"));
    let mut new = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(&new_url).await {
            new = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut new = new.expect("a token of the new key is accepted without a restart");
    old.join("r").await;
    new.join("r").await;
    assert_eq!(old.send("r", json!("still connected")).await["type"], "ok");
    assert_eq!(new.next_msg().await["body"], "still connected");
    // The new key's connection holds a room through a subscription token of the old key.
    let vip = jwt::sign_pem(
        ES256,
        &es.private_pem,
        Some("es-1"),
        &jwt::claims("ned", 300, json!({"room": "vip:x"})),
    );
    let joined = new
        .request(json!({"type": "join", "room": "vip:x", "token": vip}))
        .await;
    assert_eq!(joined["type"], "ok", "{joined}");

    // Step 2: the old key is removed: its connections close with 4403, the others stay;
    // the memberships its subscription tokens granted end (they stayed until their exp).
    write(vec![&ed.jwk]);
    assert_eq!(old.expect_close().await.map(|c| c.0), Some(4403));
    let ended = new.next_of("unsubscribed").await;
    assert_eq!(
        (&ended["room"], &ended["reason"]),
        (&json!("vip:x"), &json!("key revoked")),
        "{ended}"
    );
    assert_eq!(new.send("r", json!("unaffected")).await["type"], "ok");
    let refused = new.send("vip:x", json!("no longer")).await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    assert!(
        gw.metric("chatgateway_key_reloads_total{outcome=\"changed\"}")
            .await
            >= 2.0
    );
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn upgrade_status(
    gw: &TestGateway,
    query: &str,
    protocols: Option<&str>,
) -> (u16, Option<String>) {
    let mut req = gw.ws_url(query).into_client_request().expect("request");
    if let Some(p) = protocols {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    match Client::connect_request(req).await {
        Connected::Ok(_, resp) => (
            101,
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        Connected::Refused(status, _) => (status, None),
        Connected::Failed(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_query_tokens_and_echoed_bearer_subprotocols_are_refused() {
    let mut c = config(None);
    c.auth.query_token = false;
    let gw = TestGateway::start(c).await;
    let good = jwt::hs256(SECRET, "amy", 60);
    assert_eq!(
        upgrade_status(&gw, &format!("token={good}"), None).await.0,
        401,
        "?token= is off"
    );
    let offer = format!("chatgw.v1, bearer.{good}");
    assert_eq!(
        upgrade_status(&gw, "", Some(&offer)).await,
        (101, Some("chatgw.v1".to_string())),
        "the token is never echoed"
    );
    let lone = format!("bearer.{good}");
    assert_eq!(
        upgrade_status(&gw, "", Some(&lone)).await.0,
        400,
        "a lone bearer offer"
    );
    let billing = jwt::hs256_with(
        SECRET,
        None,
        &json!({"sub": "amy", "exp": jsonwebtoken::get_current_timestamp() + 60, "aud": "billing"}),
    );
    let offer = format!("chatgw.v1, bearer.{billing}");
    assert_eq!(
        upgrade_status(&gw, "", Some(&offer)).await.0,
        401,
        "wrong aud"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_exhaust_connections_or_admission() {
    let mut c = test_config();
    c.limits.connections_per_user = 2;
    c.admission.per_user_rate = 0.5;
    c.admission.per_user_burst = 3;
    let gw = TestGateway::start(c).await;
    let _a = gw.connect("hog").await;
    let _b = gw.connect("hog").await;
    assert_eq!(
        upgrade_status(&gw, "user=hog", None).await.0,
        429,
        "third connection"
    );
    assert_eq!(
        upgrade_status(&gw, "user=hog", None).await.0,
        429,
        "over the user's rate"
    );
    assert_eq!(
        upgrade_status(&gw, "user=other", None).await.0,
        101,
        "others still get in"
    );
    assert_eq!(
        gw.metric("chatgateway_upgrades_rejected_total{reason=\"per_user_rate\"}")
            .await,
        1.0
    );
    gw.stop().await;
}
