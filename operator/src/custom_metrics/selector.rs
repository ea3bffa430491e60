//! Label selector strings (`?labelSelector=` of the custom metrics API), parsed into kube's
//! [`Selector`] with the grammar of Kubernetes' `labels.Parse`: comma-separated
//! requirements `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
//! `key notin (a,b)`. The HPA sends the scale target's selector in exactly this form.

use kube::core::{Expression, Selector};
use std::collections::BTreeSet;

/// Why a selector string was refused; the message goes back to the client (400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

/// Parses a selector; the empty string selects everything.
pub fn parse(text: &str) -> Result<Selector, SelectorError> {
    let fail = |reason: String| SelectorError {
        selector: text.to_string(),
        reason,
    };
    let mut exprs = Vec::new();
    for part in split_top_level(text).map_err(fail)? {
        let part = part.trim();
        if part.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(fail("empty requirement".into()));
        }
        exprs.push(requirement(part).map_err(fail)?);
    }
    Ok(exprs.into_iter().collect())
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("unbalanced ')'".into()),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed '('".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Expression, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key_of(key.trim())?));
    }
    let key_end = part
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '(' | '<' | '>'))
        .unwrap_or(part.len());
    let key = key_of(&part[..key_end])?;
    let rest = part[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(Expression::Exists(key));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(Expression::NotEqual(key, value_of(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(Expression::Equal(key, value_of(v.trim())?));
    }
    for (word, notin) in [("notin", true), ("in", false)] {
        if let Some(set) = rest.strip_prefix(word) {
            let set = set.trim_start();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{word} needs a parenthesised set of values"))?;
            let values = inner
                .split(',')
                .map(|v| value_of(v.trim()))
                .collect::<Result<BTreeSet<_>, _>>()?;
            return Ok(if notin {
                Expression::NotIn(key, values)
            } else {
                Expression::In(key, values)
            });
        }
    }
    Err(format!("unsupported operator in {part:?}"))
}

/// A label key: optional DNS prefix and `/`, then a name of at most 63 characters.
fn key_of(key: &str) -> Result<String, String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = !name.is_empty()
        && key.len() <= 317
        && name.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]` (may be empty).
fn value_of(value: &str) -> Result<String, String> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_hpa_form_of_a_deployment_selector() {
        let s = parse("app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway")
            .expect("parses");
        let pod = labels(&[
            ("app.kubernetes.io/instance", "chat"),
            ("app.kubernetes.io/name", "chat-gateway"),
            ("pod-template-hash", "abc"),
        ]);
        assert!(s.matches(&pod));
        let other = labels(&[
            ("app.kubernetes.io/instance", "other"),
            ("app.kubernetes.io/name", "chat-gateway"),
        ]);
        assert!(!s.matches(&other));
    }

    #[test]
    fn every_operator() {
        let pod = labels(&[("a", "1"), ("b", "2")]);
        for (text, want) in [
            ("", true),
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("a==1", true),
            ("a = 1", true),
            ("a!=1", false),
            ("c!=1", true),
            ("a in (1, 3)", true),
            ("a in(3)", false),
            ("b notin (1,3)", true),
            ("b notin (2)", false),
            ("a=1,b in (2),!c", true),
            ("a=", false),
        ] {
            let s = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.matches(&pod), want, "{text}");
        }
    }

    #[test]
    fn bad_selectors_are_errors_not_panics() {
        for text in [
            "a in 1",
            "a in (1",
            "a)",
            "a,,b",
            "a > 1",
            "a=b c",
            "bad key=1",
            "a=(x)",
            "a in ((1))",
            "=1",
            "!",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains("invalid label selector"), "{err}");
        }
    }
}
