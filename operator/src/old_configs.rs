//! The gateway's config ConfigMaps of older templates, deleted once no pod mounts them.
//!
//! Each config is a ConfigMap of its own, named by its content hash
//! (`builders::configmap::build`): pods of the template before a change keep theirs, for
//! as long as they run and whenever they restart. Once the Deployment has rolled out
//! (every pod of the current template, none of an older one) the older ConfigMaps are
//! deleted, and so is the one fixed-name ConfigMap of releases before content names.

use crate::builders::Owner;
use crate::children::{self, Found};
use crate::error::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ResourceExt};

/// Deletes this gateway's config ConfigMaps other than `current` (owned by it only: the
/// label selector lists its own, the owner check keeps anyone else's). Called once the
/// Deployment has rolled out ([`Observed::rolled_out`](crate::status::Observed::rolled_out)).
pub async fn prune(
    api: &Api<ConfigMap>,
    owner: &Owner,
    current: &str,
    owner_uid: &str,
) -> Result<()> {
    let params = ListParams::default().labels(&owner.selector_string());
    let prefix = owner.config_map_prefix();
    for cm in api.list_metadata(&params).await? {
        let name = cm.name_any();
        if name == current || !is_config_name(&name, &prefix) {
            continue;
        }
        let found = children::classify(Some(&cm.metadata), owner_uid);
        if matches!(found, Found::Owned { .. })
            && children::delete_owned(api, &name, &found).await?
        {
            tracing::info!(config_map = %name, "deleted: no pod of its template is left");
        }
    }
    Ok(())
}

/// `<prefix>` itself (the fixed name of older releases) or `<prefix>-<16 hex digits>`.
fn is_config_name(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_gateways_config_names() {
        assert!(is_config_name("chat-config", "chat-config"));
        assert!(is_config_name(
            "chat-config-0123456789abcdef",
            "chat-config"
        ));
        for other in [
            "chat-config-0123456789abcde",
            "chat-config-0123456789abcdefg",
            "chat-config-x-config-0123456789abcdef",
            "chat-otel-collector",
            "chat-configx",
            "other-config",
        ] {
            assert!(!is_config_name(other, "chat-config"), "{other}");
        }
    }
}
