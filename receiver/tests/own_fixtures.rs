//! The repository's own fixtures (receiver/tests/fixtures/meta, written from Meta's
//! documented shapes) cover every documented object × field; each normalizes into exactly
//! the events its INDEX.tsv row lists.

use std::collections::BTreeSet;
use std::path::Path;

use metahook_receiver::event::Event;
use metahook_receiver::normalize::{COVERAGE, Context, normalize};

struct Row {
    file: String,
    platform: String,
    object: String,
    field: String,
    events: usize,
    kinds: Vec<String>,
}

fn rows() -> Vec<Row> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta");
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("INDEX.tsv");
    index
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(
                cols.len() >= 6,
                "INDEX.tsv line has too few columns: {line}"
            );
            Row {
                file: cols[0].to_owned(),
                platform: cols[1].to_owned(),
                object: cols[2].to_owned(),
                field: cols[3].to_owned(),
                events: cols[4].parse().expect("events column"),
                kinds: cols[5].split(',').map(str::to_owned).collect(),
            }
        })
        .collect()
}

fn events_of(file: &str) -> Vec<Event> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/meta")
        .join(file);
    let body = std::fs::read(&path).expect("fixture");
    let ctx = Context {
        endpoint: "test",
        received_at: "2026-01-01T00:00:00Z",
        objects: None,
    };
    normalize(&body, &ctx).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_own_fixture_normalizes_as_indexed() {
    let mut failures = Vec::new();
    for row in rows() {
        let events = events_of(&row.file);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        if events.len() != row.events || kinds != row.kinds {
            let errors: Vec<_> = events.iter().filter_map(|e| e.error.clone()).collect();
            failures.push(format!(
                "{}: kinds {kinds:?}, expected {:?} {errors:?}",
                row.file, row.kinds
            ));
            continue;
        }
        let first = &events[0];
        if first.platform.as_str() != row.platform
            || first.object != row.object
            || first.field != row.field
        {
            failures.push(format!(
                "{}: first event {}/{}/{}, expected {}/{}/{}",
                row.file,
                first.platform.as_str(),
                first.object,
                first.field,
                row.platform,
                row.object,
                row.field
            ));
        }
        for event in &events {
            let raw: serde_json::Value =
                serde_json::from_str(event.raw.get()).expect("raw is JSON");
            assert!(!raw.is_null(), "{}: raw kept", row.file);
            assert!(
                !event.raw.get().contains('\n'),
                "{}: raw is one line",
                row.file
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixtures differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_documented_field_has_an_own_fixture() {
    let covered: BTreeSet<(String, String)> = rows()
        .iter()
        .flat_map(|row| events_of(&row.file))
        .filter(|e| e.kind != metahook_receiver::event::Kind::Unknown)
        .map(|e| (e.object, e.field))
        .collect();
    let objects: BTreeSet<&str> = covered.iter().map(|(o, _)| o.as_str()).collect();
    let missing: Vec<String> = COVERAGE
        .iter()
        .filter(|row| {
            if row.field == "*" {
                // App-level objects: any field; require a fixture for the object.
                !objects.contains(row.object)
                    && [
                        "user",
                        "permissions",
                        "application",
                        "payments",
                        "ad_account",
                    ]
                    .contains(&row.object)
            } else {
                !covered.contains(&(row.object.to_owned(), row.field.to_owned()))
                    && !optional(row.field)
            }
        })
        .map(|row| format!("{} {}", row.object, row.field))
        .collect();
    assert!(
        missing.is_empty(),
        "documented fields without an own fixture:\n{}",
        missing.join("\n")
    );
}

/// Beta / legacy Messenger fields documented by name only.
const BETA_MESSENGER_FIELDS: &[&str] = &[
    "message_context",
    "messaging_customer_information",
    "messaging_in_thread_lead_form_submit",
    "send_cart",
];

/// Page profile fields and beta Messenger fields are documented by name only: the coverage
/// table lists them; one profile field and `changed_fields` fixtures stand for the rest.
fn optional(field: &str) -> bool {
    metahook_receiver::meta::page::PROFILE_FIELDS.contains(&field)
        || BETA_MESSENGER_FIELDS.contains(&field)
}
