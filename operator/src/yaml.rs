//! YAML in and out: the CRD, `render`'s input and output, the collector's config, test
//! fixtures. Through serde-saphyr (pure Rust, maintained, the gateway's config crate uses
//! it too), not the deprecated serde_yaml, whose parser (unsafe-libyaml) is unmaintained
//! (RUSTSEC-2024-0449).
//!
//! Documents are read into JSON values first: Kubernetes objects are JSON underneath, and
//! the types' deserializers (flattened fields, int-or-string) are at home there. Only
//! `true` and `false` are booleans, as in the gateway's config (YAML 1.2): read untyped, a
//! YAML 1.1 reader would turn `image: y` into `true`. Writing quotes every string a YAML
//! 1.1 reader would take for something else, so Python's and Go's readers agree.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// Every non-empty document of a (multi-document) YAML stream.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple_with_options::<Value>(text, options()).map_err(|e| e.to_string())
}

/// One YAML document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: Value =
        serde_saphyr::from_str_with_options(text, options()).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// `value` as one YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    chat_gateway_config::to_yaml(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_skip_empty_ones_and_keep_order() {
        let docs = documents("a: 1\n---\n---\nb: [x, 2]\n").expect("yaml");
        assert_eq!(docs, [json!({"a": 1}), json!({"b": ["x", 2]})]);
        assert!(documents("a: [1\n").is_err());
    }

    #[test]
    fn what_a_yaml_1_1_reader_would_misread_is_quoted() {
        let value = json!({"on": "yes", "n": "no", "octal": "0755", "date": "2024-01-02",
                           "num": "1e3", "null": "~", "text": "plain words"});
        let text = to_string(&value).expect("yaml");
        for quoted in [
            r#""yes""#,
            r#""no""#,
            r#""0755""#,
            r#""2024-01-02""#,
            r#""1e3""#,
            r#""~""#,
            r#""on""#,
        ] {
            assert!(text.contains(quoted), "{quoted} in\n{text}");
        }
        assert!(text.contains("text: plain words"), "{text}");
        assert_eq!(from_str::<Value>(&text).expect("back"), value);
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let v: Value = from_str("a: y\nb: yes\nc: on\nd: true\ne: false\n").expect("yaml");
        assert_eq!(
            v,
            json!({"a": "y", "b": "yes", "c": "on", "d": true, "e": false})
        );
    }

    #[test]
    fn long_and_multi_line_strings_round_trip() {
        let long = "word ".repeat(40).trim_end().to_string();
        let value =
            json!({"long": long, "lines": "one\ntwo\n", "rule": "self.a != '' && has(self.b)"});
        let text = to_string(&value).expect("yaml");
        assert_eq!(from_str::<Value>(&text).expect("back"), value, "{text}");
    }
}
