//! Retention of a message stream (a room's history, a user's inbox, a namespace's rooms),
//! and what a retention written in part means.
//!
//! A field left out takes the value of the retention this one replaces: in `history` and
//! `inbox` their own defaults, in a namespace's `retention` the configured `history`
//! (the configured `inbox` for the `user:` namespace, whose rooms are inboxes). Which one
//! depends on where the retention is, which serde's per-struct defaults cannot see, so
//! the loader fills the tree in (`fill_left_out`) before it is deserialised. The
//! operator builds these structs the same way, starting from the configured sections.

use crate::namespaces::INBOX_PREFIX;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// Retention of a message stream (a room's history or a user's inbox).
///
/// Deserialised on its own both fields are required: a default here could only be one of
/// `history`'s or `inbox`'s, and was wrong for the other (an `inbox: {maxMessages: 500}`
/// kept messages 24 hours instead of 168). [`Config::from_yaml`](crate::Config::from_yaml)
/// and [`Config::load`](crate::Config::load) fill left-out fields in first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Messages kept per stream.
    pub max_messages: usize,
    /// Age after which messages are dropped.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl RetentionConfig {
    /// The default of `history`: 1000 messages, 24 hours.
    pub const HISTORY: RetentionConfig = RetentionConfig {
        max_messages: 1000,
        max_age: Duration::from_secs(24 * 3600),
    };

    /// The default of `inbox`: 1000 messages, 168 hours (a DM waits for its reader longer
    /// than a room's chatter is worth keeping).
    pub const INBOX: RetentionConfig = RetentionConfig {
        max_messages: 1000,
        max_age: Duration::from_secs(7 * 24 * 3600),
    };
}

/// Fills the fields every retention of a config tree (as parsed, environment applied)
/// leaves out: `history` and `inbox` from their defaults, each namespace's from the
/// filled-in `history`, or `inbox` for a prefix under `user:`. Values of the wrong shape
/// are left alone for the deserialiser to report with their path.
pub(crate) fn fill_left_out(root: &mut Value) {
    let Value::Object(root) = root else { return };
    let history = section(root, "history", &RetentionConfig::HISTORY);
    let inbox = section(root, "inbox", &RetentionConfig::INBOX);
    let Some(Value::Array(namespaces)) = root.get_mut("namespaces") else {
        return;
    };
    for namespace in namespaces {
        let Value::Object(namespace) = namespace else {
            continue;
        };
        // A prefix under `user:` names inboxes: without a retention of its own its rooms
        // keep the inbox's (the engine's rule), so a partial one starts from that too.
        let inboxes = namespace
            .get("prefix")
            .and_then(Value::as_str)
            .is_some_and(|p| p.starts_with(INBOX_PREFIX));
        if let Some(Value::Object(retention)) = namespace.get_mut("retention") {
            fill(retention, if inboxes { &inbox } else { &history });
        }
    }
}

/// Fills the section `key` of `root` from `default` and returns it as it now stands (the
/// default itself when the section is absent: the config's default then applies).
fn section(
    root: &mut Map<String, Value>,
    key: &str,
    default: &RetentionConfig,
) -> Map<String, Value> {
    let default = match serde_json::to_value(default) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(), // a struct of a number and a duration always serialises to a map
    };
    match root.get_mut(key) {
        Some(Value::Object(given)) => {
            fill(given, &default);
            given.clone()
        }
        _ => default,
    }
}

/// Adds each field of `from` that `to` does not have.
fn fill(to: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (name, value) in from {
        to.entry(name.clone()).or_insert_with(|| value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn the_constants_are_the_configs_defaults() {
        let c = Config::default();
        assert_eq!(c.history, RetentionConfig::HISTORY);
        assert_eq!(c.inbox, RetentionConfig::INBOX);
    }

    #[test]
    fn a_partial_retention_alone_is_an_error_not_a_guess() {
        let e = serde_json::from_str::<RetentionConfig>(r#"{"maxMessages": 5}"#)
            .expect_err("no maxAge");
        assert!(e.to_string().contains("maxAge"), "{e}");
    }

    #[test]
    fn shapes_it_cannot_fill_are_left_to_the_deserialiser() {
        let mut tree = serde_json::json!({
            "history": 3,
            "namespaces": [7, {"prefix": 1, "retention": {"maxMessages": 2}}, {"retention": "x"}],
        });
        let before = tree.clone();
        fill_left_out(&mut tree);
        // Only the one object retention was filled (from history's default: history is no
        // object), the rest is as it was.
        assert_eq!(tree["namespaces"][1]["retention"]["maxAge"], "1day");
        tree["namespaces"][1]["retention"]
            .as_object_mut()
            .expect("object")
            .remove("maxAge");
        assert_eq!(tree, before);
    }
}
