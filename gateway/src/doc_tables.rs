//! The documentation pages whose tables are contracts the gateway's tests hold it to (close
//! codes, error codes, metrics and their labels), and the two ways a test finds its table:
//! a `##` section, or the row of one name.

/// docs/protocol.md: close codes, error codes.
pub(crate) const PROTOCOL: &str = include_str!("../../docs/protocol.md");
/// docs/operations.md: the metrics and their labels.
pub(crate) const OPERATIONS: &str = include_str!("../../docs/operations.md");

/// The text under `## {heading}`, up to the next `##` heading.
pub(crate) fn section(doc: &'static str, heading: &str) -> &'static str {
    doc.split(&format!("\n## {heading}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("no `## {heading}` section"))
}

/// The table row whose first cell is `first_cell` (as written, backticks included).
pub(crate) fn row(doc: &'static str, first_cell: &str) -> &'static str {
    let start = format!("| {first_cell} |");
    doc.lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no row for {first_cell}"))
}
