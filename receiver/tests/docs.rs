//! Generated documentation stays true: the event JSON schema and the coverage table in
//! docs/event-schema.md are what the code produces. Run with `METAHOOK_UPDATE_DOCS=1` to
//! rewrite them after a deliberate change.

use std::path::Path;

use metahook_receiver::event::json_schema;
use metahook_receiver::normalize::coverage_markdown;

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
