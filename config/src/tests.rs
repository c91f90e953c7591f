//! The configuration as a whole: the contract example, defaults, byte sizes, round trips and
//! the keys errors name.

use std::path::PathBuf;

use crate::byte_size::parse_byte_size;
use crate::{Config, SinkKind};

const CONTRACT: &str = r"
listen: 127.0.0.1:8080
endpoints:
  - name: meta
    path: /webhooks/meta
    objects: [whatsapp_business_account, page, instagram]
    app_secret_file: secrets/app-secret
    previous_app_secret_file: secrets/old
    verify_token_file: secrets/verify-token
spool:
  dir: data/spool
sinks:
  - name: local
    file: {path: data/events.jsonl}
";

#[test]
fn the_contract_example_parses_with_defaults() {
    let config = Config::parse(CONTRACT).expect("contract config");
    assert_eq!(config.listen.port(), 8080);
    assert_eq!(config.endpoints[0].path, "/webhooks/meta");
    assert_eq!(config.limits.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(
        match &config.sinks[0].kind {
            SinkKind::File(file) => Some(file.path.clone()),
            _ => None,
        },
        Some(PathBuf::from("data/events.jsonl"))
    );
}

#[test]
fn enrichment_needs_the_spool() {
    let enriched = format!(
        "{CONTRACT}enrichment:\n  lead_ads:\n    page_tokens:\n      - {{page_id: '1', token_env: T}}\n"
    );
    Config::parse(&enriched).expect("enrichment in spool mode");
    let direct = format!("{enriched}delivery: {{mode: direct}}\n");
    let err = Config::parse(&direct).expect_err("direct").to_string();
    assert!(
        err.contains("enrichment") && err.contains("delivery.mode: spool"),
        "{err}"
    );
}

#[test]
fn byte_sizes_take_units_and_say_the_forms_otherwise() {
    for (text, bytes) in [
        ("4194304", 4_194_304),
        ("4MiB", 4 << 20),
        ("4 MiB", 4 << 20),
        ("4mi", 4 << 20),
        ("4MB", 4_000_000),
        ("500kB", 500_000),
        ("64Ki", 64 << 10),
        ("1GiB", 1 << 30),
        ("10B", 10),
    ] {
        assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
    }
    for text in ["4 parsecs", "MiB", "-1", "1.5MiB", ""] {
        assert_eq!(
            parse_byte_size(text),
            Err(format!(
                "`{text}` is not a byte size: write bytes (4194304) or a whole number and \
                 a unit: 4MiB, 512KiB (1024-based), 4MB, 500kB (1000-based)"
            )),
            "{text}"
        );
    }
    assert_eq!(
        parse_byte_size("99999999999GiB"),
        Err("`99999999999GiB` is more bytes than this receiver can count".to_owned())
    );
}

#[test]
fn round_trips_through_yaml() {
    let config = Config::parse(CONTRACT).expect("contract config");
    let yaml = config.to_yaml().expect("yaml");
    assert_eq!(Config::parse(&yaml).expect("reparse"), config);
}

#[test]
fn errors_name_the_bad_key() {
    let typo = CONTRACT.replace("app_secret_file:", "app_secert_file:");
    let err = Config::parse(&typo).expect_err("typo").to_string();
    assert!(err.contains("app_secert_file"), "{err}");

    let both = CONTRACT.replace(
        "verify_token_file: secrets/verify-token",
        "verify_token_file: a\n    verify_token_env: B",
    );
    let err = Config::parse(&both).expect_err("both").to_string();
    assert!(err.contains("endpoints[0].verify_token_file"), "{err}");

    let bad_path = CONTRACT.replace("path: /webhooks/meta", "path: webhooks");
    let err = Config::parse(&bad_path).expect_err("path").to_string();
    assert!(err.contains("endpoints[0].path"), "{err}");

    let reserved = CONTRACT.replace("path: /webhooks/meta", "path: /metrics");
    assert!(
        Config::parse(&reserved)
            .expect_err("reserved")
            .to_string()
            .contains("served by the receiver")
    );

    let no_kind = CONTRACT.replace("    file: {path: data/events.jsonl}\n", "");
    assert!(
        Config::parse(&no_kind)
            .expect_err("kind")
            .to_string()
            .contains("sinks[0]")
    );
}

#[test]
fn retention_and_admin_are_off_by_default_and_errors_name_the_key() {
    let config = Config::parse(CONTRACT).expect("contract config");
    assert_eq!(config.spool.retention, None);
    assert_eq!(config.admin, None);
    let with = |extra: &str| {
        CONTRACT.replace(
            "  dir: data/spool\n",
            &format!("  dir: data/spool\n{extra}"),
        )
    };
    let config =
        Config::parse(&with("  retention: {max_age: 24h, max_bytes: 1GiB}\n")).expect("retention");
    let retention = config.spool.retention.expect("set");
    assert_eq!(
        retention.max_age,
        Some(std::time::Duration::from_secs(86_400))
    );
    assert_eq!(retention.max_bytes, 1 << 30);
    for (extra, key) in [
        ("  retention: {}\n", "spool.retention"),
        ("  retention: {max_age: 0s}\n", "spool.retention.max_age"),
        (
            "  retention: {max_bytes: 1MiB}\n",
            "spool.retention.max_bytes",
        ),
    ] {
        let err = Config::parse(&with(extra)).expect_err(extra).to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    let err = Config::parse(&format!("{CONTRACT}admin: {{token_file: /t}}\n"))
        .expect_err("admin without metrics_listen")
        .to_string();
    assert!(
        err.contains("admin") && err.contains("metrics_listen"),
        "{err}"
    );
    let config = Config::parse(&format!(
        "{CONTRACT}metrics_listen: 127.0.0.1:9090\nadmin: {{token_file: /t}}\n"
    ))
    .expect("admin");
    assert_eq!(config.admin.expect("set").token_file, PathBuf::from("/t"));
}
