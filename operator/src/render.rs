//! `render`: the exact children the reconciler would apply, as YAML, with no cluster.

use crate::builders::{self, Owner};
use crate::crd::ChatGateway;
use crate::error::{Error, Result};

/// Renders every ChatGateway in a (multi-document) YAML stream; other kinds are skipped.
pub fn render(yaml: &str, default_namespace: &str) -> Result<String> {
    render_with(yaml, default_namespace, &builders::Inputs::default())
}

/// [`render`] with what the reconciler would know (e.g. the operator's default image).
pub fn render_with(
    yaml: &str,
    default_namespace: &str,
    inputs: &builders::Inputs,
) -> Result<String> {
    let mut out = Vec::new();
    let docs = crate::yaml::documents(yaml)
        .map_err(|e| Error::InvalidSpec(format!("reading YAML: {e}")))?;
    for value in docs {
        if value.get("kind").and_then(|k| k.as_str()) != Some("ChatGateway") {
            continue;
        }
        let cgw: ChatGateway = serde_json::from_value(value)
            .map_err(|e| Error::InvalidSpec(format!("not a valid ChatGateway: {e}")))?;
        let owner = Owner::of(&cgw, default_namespace)?;
        out.push(builders::build(&cgw, &owner, inputs)?.to_yaml()?);
    }
    if out.is_empty() {
        return Err(Error::InvalidSpec(
            "no ChatGateway document in the input".into(),
        ));
    }
    Ok(out.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_gateway_and_skips_other_kinds() {
        let input = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n\
            apiVersion: chatgateway.io/v1beta1\nkind: ChatGateway\nmetadata: {name: a}\n\
            spec: {gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}}\n";
        let out = render(input, "ns1").expect("render");
        assert_eq!(out.matches("kind: Deployment").count(), 1);
        assert!(out.contains("namespace: ns1"));
        assert!(
            !out.contains("ownerReferences"),
            "no uid, so no owner reference"
        );
    }

    #[test]
    fn no_gateway_is_an_error() {
        assert!(render("kind: Secret\n", "d").is_err());
        assert!(render("", "d").is_err());
    }

    #[test]
    fn bad_yaml_and_bad_gateways_are_invalid_specs_naming_the_problem() {
        let err = render("kind: ChatGateway\nspec: [1\n", "d").unwrap_err();
        assert!(err.to_string().contains("reading YAML"), "{err}");
        let err = render(
            "kind: ChatGateway\nmetadata: {name: a}\nspec: {replicas: many}\n",
            "d",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a valid ChatGateway"), "{err}");
    }
}
