//! Conformance with real Meta payloads: every file in ../shared/fixtures/meta (others' data,
//! read in place, never copied) is signed, POSTed over a real socket and must come out of
//! the file sink as one event per leaf item, with the right platform, object and field, a
//! documented kind, and `raw` equal to the item. Also the known signature vectors.
//!
//! Where the folder is absent each test fails naming it, unless `META_FIXTURES_OPTIONAL=1`
//! (then each says so and skips only itself).

#![allow(clippy::print_stderr)] // tests report skips and figures on stderr

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use http::StatusCode;
use metahook_receiver::normalize::field_kinds;
use metahook_receiver::verify::{self, Algorithm};
use metahook_tests::testkit::{self, PATH, TestReceiver};
use serde_json::Value;
use serde_json::value::RawValue;

/// Fixtures README: "deliberately odd" payloads whose items are not documented (an unknown
/// field, an empty messaging item, an unknown event key): they must become `unknown` events.
const UNDOCUMENTED: &[&str] = &[
    "facebook__foo.bar.remove__1.json",
    "messenger__empty__1.json",
    "messenger__foo__1.json",
];

/// One leaf item the receiver must turn into an event.
#[derive(Debug)]
struct Leaf {
    object: String,
    /// The change's field, or `None` for messaging items (their field is derived).
    field: Option<String>,
    raw: Value,
}

/// The leaf items of a body, computed from Meta's documented shapes independently of the
/// receiver's normalizer.
fn leaves(body: &Value) -> Vec<Leaf> {
    let mut out = Vec::new();
    let top_object = body.get("object").and_then(Value::as_str);
    for entry in body
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let object = top_object
            .or_else(|| entry.get("object").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        let before = out.len();
        for change in entry
            .get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = change
                .get("field")
                .or_else(|| entry.get("field"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let value = change.get("value");
            let mut items = Vec::new();
            if object == "whatsapp_business_account" {
                for list in [
                    "messages",
                    "statuses",
                    "message_echoes",
                    "calls",
                    "user_preferences",
                    // Groups API notifications and business-scoped user id changes.
                    "groups",
                    "user_id_update",
                ] {
                    items.extend(
                        value
                            .and_then(|v| v.get(list))
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
            if items.is_empty() {
                items.push(change.clone());
            }
            out.extend(items.into_iter().map(|raw| Leaf {
                object: object.clone(),
                field: Some(field.clone()),
                raw,
            }));
        }
        for list in ["messaging", "standby"] {
            for item in entry
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = (list == "standby").then(|| "standby".to_owned());
                out.push(Leaf {
                    object: object.clone(),
                    field,
                    raw: item.clone(),
                });
            }
        }
        for name in entry
            .get("changed_fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = name.as_str().map(str::to_owned);
            out.push(Leaf {
                object: object.clone(),
                field,
                raw: entry.clone(),
            });
        }
        if out.len() == before {
            out.push(Leaf {
                object: object.clone(),
                field: None,
                raw: entry.clone(),
            });
        }
    }
    out
}

fn expected_platform(object: &str, field: Option<&str>, raw: &Value) -> &'static str {
    let messaging = field.is_none_or(|f| f == "standby")
        && raw.get("field").is_none()
        && raw.get("changed_fields").is_none();
    match object {
        "whatsapp_business_account" => "whatsapp",
        "instagram" => "instagram",
        "page" if messaging => "messenger",
        "page" => "facebook",
        _ => "graph",
    }
}

/// Checks one request's events against the body's leaf items.
fn check(file: &str, body: &Value, events: &[Value]) -> Result<()> {
    let leaves = leaves(body);
    ensure!(
        events.len() == leaves.len(),
        "{file}: {} events for {} leaf items",
        events.len(),
        leaves.len()
    );
    let mut unmatched: Vec<&Value> = events.iter().collect();
    for leaf in &leaves {
        let position = unmatched
            .iter()
            .position(|event| event["raw"] == leaf.raw)
            .with_context(|| format!("{file}: no event has raw == {}", leaf.raw))?;
        let event = unmatched.remove(position);
        ensure!(
            event["object"] == leaf.object.as_str(),
            "{file}: object {} != {}",
            event["object"],
            leaf.object
        );
        let platform = expected_platform(&leaf.object, leaf.field.as_deref(), &leaf.raw);
        ensure!(
            event["platform"] == platform,
            "{file}: platform {} != {platform}",
            event["platform"]
        );
        if let Some(field) = &leaf.field {
            ensure!(
                event["field"] == field.as_str(),
                "{file}: field {} != {field}",
                event["field"]
            );
        }
        let kind = event["kind"].as_str().unwrap_or("");
        if UNDOCUMENTED.contains(&file) {
            ensure!(
                kind == "unknown",
                "{file}: an undocumented item became {kind}"
            );
        } else {
            ensure!(
                kind != "unknown",
                "{file}: documented item became unknown: {}",
                event["error"]
            );
            let field = event["field"].as_str().unwrap_or("");
            ensure!(
                !field_kinds(&leaf.object, field).is_empty(),
                "{file}: field {field} of {} is not in the coverage table",
                leaf.object
            );
        }
        ensure!(
            event["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{file}: event without id"
        );
    }
    Ok(())
}

fn fixture_files(dir: &Path) -> Result<Vec<String>> {
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).context("reading INDEX.tsv")?;
    Ok(index
        .lines()
        .skip(1)
        .filter_map(|line| line.split('\t').next())
        .filter(|f| f.ends_with(".json"))
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn every_shared_fixture_becomes_its_events() -> Result<()> {
    let Some(dir) = testkit::shared_fixtures_dir()? else {
        eprintln!(
            "SKIP every_shared_fixture_becomes_its_events: shared fixtures folder not found (META_FIXTURES_OPTIONAL=1)"
        );
        return Ok(());
    };
    let receiver = TestReceiver::start().await?;
    let mut total = 0;
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in fixture_files(&dir)? {
        let bytes = std::fs::read(dir.join(&file)).with_context(|| format!("reading {file}"))?;
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        if bytes.trim_ascii_start().starts_with(b"[") {
            // Doc examples wrapped in an array: not a body Meta sends (400); the object inside is.
            let reply = receiver.post(&bytes).await?;
            if reply.status != StatusCode::BAD_REQUEST {
                failures.push(format!(
                    "{file}: array body answered {} (want 400)",
                    reply.status
                ));
            }
            let inner: Vec<&RawValue> =
                serde_json::from_slice(&bytes).with_context(|| format!("{file}: array"))?;
            bodies.extend(inner.iter().map(|raw| raw.get().as_bytes().to_vec()));
        } else {
            bodies.push(bytes);
        }
        for body in bodies {
            let reply = receiver.post(&body).await?;
            if reply.status != StatusCode::OK {
                failures.push(format!(
                    "{file}: answered {} {}",
                    reply.status,
                    reply.text()
                ));
                continue;
            }
            let value: Value = serde_json::from_slice(&body)?;
            let expected = leaves(&value).len();
            let events = receiver
                .wait_for_events(total + expected, Duration::from_secs(10))
                .await?;
            if let Err(err) = check(&file, &value, &events[total..]) {
                failures.push(format!("{err:#}"));
            }
            total = events.len();
            checked += 1;
        }
    }
    assert!(checked >= 200, "only {checked} fixtures checked");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} shared fixture bodies, {total} events, all conformant");
    Ok(())
}

/// One row of signature_vectors.tsv.
struct Vector {
    algo: String,
    header: String,
    secret: String,
    body: String,
    expected: String,
}

/// Rows of signature_vectors.tsv: algorithm, header, secret, body, expected header value.
fn vectors(dir: &Path) -> Result<Vec<Vector>> {
    let text = std::fs::read_to_string(dir.join("signature_vectors.tsv"))
        .context("reading signature_vectors.tsv")?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 5 {
            bail!("malformed vector line: {line}");
        }
        rows.push(Vector {
            algo: cols[0].into(),
            header: cols[1].into(),
            secret: cols[2].into(),
            body: cols[3].into(),
            expected: cols[4].into(),
        });
    }
    Ok(rows)
}

#[tokio::test]
async fn signature_vectors_reproduce_exactly() -> Result<()> {
    let Some(dir) = testkit::shared_fixtures_dir()? else {
        eprintln!(
            "SKIP signature_vectors_reproduce_exactly: shared fixtures folder not found (META_FIXTURES_OPTIONAL=1)"
        );
        return Ok(());
    };
    let rows = vectors(&dir)?;
    ensure!(
        rows.len() >= 3,
        "expected at least 3 vectors, found {}",
        rows.len()
    );
    let mut by_secret: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for Vector {
        algo,
        header,
        secret,
        body,
        expected,
    } in rows
    {
        let algorithm = match algo.as_str() {
            "sha256" => Algorithm::Sha256,
            "sha1" => Algorithm::Sha1,
            other => bail!("unknown algorithm {other}"),
        };
        let produced = verify::sign_with(algorithm, secret.as_bytes(), body.as_bytes());
        // One vector gives the bare digest, as its source test does.
        let comparable = if expected.contains('=') {
            produced.clone()
        } else {
            produced
                .split_once('=')
                .map(|(_, hex)| hex.to_owned())
                .unwrap_or_default()
        };
        assert_eq!(comparable, expected, "{algo} vector with secret {secret}");
        let value = if expected.contains('=') {
            expected
        } else {
            produced
        };
        let accepted = verify::verify_signature(
            algorithm,
            Some(value.as_bytes()),
            body.as_bytes(),
            &[secret.as_bytes()],
        );
        assert!(
            accepted.is_ok(),
            "{algo} vector is accepted by verify: {accepted:?}"
        );
        by_secret
            .entry(secret)
            .or_default()
            .push((header, value, body));
    }
    // The real Meta-signed deliveries are also accepted end to end over a socket.
    for (secret, cases) in by_secret {
        let receiver = TestReceiver::start_with(|config, dir| {
            let file = dir.join("secrets/vector-secret");
            std::fs::write(&file, &secret).expect("write secret");
            config.endpoints[0].app_secret_file = Some(file);
            config.endpoints[0].legacy_sha1_signature = true;
        })
        .await?;
        for (header, value, body) in cases {
            if !body.trim_start().starts_with('{') {
                continue;
            }
            let reply = receiver
                .post_with(PATH, &[(header.as_str(), value.as_str())], body.as_bytes())
                .await?;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{header} vector POST: {}",
                reply.text()
            );
        }
    }
    Ok(())
}
