//! Just enough PromQL reading for the monitoring tests: which metrics an expression selects,
//! and which an exposition offers, so the alert rules and dashboard panels can be checked
//! against the metrics that exist.
//! Whether an expression parses at all is promtool's to say, not this module's.

use std::collections::BTreeSet;

/// Keywords that look like identifiers but select nothing (aggregations among them: in
/// `sum without (x) (…)` no parenthesis follows the name).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesized list of label names (not an expression).
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers that are not functions, aggregations,
/// keywords, label names (in matchers or grouping lists), strings, numbers or durations.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations: 0.1, 1e3, 5m, 0x1f.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if call && LABEL_LISTS.contains(&word.as_str()) {
                    i = skip_group(&chars, next, '(', ')');
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The metric names of a Prometheus text exposition: each sample's name, and each
/// `# TYPE` family (so a histogram counts by its base name and its `_bucket`, `_sum` and
/// `_count` series).
pub fn exposition_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The index after the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index after the group `open … close` starting at `start` (strings inside skipped).
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn finds_metrics_not_functions_labels_or_keywords() {
        assert_eq!(
            names(
                r#"sum without (reason) (rate(a_total{endpoint=~"x|y", code!="5.."}[5m]))
                   / on (job) group_left(version) b_info offset 1h > 0.1 and c unless d @ 100"#
            ),
            ["a_total", "b_info", "c", "d"]
        );
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval]))) - time() < 7 * 86400"#
            ),
            ["h_bucket"]
        );
        assert_eq!(
            names(r#"label_replace(up, "a", "$1", "b", "(.*)") or vector(1e3)"#),
            ["up"]
        );
    }
}
