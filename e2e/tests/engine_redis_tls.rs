//! The Redis engine over TLS (`rediss://` with `redis.tls`) against redis-servers that
//! speak TLS only, with a CA of the test's own: the conformance suite unchanged with the
//! CA trusted (one server, and Sentinel mode); mutual TLS with and without the client
//! certificate; a server certificate from an unknown CA, and unreadable files. (The
//! cluster over TLS: engine_redis_cluster.rs.)

use chat_gateway::config::{Config, RedisTlsConfig};
use chat_gateway::engine::conformance::run_all;
use chat_gateway::engine::redis::RedisEngine;
use chat_gateway::engine::{Broker, Engine};
use chat_gateway::hub::Hub;
use e2e::engines::{fresh, message, Fresh};
use e2e::redis::RedisServer;
use e2e::redis_sentinel::RedisSentinel;
use e2e::tls::TlsFiles;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

/// A config for `redis` (its rediss:// URL) with `tls` as `redis.tls`.
fn config(redis: &RedisServer, tls: RedisTlsConfig) -> Config {
    let mut c = Config::default();
    c.redis.url = redis.url();
    c.redis.tls = tls;
    // Built by hand: make sure it is one the gateway would start with.
    c.redis.validate().expect("a valid redis section");
    c.redis
        .validate_tls_scheme()
        .expect("rediss:// for redis.tls");
    c
}

/// Panics anywhere in this test binary, engine tasks included (a panic in a spawned task
/// would not fail a test by itself).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// An engine on `config`, which must stay unhealthy for 3 s (its connections never get
/// through the TLS handshake): a publish answers an error, and nothing panics.
async fn never_healthy(config: &Config, what: &str) {
    count_panics();
    let panics = PANICS.load(Ordering::SeqCst);
    let engine = RedisEngine::new(Arc::new(Hub::default()), config, Default::default())
        .expect("the engine starts (connects lazily)");
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        assert!(!engine.healthy(), "{what}: healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = engine.publish(message("r", 1)).await;
    assert!(sent.is_err(), "{what}: publish succeeded: {sent:?}");
    drop(engine);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), panics, "{what}: panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engine_over_tls_passes_the_conformance_suite() {
    let redis = RedisServer::start_tls(false);
    let tls = redis.tls().expect("a tls server");
    assert!(redis.url().starts_with("rediss://"));
    run_all(&Fresh(config(&redis, tls.config(false)))).await;
}

/// Sentinel mode over TLS: the certificates reach the Sentinels (asked for the master)
/// and the master they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_engine_over_tls_passes_the_conformance_suite() {
    let sentinel = RedisSentinel::start_tls();
    let config = sentinel.config("unused");
    assert!(config.redis.sentinel.addresses[0].starts_with("rediss://"));
    config.redis.validate().expect("a valid redis section");
    config
        .redis
        .validate_tls_scheme()
        .expect("rediss:// for redis.tls");
    run_all(&Fresh(config)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_the_client_certificate_only() {
    let redis = RedisServer::start_tls(true);
    let tls = redis.tls().expect("a tls server");
    never_healthy(
        &config(&redis, tls.config(false)),
        "without a client certificate",
    )
    .await;

    let with_cert = config(&redis, tls.config(true));
    let engine = fresh(&with_cert, Arc::new(Hub::default()), &Config::default()).await;
    let first = engine.publish(message("mtls", 1)).await.expect("publish");
    let second = engine.publish(message("mtls", 2)).await.expect("publish");
    assert_eq!((first.at.seq, second.at.seq), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_is_refused_without_a_panic() {
    let redis = RedisServer::start_tls(false);
    // No redis.tls: the system roots, which do not know the test's CA.
    never_healthy(
        &config(&redis, RedisTlsConfig::default()),
        "with the system roots",
    )
    .await;
    // Another CA's certificate as caFile.
    let other = TlsFiles::generate("some other CA");
    never_healthy(&config(&redis, other.config(false)), "with another CA").await;
}

#[test]
fn unreadable_or_empty_tls_files_stop_the_engine_naming_the_file() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = runtime.enter();
    let files = TlsFiles::generate("files CA");
    let start = |tls: RedisTlsConfig| {
        let mut c = Config::default();
        c.redis.url = "rediss://127.0.0.1:1".into();
        c.redis.tls = tls;
        c.redis.validate().expect("a valid redis section");
        c.redis
            .validate_tls_scheme()
            .expect("rediss:// for redis.tls");
        match RedisEngine::new(Arc::new(Hub::default()), &c, Default::default()) {
            Ok(_) => panic!("started with {:?}", c.redis.tls),
            Err(e) => e.to_string(),
        }
    };
    let missing = files.dir().join("missing.crt");
    let e = start(RedisTlsConfig {
        ca_file: Some(missing.clone()),
        ..Default::default()
    });
    assert!(
        e.contains("redis.tls.caFile") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    // The key where the CA bundle should be: no certificate in it.
    let e = start(RedisTlsConfig {
        ca_file: Some(files.client_key()),
        ..Default::default()
    });
    assert!(e.contains("no PEM certificate"), "{e}");
    // The certificate where the key should be.
    let e = start(RedisTlsConfig {
        ca_file: Some(files.ca()),
        cert_file: Some(files.client_cert()),
        key_file: Some(files.client_cert()),
    });
    assert!(
        e.contains("redis.tls.keyFile") && e.contains("no PEM private key"),
        "{e}"
    );
    // Certificates with a redis:// URL, in a config built in code (config loading refuses
    // it already): refused, not silently ignored.
    let mut c = Config::default();
    c.redis.tls = files.config(false);
    match RedisEngine::new(Arc::new(Hub::default()), &c, Default::default()) {
        Ok(_) => panic!("started with redis.tls over redis://"),
        Err(e) => assert!(e.to_string().contains("not rediss://"), "{e}"),
    }
}
