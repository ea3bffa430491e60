//! Who may do what: pure decisions from a room's namespace, the connection's token grants
//! and a room's subscription token. Deny by default; grants are checked in order of
//! precedence: the connection token's rooms claim, then a subscription token, then the
//! namespace's policy (public, a claim, or the backend). docs/protocol.md "Permissions".

use crate::auth::{Identity, RoomGrant};
use crate::config::{JoinPolicy, NamespaceConfig, SendPolicy};
use std::sync::Arc;

/// How a join was allowed; what the membership may do afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// May send (the namespace's send policy and the grant agree).
    pub send: bool,
    /// The subscription token's expiry (Unix seconds) when that is what granted the join.
    pub expires_at: Option<u64>,
    /// The JWKS key of that subscription token: removing the key ends the membership.
    pub kid: Option<Arc<str>>,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow(Membership),
    /// Refused; the reason goes into the `forbidden` error.
    Deny(&'static str),
    /// The backend decides (the `join` hook).
    AskBackend,
}

/// Whether `who` may join `room` of namespace `ns`, given a verified subscription token
/// for it (`sub`: its rights, expiry and key).
pub fn may_join(
    ns: &NamespaceConfig,
    room: &str,
    who: &Identity,
    sub: Option<&RoomGrant>,
) -> Decision {
    let token = who.grants.rights(room);
    if token.join {
        return Decision::Allow(membership(ns, token.send, None));
    }
    if let Some(g) = sub.filter(|g| g.rights.join) {
        return Decision::Allow(Membership {
            kid: g.kid.clone(),
            ..membership(ns, g.rights.send, Some(g.expires_at))
        });
    }
    match &ns.join {
        JoinPolicy::Public => Decision::Allow(membership(ns, true, None)),
        JoinPolicy::Claim(claim) if who.claims.lists(claim, ns.local_name(room)) => {
            Decision::Allow(membership(ns, true, None))
        }
        JoinPolicy::Claim(_) => Decision::Deny("your token's claim does not list this room"),
        JoinPolicy::Grant => {
            Decision::Deny("this room needs a grant: a rooms claim or a subscription token")
        }
        JoinPolicy::Backend => Decision::AskBackend,
    }
}

/// The membership a join grants: `granted_send` (by the grant that allowed the join) as
/// far as the namespace's send policy lets it.
fn membership(ns: &NamespaceConfig, granted_send: bool, expires_at: Option<u64>) -> Membership {
    let send = match ns.send {
        SendPolicy::Members => true,
        SendPolicy::Grant => granted_send,
        SendPolicy::None => false,
    };
    Membership {
        send,
        expires_at,
        kid: None,
    }
}

/// The membership the backend grants (its join hook, or its connect hook's rooms): send
/// when the backend says so, unless the namespace lets nobody send.
pub fn backend_grant(ns: &NamespaceConfig, send: bool) -> Membership {
    Membership {
        send: send && ns.send != SendPolicy::None,
        ..Membership::default()
    }
}

/// Whether `who` may read the history of `room` without being a member.
pub fn may_read_without_joining(ns: &NamespaceConfig, room: &str, who: &Identity) -> Decision {
    if !ns.history_without_join {
        return Decision::Deny("join the room to read its history");
    }
    match may_join(ns, room, who, None) {
        Decision::AskBackend => Decision::Deny("join the room to read its history"),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{claims::ClaimValues, Grants, Rights};
    use serde_json::json;

    /// A subscription token's grant, from no particular key.
    fn grant(rights: Rights, expires_at: u64) -> RoomGrant {
        RoomGrant {
            rights,
            expires_at,
            kid: None,
        }
    }

    fn ns(join: JoinPolicy, send: SendPolicy) -> NamespaceConfig {
        NamespaceConfig {
            prefix: "team:".into(),
            join,
            send,
            ..Default::default()
        }
    }

    fn who(rooms: serde_json::Value, teams: &[&str]) -> Identity {
        let serde_json::Value::Object(claims) = json!({ "teams": teams }) else {
            unreachable!()
        };
        Identity {
            user: "u".into(),
            grants: Grants::from_claim(Some(&rooms)),
            claims: ClaimValues::pick(&claims, &["teams".into()]),
            ..Default::default()
        }
    }

    const SEND: Rights = Rights::ALL;
    const READ: Rights = Rights {
        join: true,
        send: false,
    };

    #[test]
    fn public_rooms_let_everyone_in_and_members_send() {
        let d = may_join(
            &ns(JoinPolicy::Public, SendPolicy::Members),
            "team:x",
            &who(json!({}), &[]),
            None,
        );
        assert_eq!(
            d,
            Decision::Allow(Membership {
                send: true,
                expires_at: None,
                kid: None
            })
        );
    }

    #[test]
    fn grant_rooms_need_a_token_grant_or_a_subscription_token() {
        let room = ns(JoinPolicy::Grant, SendPolicy::Grant);
        let nobody = who(json!({}), &[]);
        assert!(matches!(
            may_join(&room, "team:x", &nobody, None),
            Decision::Deny(_)
        ));
        // Token claim: join only.
        let reader = who(json!({"team:*": ["join"]}), &[]);
        assert_eq!(
            may_join(&room, "team:x", &reader, None),
            Decision::Allow(Membership {
                send: false,
                expires_at: None,
                kid: None
            })
        );
        // Subscription token with send, expiring.
        assert_eq!(
            may_join(&room, "team:x", &nobody, Some(&grant(SEND, 99))),
            Decision::Allow(Membership {
                send: true,
                expires_at: Some(99),
                kid: None
            })
        );
        // A subscription token without join grants nothing.
        let no_join = Rights {
            join: false,
            send: true,
        };
        assert!(matches!(
            may_join(&room, "team:x", &nobody, Some(&grant(no_join, 9))),
            Decision::Deny(_)
        ));
        // The token claim wins over a subscription token (no expiry then).
        assert_eq!(
            may_join(
                &room,
                "team:x",
                &who(json!(["team:x"]), &[]),
                Some(&grant(READ, 5))
            ),
            Decision::Allow(Membership {
                send: true,
                expires_at: None,
                kid: None
            })
        );
    }

    #[test]
    fn claim_rooms_check_the_name_after_the_prefix() {
        let room = ns(JoinPolicy::Claim("teams".into()), SendPolicy::Members);
        assert!(matches!(
            may_join(&room, "team:blue", &who(json!({}), &["blue"]), None),
            Decision::Allow(_)
        ));
        assert!(matches!(
            may_join(&room, "team:red", &who(json!({}), &["blue"]), None),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn announcement_rooms_refuse_every_sender() {
        let room = ns(JoinPolicy::Public, SendPolicy::None);
        let d = may_join(&room, "team:x", &who(json!(["team:x"]), &[]), None);
        assert_eq!(
            d,
            Decision::Allow(Membership {
                send: false,
                expires_at: None,
                kid: None
            })
        );
    }

    #[test]
    fn backend_rooms_ask_and_history_without_join_needs_the_switch_and_a_join_right() {
        let backend = ns(JoinPolicy::Backend, SendPolicy::Members);
        assert_eq!(
            may_join(&backend, "team:x", &who(json!({}), &[]), None),
            Decision::AskBackend
        );
        let mut open = ns(JoinPolicy::Public, SendPolicy::Members);
        assert!(matches!(
            may_read_without_joining(&open, "team:x", &who(json!({}), &[])),
            Decision::Deny(_)
        ));
        open.history_without_join = true;
        assert!(matches!(
            may_read_without_joining(&open, "team:x", &who(json!({}), &[])),
            Decision::Allow(_)
        ));
        let mut private = ns(JoinPolicy::Grant, SendPolicy::Members);
        private.history_without_join = true;
        assert!(matches!(
            may_read_without_joining(&private, "team:x", &who(json!({}), &[])),
            Decision::Deny(_)
        ));
    }
}
