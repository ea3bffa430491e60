//! `gateway.namespaces` and `gateway.defaultNamespace` as the gateway's namespace list.
//! Unset fields keep the gateway's defaults; the gateway's validation then checks the list
//! as a whole.

use super::{parse_duration, set};
use crate::crd::{NamespaceRules, NamespaceSpec, SendPolicySpec};
use crate::error::{Error, Result};
use chat_gateway_config::namespaces::INBOX_PREFIX;
use chat_gateway_config::{DmPolicy, JoinPolicy, NamespaceConfig, RetentionConfig, SendPolicy};

/// The namespaces of the spec, the default one (prefix `""`) last. `history` and `inbox`
/// are the retentions a namespace's own `retention` starts from (`inbox` for `user:`).
pub fn namespaces(
    specs: &[NamespaceSpec],
    default: Option<&NamespaceRules>,
    history: &RetentionConfig,
    inbox: &RetentionConfig,
) -> Result<Vec<NamespaceConfig>> {
    let mut out = Vec::with_capacity(specs.len() + 1);
    for (i, n) in specs.iter().enumerate() {
        let field = format!("gateway.namespaces[{i}]");
        if n.prefix.is_empty() {
            // The schema's minLength refuses it; `render` has no API server.
            return Err(Error::InvalidSpec(format!(
                "{field}.prefix is empty: the rooms no prefix matches follow gateway.defaultNamespace"
            )));
        }
        let retention = if n.prefix == INBOX_PREFIX {
            inbox
        } else {
            history
        };
        out.push(namespace(&field, &n.prefix, &n.rules, retention)?);
    }
    if let Some(rules) = default {
        out.push(namespace("gateway.defaultNamespace", "", rules, history)?);
    }
    Ok(out)
}

/// One namespace; `retention` is what its own retention starts from.
fn namespace(
    field: &str,
    prefix: &str,
    n: &NamespaceRules,
    retention: &RetentionConfig,
) -> Result<NamespaceConfig> {
    let invalid = |f: &str, e: String| Error::InvalidSpec(format!("{field}.{f}: {e}"));
    let mut c = NamespaceConfig {
        prefix: prefix.into(),
        ..NamespaceConfig::default()
    };
    if let Some(join) = &n.join {
        c.join = JoinPolicy::try_from(join.clone()).map_err(|e| invalid("join", e))?;
    }
    if let Some(send) = n.send {
        c.send = match send {
            SendPolicySpec::Members => SendPolicy::Members,
            SendPolicySpec::Grant => SendPolicy::Grant,
            SendPolicySpec::None => SendPolicy::None,
        };
    }
    if let Some(dm) = &n.dm {
        c.dm = DmPolicy::try_from(dm.clone()).map_err(|e| invalid("dm", e))?;
    }
    if let Some(r) = &n.retention {
        let mut own = retention.clone();
        set(&mut own.max_messages, r.max_messages)?;
        own.max_age = parse_duration(
            &format!("{field}.retention.maxAge"),
            r.max_age.as_deref(),
            own.max_age,
        )?;
        c.retention = Some(own);
    }
    for (target, value) in [
        (&mut c.history_without_join, n.history_without_join),
        (&mut c.keep_history, n.keep_history),
        (&mut c.presence, n.presence),
        (&mut c.join_leave_events, n.join_leave_events),
    ] {
        if let Some(v) = value {
            *target = v;
        }
    }
    set(&mut c.max_body_bytes, n.max_body_bytes)?;
    set(&mut c.dm_quota, n.dm_quota)?;
    Ok(c)
}
