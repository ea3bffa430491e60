//! Latency percentiles and the summary output.

/// Sorted latency samples in nanoseconds.
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Sorts the samples.
    pub fn new(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        Latencies(v)
    }

    /// The p-quantile in milliseconds (NaN without samples).
    pub fn ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i.min(self.0.len() - 1)] as f64 / 1e6
    }

    /// p50/p90/p99/max as JSON.
    pub fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "p50": r(self.ms(0.5)), "p90": r(self.ms(0.9)), "p99": r(self.ms(0.99)), "max": r(self.ms(1.0)),
        })
    }

    /// p99/max as JSON (null without samples).
    pub fn tail_json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({"p99": r(self.ms(0.99)), "max": r(self.ms(1.0))})
    }
}

/// The unsigned integer right after `key` in `text` (a frame's `seq` or send time: no
/// JSON parse per message).
pub(super) fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Prints the summary object as an aligned two-column table.
pub fn table(summary: &serde_json::Value) -> String {
    let mut out = String::new();
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push_str(&format!("{prefix:<32} {other}\n")),
        }
    }
    walk("", summary, &mut out);
    out
}

/// CPU microseconds per event (a connect, a delivery) between two readings of one process,
/// to a tenth.
pub fn cpu_us_per(
    from: Option<crate::procstat::Usage>,
    to: Option<crate::procstat::Usage>,
    n: u64,
) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) if n > 0 => {
            Some(((b.cpu_secs - a.cpu_secs) * 1e6 / n as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latencies::new((1..=100).map(|i| i * 1_000_000).collect());
        assert_eq!(l.ms(0.5), 51.0);
        assert_eq!(l.ms(0.99), 99.0);
        assert_eq!(l.ms(1.0), 100.0);
        assert!(Latencies::new(vec![]).ms(0.5).is_nan());
    }
}
