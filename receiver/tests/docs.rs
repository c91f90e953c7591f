//! Generated documentation stays true: the event JSON schema and the coverage table in
//! docs/event-schema.md are what the code produces. Run with `METAHOOK_UPDATE_DOCS=1` to
//! rewrite them after a deliberate change.

use std::path::Path;

use metahook_receiver::event::json_schema;
use metahook_receiver::normalize::{self, coverage_markdown};
use serde_json::Value;

fn section(text: &str, name: &str) -> Option<(usize, usize)> {
    let begin = format!("<!-- {name}:begin -->\n");
    let end = format!("<!-- {name}:end -->");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some((start, stop))
}

#[test]
fn event_schema_doc_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/event-schema.md");
    let mut text = std::fs::read_to_string(&path).expect("docs/event-schema.md");
    let generated = [
        ("schema", format!("```json\n{}\n```\n", json_schema())),
        ("coverage", coverage_markdown()),
    ];
    let update = std::env::var_os("METAHOOK_UPDATE_DOCS").is_some();
    for (name, content) in generated {
        let (start, stop) = section(&text, name)
            .unwrap_or_else(|| panic!("{name} markers missing in {}", path.display()));
        if update {
            text.replace_range(start..stop, &content);
        } else {
            assert_eq!(
                &text[start..stop],
                content,
                "docs/event-schema.md {name} section is stale: run METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-receiver --test docs"
            );
        }
    }
    if update {
        std::fs::write(&path, text).expect("write docs");
    }
}

/// The JSON of the fenced block right after `marker`, and where its content lies.
fn json_block_after(text: &str, marker: &str) -> Option<(usize, usize)> {
    let after = text.find(marker)? + marker.len();
    let open = "```json\n";
    let start = after + text[after..].find(open)? + open.len();
    // The block must follow the marker directly (blank lines aside).
    if !text[after..start - open.len()].trim().is_empty() {
        return None;
    }
    let stop = start + text[start..].find("```")?;
    Some((start, stop))
}

/// The names of the examples (`<!-- example:NAME:input -->`), in order.
fn example_names(text: &str) -> Vec<String> {
    text.match_indices("<!-- example:")
        .filter_map(|(at, _)| {
            let rest = &text[at + "<!-- example:".len()..];
            let name = rest.split(':').next()?;
            rest[name.len()..]
                .starts_with(":input -->")
                .then(|| name.to_owned())
        })
        .collect()
}

/// Compact JSON indented by two spaces, keys in the order written (so `raw` reads as Meta
/// sent it, which a `Value` would sort).
fn indent(compact: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = compact.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

/// The first path at which `expected` and `actual` differ, for a readable failure.
fn first_difference(path: &str, expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .keys()
            .chain(a.keys().filter(|k| !e.contains_key(*k)))
            .find_map(|key| {
                first_difference(
                    &format!("{path}.{key}"),
                    e.get(key).unwrap_or(&Value::Null),
                    a.get(key).unwrap_or(&Value::Null),
                )
            }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (e, a))| first_difference(&format!("{path}[{i}]"), e, a)),
        _ if expected == actual => None,
        _ => Some(format!("{path}: documented {expected}, emitted {actual}")),
    }
}

#[test]
fn every_documented_example_is_what_the_normalizer_emits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/event-schema.md");
    let mut text = std::fs::read_to_string(&path).expect("docs/event-schema.md");
    let update = std::env::var_os("METAHOOK_UPDATE_DOCS").is_some();
    let names = example_names(&text);
    assert!(names.len() >= 3, "examples missing: {names:?}");
    // Every JSON block of the page is the schema or one of these examples: none unchecked.
    let blocks = text.matches("```json\n").count();
    assert_eq!(
        blocks,
        1 + 2 * names.len(),
        "a JSON block in docs/event-schema.md is neither the schema nor a checked example"
    );
    for name in &names {
        let (start, stop) = json_block_after(&text, &format!("<!-- example:{name}:input -->"))
            .unwrap_or_else(|| panic!("example {name}: no input block"));
        let input = text[start..stop].to_owned();
        let context = normalize::Context {
            endpoint: "meta",
            received_at: "2026-01-01T00:00:00Z",
            objects: None,
        };
        let events = normalize::normalize(input.as_bytes(), &context)
            .unwrap_or_else(|err| panic!("example {name}: {err}"));
        let emitted = serde_json::to_value(&events).expect("events as JSON");
        let (start, stop) = json_block_after(&text, &format!("<!-- example:{name}:events -->"))
            .unwrap_or_else(|| panic!("example {name}: no events block"));
        if update {
            let lines: Vec<String> = events
                .iter()
                .map(|event| serde_json::to_string(event).expect("event as JSON"))
                .collect();
            let pretty = indent(&format!("[{}]", lines.join(",")));
            text.replace_range(start..stop, &format!("{pretty}\n"));
            continue;
        }
        let documented: Value = serde_json::from_str(&text[start..stop])
            .unwrap_or_else(|err| panic!("example {name}: events are not JSON: {err}"));
        if let Some(difference) = first_difference("", &documented, &emitted) {
            panic!(
                "docs/event-schema.md example {name} is not what the receiver emits: {difference} (METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-receiver --test docs rewrites it)"
            );
        }
    }
    if update {
        std::fs::write(&path, text).expect("write docs");
    }
}
