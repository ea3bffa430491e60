//! What a verified token says: the connection's identity and grants, or a subscription
//! token's grant of one room.

use crate::config::namespaces::matches_pattern;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What a room grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// May join (and read history).
    pub join: bool,
    /// May send.
    pub send: bool,
}

impl Rights {
    /// Join and send.
    pub const ALL: Rights = Rights {
        join: true,
        send: true,
    };

    /// Rights from a list of words (`join`, `send`); unknown words grant nothing.
    fn from_words<'a>(words: impl IntoIterator<Item = &'a Value>) -> Rights {
        let mut r = Rights::default();
        for w in words {
            match w.as_str() {
                Some("join") => r.join = true,
                Some("send") => r.send = true,
                _ => {}
            }
        }
        r
    }
}

/// The rooms a connection token grants: patterns (`name` or `prefix*`) and their rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<(String, Rights)>);

impl Grants {
    /// Reads the rooms claim: `{"team:blue": ["join", "send"], "news:*": ["join"]}`, or a
    /// list of names/patterns (join and send). Anything else grants nothing.
    pub fn from_claim(claim: Option<&Value>) -> Grants {
        let entries = match claim {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(pattern, rights)| {
                    let rights = match rights {
                        Value::Array(words) => Rights::from_words(words),
                        Value::String(_) => Rights::from_words([rights]),
                        _ => return None,
                    };
                    Some((pattern.clone(), rights))
                })
                .collect(),
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(|n| Some((n.as_str()?.to_string(), Rights::ALL)))
                .collect(),
            _ => Vec::new(),
        };
        Grants(entries)
    }

    /// What the grants allow in `room` (the union of every matching entry).
    pub fn rights(&self, room: &str) -> Rights {
        self.0
            .iter()
            .filter(|(pattern, _)| matches_pattern(pattern, room))
            .fold(Rights::default(), |acc, (_, r)| Rights {
                join: acc.join || r.join,
                send: acc.send || r.send,
            })
    }
}

/// Values of the token claims that namespace policies refer to (`claim:teams`), and only
/// those: a connection keeps nothing else of its token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimValues(Vec<(String, Vec<String>)>);

impl ClaimValues {
    /// Picks the `wanted` claims out of a token's claims (a string or a list of strings).
    pub fn pick(claims: &Map<String, Value>, wanted: &[String]) -> ClaimValues {
        ClaimValues(
            wanted
                .iter()
                .filter_map(|name| {
                    let values = match claims.get(name)? {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        _ => return None,
                    };
                    Some((name.clone(), values))
                })
                .collect(),
        )
    }

    /// Whether claim `name` lists `value` (entries may be `prefix*` patterns).
    pub fn lists(&self, name: &str, value: &str) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, values)| values)
            .any(|pattern| matches_pattern(pattern, value))
    }
}

/// A verified connection token (or the insecure dev mode's `?user=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// User id (`sub`).
    pub user: String,
    /// `exp` in Unix seconds; `None` in insecure mode.
    pub expires_at: Option<u64>,
    /// The JWKS key that verified the token (its removal revokes the connection).
    pub kid: Option<Arc<str>>,
    /// Rooms the token grants.
    pub grants: Grants,
    /// Claims that namespace policies refer to.
    pub claims: ClaimValues,
}

/// A verified subscription token: one user's grant of one room, with its own expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant {
    /// What it allows in the room.
    pub rights: Rights,
    /// `exp` in Unix seconds.
    pub expires_at: u64,
    /// The JWKS key that verified the token: its removal ends the membership.
    pub kid: Option<Arc<str>>,
}

/// Reads a subscription token's grant: its `rights` claim (`["join", "send"]`, the
/// default when absent), or one word as a string, like the connection token's rooms.
/// Anything else (`null`, a number, an object) grants nothing: a malformed grant must not
/// read as the widest one.
pub fn room_rights(claims: &Map<String, Value>) -> Rights {
    match claims.get("rights") {
        None => Rights::ALL,
        Some(Value::Array(words)) => Rights::from_words(words),
        Some(word @ Value::String(_)) => Rights::from_words([word]),
        Some(_) => Rights::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grants_from_a_map_or_a_list() {
        let g = Grants::from_claim(Some(
            &json!({"team:blue": ["join", "send"], "news:*": ["join"], "x": 3}),
        ));
        assert_eq!(g.rights("team:blue"), Rights::ALL);
        assert_eq!(
            g.rights("news:today"),
            Rights {
                join: true,
                send: false
            }
        );
        assert_eq!(g.rights("x"), Rights::default(), "a number grants nothing");
        assert_eq!(g.rights("team:red"), Rights::default());
        let g = Grants::from_claim(Some(&json!(["a", "b:*"])));
        assert_eq!(g.rights("b:1"), Rights::ALL);
        assert_eq!(
            Grants::from_claim(Some(&json!("a"))).rights("a"),
            Rights::default()
        );
        assert_eq!(Grants::from_claim(None).rights("a"), Rights::default());
    }

    #[test]
    fn claim_values_keep_only_what_is_asked_for() {
        let claims = json!({"teams": ["blue", "ops:*"], "org": "acme", "secret": "x"});
        let Value::Object(map) = claims else { panic!() };
        let v = ClaimValues::pick(&map, &["teams".into(), "org".into(), "missing".into()]);
        assert!(v.lists("teams", "blue"));
        assert!(v.lists("teams", "ops:pager"));
        assert!(!v.lists("teams", "red"));
        assert!(v.lists("org", "acme"));
        assert!(!v.lists("secret", "x"), "not picked");
    }

    #[test]
    fn room_token_rights_default_to_all() {
        let Value::Object(m) = json!({"rights": ["join"]}) else {
            panic!()
        };
        assert_eq!(
            room_rights(&m),
            Rights {
                join: true,
                send: false
            }
        );
        assert_eq!(room_rights(&Map::new()), Rights::ALL);
    }

    #[test]
    fn a_room_tokens_malformed_rights_grant_nothing_and_one_word_grants_that_word() {
        let rights = |v: Value| {
            let mut m = Map::new();
            m.insert("rights".into(), v);
            room_rights(&m)
        };
        let join_only = Rights {
            join: true,
            send: false,
        };
        assert_eq!(rights(json!("join")), join_only);
        for bad in [json!(null), json!(1), json!({"join": true}), json!(true)] {
            assert_eq!(rights(bad.clone()), Rights::default(), "{bad}");
        }
    }
}
