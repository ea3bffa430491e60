//! docs/configuration.md against the loader: every default its tables state is the one
//! the gateway runs with, and every setting the gateway has is in a table. The docs are
//! how operators learn the limits they run under; a default changed in code alone, or a
//! setting added without a row, fails here.
//!
//! A row's value goes through the loader the way an operator's YAML would (`24h` and the
//! printed `1day` are the same duration, `20` and `20.0` the same rate), and is compared
//! with what the loader gives when the key is left out.

use chat_gateway_config::Config;
use serde_json::Value;
use std::collections::BTreeSet;

/// Settings whose default the gateway computes at start, so the docs describe it in words.
const COMPUTED: &[&str] = &["node.id"];

/// Sections documented in prose and examples of their own rather than rows: a list of
/// rules (`routes`), a per-namespace table (checked below), the hooks' objects (their
/// fields are one line of the hooks rows).
const OWN_SECTIONS: &[&str] = &["routes", "namespaces", "hooks"];

fn docs() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

/// A documented row: the `##` section it is in, its keys (full paths) and its default
/// cell.
struct Row {
    section: String,
    keys: Vec<String>,
    default: String,
}

/// The section of the per-namespace table: its keys are a namespace rule's fields.
const NAMESPACES: &str = "Namespaces";

/// The rows of every `| key | default | meaning |` table. A cell names one key or several
/// (`` `redis.username` / `password` ``, `` `admission.perIpRate`, `perIpBurst` ``): a name
/// without a dot is a sibling of the first.
fn rows(docs: &str) -> Vec<Row> {
    let mut section = String::new();
    docs.lines()
        .filter_map(|line| {
            if let Some(heading) = line.strip_prefix("## ") {
                section = heading.to_string();
            }
            let cells: Vec<&str> = line.split(" | ").collect();
            let first = cells.first()?.strip_prefix("| `")?;
            let (keys, default) = (format!("`{first}"), cells.get(1)?.to_string());
            let names = backticked(&keys);
            let parent = names.first()?.rsplit_once('.').map(|(p, _)| p.to_string());
            let keys = names
                .iter()
                .map(|n| match (&parent, n.contains('.')) {
                    (Some(p), false) => format!("{p}.{n}"),
                    _ => n.clone(),
                })
                .collect();
            Some(Row {
                section: section.clone(),
                keys,
                default,
            })
        })
        .collect()
}

/// The `code` spans of a cell, in order.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `value` at `key`, as a YAML document (`a.b: v` is `a: {b: v}`).
fn nested(key: &str, value: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut yaml = String::new();
    for (depth, part) in parts.iter().enumerate() {
        let indent = "  ".repeat(depth);
        if depth + 1 == parts.len() {
            yaml.push_str(&format!("{indent}{part}: {value}\n"));
        } else {
            yaml.push_str(&format!("{indent}{part}:\n"));
        }
    }
    yaml
}

fn at<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, part| node.get(part))
}

fn tree(config: &Config) -> Value {
    serde_json::to_value(config).expect("config serialises")
}

/// "Not set": how the docs' `—` shows in the loaded config.
fn unset(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// Every leaf of the loaded defaults (objects are walked, anything else is a leaf).
fn leaves(node: &Value, path: String, out: &mut BTreeSet<String>) {
    match node {
        Value::Object(fields) => {
            for (name, child) in fields {
                let path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                leaves(child, path, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

#[test]
fn every_documented_default_is_the_loaders() {
    let defaults = tree(&Config::from_yaml("").expect("defaults load"));
    let mut checked = 0;
    let mut wrong = Vec::new();
    for row in rows(&docs()) {
        if row.section == NAMESPACES {
            continue; // `namespace_defaults_are_the_loaders`
        }
        if row.keys.iter().any(|k| COMPUTED.contains(&k.as_str())) {
            continue;
        }
        let values = backticked(&row.default);
        for (i, key) in row.keys.iter().enumerate() {
            let default = at(&defaults, key);
            if row.default.starts_with('—') {
                if !unset(default) {
                    wrong.push(format!("{key}: docs say unset, the loader has {default:?}"));
                }
                checked += 1;
                continue;
            }
            // One value for every key of the row, or one each.
            let Some(doc) = values
                .get(i)
                .or(values.first().filter(|_| values.len() == 1))
            else {
                wrong.push(format!(
                    "{key}: no default in the row's cell {:?}",
                    row.default
                ));
                continue;
            };
            match Config::from_yaml(&nested(key, doc)) {
                Ok(loaded) if at(&tree(&loaded), key) == default => {}
                Ok(loaded) => wrong.push(format!(
                    "{key}: docs say {doc} ({:?}), the loader has {default:?}",
                    at(&tree(&loaded), key)
                )),
                Err(e) => wrong.push(format!("{key}: the docs' default {doc} does not load: {e}")),
            }
            checked += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md:\n{}",
        wrong.join("\n")
    );
    // The tables hold dozens of settings: a parser that found none would pass vacuously.
    assert!(checked > 60, "only {checked} documented defaults found");
}

#[test]
fn every_setting_has_a_row() {
    let defaults = tree(&Config::from_yaml("").expect("defaults load"));
    let documented: BTreeSet<String> = rows(&docs())
        .into_iter()
        .filter(|r| r.section != NAMESPACES)
        .flat_map(|r| r.keys)
        .collect();
    let mut all = BTreeSet::new();
    leaves(&defaults, String::new(), &mut all);
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !OWN_SECTIONS.iter().any(|s| k.split('.').next() == Some(s)))
        .filter(|k| !documented.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "settings without a row in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn namespace_defaults_are_the_loaders() {
    let rule = |extra: &str| {
        let yaml = format!("namespaces:\n  - {{prefix: \"x:\"{extra}}}\n");
        let config = Config::from_yaml(&yaml).expect("namespace loads");
        tree(&config)["namespaces"][0].clone()
    };
    let defaults = rule("");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for row in rows(&docs())
        .into_iter()
        .filter(|r| r.section == NAMESPACES)
    {
        let key = &row.keys[0];
        // `prefix` is what each rule is about, and `retention` defaults to a section of
        // its own (`history`, or `inbox` for `user:`): both are said in words.
        if key == "prefix" || key == "retention" {
            continue;
        }
        let Some(doc) = backticked(&row.default).into_iter().next() else {
            wrong.push(format!("{key}: no default in {:?}", row.default));
            continue;
        };
        let stated = rule(&format!(", {key}: {doc}"));
        if stated.get(key) != defaults.get(key) {
            wrong.push(format!(
                "namespace {key}: docs say {doc} ({:?}), the loader has {:?}",
                stated.get(key),
                defaults.get(key)
            ));
        }
        checked += 1;
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 9, "only {checked} namespace defaults found");
}
