//! The binary's command line: help lists every configuration key, `sign` reproduces Meta's
//! signature, `check-config` accepts the example and names the bad key of a broken config.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use metahook_receiver::config::Config;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metahook-receiver"))
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every key of a fully populated configuration, as dotted leaf names.
fn config_keys() -> BTreeSet<String> {
    let mut config =
        Config::parse(include_str!("../../examples/local.yaml")).expect("example config");
    let endpoint = &mut config.endpoints[0];
    endpoint.previous_app_secret_env = Some("X".into());
    endpoint.legacy_sha1_signature = true;
    let value = serde_json::to_value(&config).expect("config as JSON");
    let mut keys = BTreeSet::new();
    collect(&value, "", &mut keys);
    keys
}

fn collect(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if child.is_object()
                    || child
                        .as_array()
                        .is_some_and(|a| a.first().is_some_and(serde_json::Value::is_object))
                {
                    collect(child, &name, keys);
                }
                keys.insert(name);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect(item, prefix, keys);
            }
        }
        _ => {}
    }
}

#[test]
fn help_and_docs_describe_every_config_key() {
    let help = bin().arg("--help").output().expect("run --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let docs =
        std::fs::read_to_string(repo("docs/configuration.md")).expect("docs/configuration.md");
    for key in config_keys() {
        let leaf = key.rsplit('.').next().unwrap_or(&key);
        assert!(help.contains(leaf), "--help does not mention {key}");
        // A key is described by its leaf name or a dotted tail of it (`retry.max_attempts`),
        // or as the head of a dotted name (`file.path`).
        let parts: Vec<&str> = key.split('.').collect();
        let described = (0..parts.len())
            .any(|i| docs.contains(&format!("`{}`", parts[i..].join("."))))
            || docs.contains(&format!("`{leaf}."));
        assert!(described, "docs/configuration.md does not describe {key}");
    }
    for command in ["run", "check-config", "sign", "dlq"] {
        assert!(help.contains(command), "--help does not list {command}");
    }
}

#[test]
fn sign_reproduces_the_known_vector() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), "TEST_APP_SECRET\n").expect("secret");
    std::fs::write(dir.path().join("body"), "test").expect("body");
    let out = bin()
        .args(["sign", "--secret-file"])
        .arg(dir.path().join("secret"))
        .arg(dir.path().join("body"))
        .output()
        .expect("run sign");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256=0c61947b610d4f45e65f3d680e26027121ec2413e77598bcb6cfc6e0d9888221"
    );
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let ok = bin()
        .arg("--config")
        .arg(repo("examples/local.yaml"))
        .arg("check-config")
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:0\nendpoints:\n  - name: a\n    path: /a\n    app_secret_file: /nonexistent/secret\n    verify_token_env: T:-t\nspool: {dir: x}\n").expect("write");
    let out = bin()
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/secret") && stderr.contains("endpoint a"),
        "{stderr}"
    );

    std::fs::write(
        &bad,
        "listen: 127.0.0.1:0\nendpoints: []\nspool: {dir: x}\n",
    )
    .expect("write");
    let out = bin()
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("endpoints"),
        "names the key"
    );
}

#[test]
fn without_config_the_embedded_default_runs_and_says_so() {
    let out = bin()
        .env_remove("METAHOOK_CONFIG")
        .args(["--log-format", "text", "check-config"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "no --config given: running the embedded default (examples/local.yaml: \
             127.0.0.1:8080, spool and data/events.jsonl under ./data, demo secrets \
             unless METAHOOK_APP_SECRET / METAHOOK_VERIFY_TOKEN are set)"
        ),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration is valid: 3 endpoint(s), 1 sink(s), listening on 127.0.0.1:8080 (http)\n"
    );
}

#[test]
fn each_os_cause_is_printed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .arg("check-config")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cannot read config file {}: No such file or directory (os error 2)",
            dir.path().join("absent.yaml").display()
        )),
        "{stderr}"
    );
}

#[test]
fn dlq_show_of_a_missing_entry_fails_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nendpoints:\n  - name: a\n    path: /a\n    app_secret_env: S:-s\n    verify_token_env: T:-t\nspool: {{dir: {}}}\nsinks:\n  - name: local\n    file: {{path: {}}}\n",
            dir.path().join("spool").display(),
            dir.path().join("events.jsonl").display()
        ),
    )
    .expect("write");
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["dlq", "show", "--sink", "local", "--seq", "99"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains(
            "sink local has no dead letter with seq 99 (it holds none; `dlq list --sink local` lists them)"
        ),
        "{stderr}"
    );
}
