//! A retention written in part (`inbox: {maxMessages: 500}`, a namespace's
//! `retention: {maxMessages: 50}`) keeps the rest of what it replaces, field by field: the
//! inbox its own default, a namespace the configured `history` (`inbox` for `user:`). The
//! operator builds the same settings that way, so a ChatGateway and a hand-written file
//! agree.

use chat_gateway_config::{Config, RetentionConfig};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn yaml(text: &str) -> Config {
    Config::from_yaml(text).expect("loads")
}

/// Loads with `env` on top of a config that validates (insecure auth on loopback).
fn env(pairs: &[(&str, &str)]) -> Config {
    let base = [
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_SERVER__LISTEN", "127.0.0.1:8080"),
    ];
    let vars = base
        .iter()
        .chain(pairs)
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(None, vars).expect("loads")
}

/// The retention of the namespace with `prefix`.
fn retention_of(c: &Config, prefix: &str) -> RetentionConfig {
    let n = c.namespaces.iter().find(|n| n.prefix == prefix);
    n.and_then(|n| n.retention.clone()).expect("a retention")
}

#[test]
fn a_partial_inbox_keeps_the_inbox_default_age() {
    let c = yaml("inbox: {maxMessages: 500}\n");
    assert_eq!(c.inbox.max_messages, 500);
    assert_eq!(
        c.inbox.max_age,
        168 * HOUR,
        "the inbox's default, not history's"
    );
    let c = yaml("inbox: {maxAge: 1h}\n");
    assert_eq!(c.inbox.max_messages, 1000);
}

#[test]
fn a_partial_history_keeps_the_history_defaults() {
    let c = yaml("history: {maxMessages: 5}\n");
    assert_eq!(c.history.max_age, 24 * HOUR);
    let c = yaml("history: {maxAge: 1h}\n");
    assert_eq!(c.history.max_messages, 1000);
}

#[test]
fn one_inbox_field_from_the_environment_keeps_the_other() {
    let c = env(&[("CHATGW_INBOX__MAX_MESSAGES", "500")]);
    assert_eq!(c.inbox.max_messages, 500);
    assert_eq!(c.inbox.max_age, 168 * HOUR);
}

#[test]
fn a_partial_namespace_retention_takes_the_configured_history() {
    let c = yaml(
        "history: {maxMessages: 300, maxAge: 2h}\nnamespaces:\n  - {prefix: 'game:', retention: {maxMessages: 50}}\n  - {prefix: 'team:', retention: {maxAge: 1h}}\n",
    );
    let game = retention_of(&c, "game:");
    assert_eq!((game.max_messages, game.max_age), (50, 2 * HOUR));
    let team = retention_of(&c, "team:");
    assert_eq!((team.max_messages, team.max_age), (300, HOUR));
}

#[test]
fn a_partial_inbox_namespace_retention_takes_the_configured_inbox() {
    let c = yaml(
        "inbox: {maxAge: 72h}\nnamespaces:\n  - {prefix: 'user:', retention: {maxMessages: 50}}\n",
    );
    let user = retention_of(&c, "user:");
    assert_eq!((user.max_messages, user.max_age), (50, 72 * HOUR));
    // Unconfigured, the inbox is its default: 1000 messages, 168h.
    let c = yaml("namespaces:\n  - {prefix: 'user:', retention: {maxMessages: 50}}\n");
    assert_eq!(retention_of(&c, "user:").max_age, 168 * HOUR);
}

#[test]
fn namespaces_from_the_environment_fill_in_the_same_way() {
    let c = env(&[
        ("CHATGW_HISTORY__MAX_AGE", "2h"),
        (
            "CHATGW_NAMESPACES",
            "[{prefix: 'game:', retention: {maxMessages: 50}}]",
        ),
    ]);
    let game = retention_of(&c, "game:");
    assert_eq!((game.max_messages, game.max_age), (50, 2 * HOUR));
}

#[test]
fn a_filled_in_config_prints_back_to_itself() {
    let c = yaml("history: {maxAge: 2h}\ninbox: {maxMessages: 7}\nnamespaces:\n  - {prefix: 'game:', retention: {maxMessages: 50}}\n");
    assert_eq!(yaml(&c.to_yaml()), c);
}

#[test]
fn a_wrong_retention_field_is_still_named() {
    let e = Config::from_yaml("namespaces:\n  - {prefix: 'game:', retention: {maxAge: soon}}\n")
        .expect_err("bad duration");
    assert!(e.to_string().contains("retention.maxAge"), "{e}");
    let e = Config::from_yaml("inbox: {maxAgee: 1h}\n").expect_err("typo");
    assert!(e.to_string().contains("maxAgee"), "{e}");
}
