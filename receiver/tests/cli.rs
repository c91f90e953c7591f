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
    for command in ["run", "check-config", "drain", "sign", "dlq", "replay"] {
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
fn without_config_the_embedded_default_is_checked_and_says_so() {
    let out = bin()
        .env_remove("METAHOOK_CONFIG")
        .args(["--log-format", "text", "check-config", "--no-bind"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "no --config given: checking the embedded default (examples/local.yaml: \
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

/// A minimal configuration whose `listen`, `objects` and `spool.dir` lines are given.
fn config_with(dir: &Path, listen: &str, objects: &str, spool: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {listen}\nendpoints:\n  - name: a\n    path: /a\n{objects}    app_secret_env: S:-s\n    verify_token_env: T:-t\nspool:\n  dir: {}\n",
            spool.display()
        ),
    )
    .expect("write config");
    path
}

/// Runs `check-config --no-bind` (the configuration, not this machine's ports) on `config`
/// with text logs: (success, stdout, stderr).
fn check_config(config: &Path) -> (bool, String, String) {
    let out = bin()
        .args(["--log-format", "text", "--config"])
        .arg(config)
        .args(["check-config", "--no-bind"])
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_kubernetes_resource_is_recognized_and_the_way_to_apply_it_given() {
    let example = repo("examples/whatsapp.yaml");
    let (ok, _, stderr) = check_config(&example);
    assert!(!ok);
    let shown = example.display();
    assert!(
        stderr.contains(&format!(
            "error: {shown} is a Kubernetes resource (WebhookSubscription metahook.io/v1alpha1), \
             not a receiver configuration: apply it with `kubectl apply -f {shown}` (the \
             operator runs the receivers it describes); --config and check-config read a \
             receiver configuration such as examples/local.yaml"
        )),
        "{stderr}"
    );
}

#[test]
fn text_format_errors_are_lines_with_the_snippet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(dir.path(), "18080", "", &dir.path().join("spool"));
    let (ok, _, stderr) = check_config(&config);
    assert!(!ok);
    assert!(
        stderr.contains("listen: expected HOST:PORT, :PORT or IP:PORT, got `18080`"),
        "{stderr}"
    );
    // The snippet is lines of its own (the bad line, a caret under the value), not a
    // `\n`-escaped log field.
    assert!(
        stderr.lines().any(|l| l.ends_with("| listen: 18080")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.trim_start().starts_with("| ") && l.contains('^')),
        "{stderr}"
    );
    assert!(!stderr.contains("\\n"), "{stderr}");

    // In JSON, the same error is one field of one line.
    let out = bin()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("got `18080`") && e.contains('\n')),
        "{line}"
    );
}

#[test]
fn listen_takes_host_port_a_bare_port_or_ip_port_and_says_so_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    for (listen, shown) in [
        ("localhost:8080", "127.0.0.1:8080"),
        ("\":8080\"", "0.0.0.0:8080"),
        ("\"[::1]:8080\"", "[::1]:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
    ] {
        let (ok, stdout, stderr) = check_config(&config_with(dir.path(), listen, "", &spool));
        assert!(ok, "{listen}: {stderr}");
        assert_eq!(
            stdout,
            format!(
                "configuration is valid: 1 endpoint(s), 0 sink(s), listening on {shown} (http)\n"
            ),
            "{listen}"
        );
    }
    for (listen, message) in [
        (
            "18080",
            "listen: expected HOST:PORT, :PORT or IP:PORT, got `18080`",
        ),
        (
            "localhost",
            "listen: expected HOST:PORT, :PORT or IP:PORT, got `localhost`",
        ),
        (
            "\"http://localhost:8080\"",
            "listen: expected HOST:PORT, :PORT or IP:PORT, got `http://localhost:8080`",
        ),
        (
            "localhost:http",
            "listen: expected HOST:PORT, :PORT or IP:PORT, got `localhost:http`",
        ),
        (
            "no-such-host.invalid:8080",
            "listen: cannot resolve `no-such-host.invalid` (from `no-such-host.invalid:8080`)",
        ),
    ] {
        let (ok, _, stderr) = check_config(&config_with(dir.path(), listen, "", &spool));
        assert!(!ok, "{listen}");
        assert!(stderr.contains(message), "{listen}: {stderr}");
    }
    let config = config_with(dir.path(), "127.0.0.1:0", "", &spool);
    let text = std::fs::read_to_string(&config).expect("read") + "metrics_listen: 9090\n";
    std::fs::write(&config, text).expect("write");
    let (ok, _, stderr) = check_config(&config);
    assert!(!ok);
    assert!(
        stderr.contains("metrics_listen: expected HOST:PORT, :PORT or IP:PORT, got `9090`"),
        "{stderr}"
    );
}

#[test]
fn objects_must_be_meta_objects_and_a_platform_name_gets_a_suggestion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    for (object, suggestion) in [
        ("whatsapp", "; did you mean `whatsapp_business_account`?"),
        ("messenger", "; did you mean `page`?"),
        ("facebook", "; did you mean `page`?"),
        ("ig", "; did you mean `instagram`?"),
        ("Page", "; did you mean `page`?"),
        ("tiktok", ""),
    ] {
        let objects = format!("    objects: [{object}]\n");
        let (ok, _, stderr) =
            check_config(&config_with(dir.path(), "127.0.0.1:0", &objects, &spool));
        assert!(!ok, "{object}");
        assert!(
            stderr.contains(&format!(
                "config: endpoints[0].objects: `{object}` is not a Meta webhook object{suggestion} (Meta's objects: whatsapp_business_account, page, instagram, "
            )),
            "{object}: {stderr}"
        );
    }
    let objects = "    objects: [whatsapp_business_account, page, instagram, user, permissions]\n";
    let (ok, _, stderr) = check_config(&config_with(dir.path(), "127.0.0.1:0", objects, &spool));
    assert!(ok, "{stderr}");
}

#[test]
fn check_config_checks_the_spool_dir_can_be_created_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Absent, two levels deep: created, written, and removed again.
    let spool = dir.path().join("data").join("spool");
    let (ok, _, stderr) = check_config(&config_with(dir.path(), "127.0.0.1:0", "", &spool));
    assert!(ok, "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "check-config left its directories"
    );
    // Existing: written and left as it was.
    std::fs::create_dir_all(&spool).expect("spool");
    let (ok, _, stderr) = check_config(&config_with(dir.path(), "127.0.0.1:0", "", &spool));
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_dir(&spool).expect("read").count(),
        0,
        "junk left"
    );
    // Under a regular file: it cannot be created (root, who may write anywhere, too).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("file");
    let spool = file.join("spool");
    let (ok, _, stderr) = check_config(&config_with(dir.path(), "127.0.0.1:0", "", &spool));
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "error: spool.dir: cannot create {}: Not a directory (os error 20)",
            spool.display()
        )),
        "{stderr}"
    );
}

#[test]
fn help_defaults_never_stand_alone_like_section_headings() {
    // A line that is only `[...]` (a wrapped `[spool]`, clap's `[default: json]`) reads like a
    // heading. Argument placeholders (`[BODY_FILE]`, upper case) are clap's usage syntax.
    let heading = |line: &str| {
        let line = line.trim();
        line.starts_with('[') && line.ends_with(']') && line.chars().any(|c| c.is_ascii_lowercase())
    };
    for command in [
        &[][..],
        &["run"],
        &["check-config"],
        &["sign"],
        &["dlq"],
        &["dlq", "list"],
    ] {
        for flag in ["--help", "-h"] {
            for columns in ["60", "80", "100"] {
                let out = bin()
                    .args(command)
                    .arg(flag)
                    .env("COLUMNS", columns)
                    .output()
                    .expect("run");
                let help = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "{command:?} {flag}");
                let bad: Vec<&str> = help.lines().filter(|l| heading(l)).collect();
                assert!(
                    bad.is_empty(),
                    "{command:?} {flag} at {columns} columns: {bad:?}\n{help}"
                );
            }
        }
    }
}

/// `check-config` (binding, with text logs) on `config`: (success, stdout, stderr).
fn check_config_binding(config: &Path) -> (bool, String, String) {
    let out = bin()
        .args(["--log-format", "text", "--config"])
        .arg(config)
        .arg("check-config")
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error line(s) of a failed command's text-format stderr: from `error: ` on.
fn error_of(stderr: &str) -> &str {
    stderr.find("error: ").map_or(stderr, |at| &stderr[at..])
}

#[test]
fn config_errors_name_the_file_once_and_say_how_to_write_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let base =
        std::fs::read_to_string(config_with(dir.path(), "127.0.0.1:0", "", &spool)).expect("read");
    let file = dir.path().join("bad.yaml");
    let shown = file.display().to_string();
    for (extra, heading, arrow) in [
        (
            "listen: 127.0.0.1:1\n".to_owned(),
            "line 9 column 1: `listen` is set twice (first on line 1); keep one".to_owned(),
            ":9:1",
        ),
        (
            "limits:\n  max_body_bytes: 4 parsecs\n".to_owned(),
            "line 10 column 19: `4 parsecs` is not a byte size: write bytes (4194304) or a whole \
             number and a unit: 4MiB, 512KiB (1024-based), 4MB, 500kB (1000-based)"
                .to_owned(),
            ":10:19",
        ),
        (
            "limits:\n  body_timeout: 5\n".to_owned(),
            "line 10 column 3: `5` is not a duration: write a number and a unit, e.g. 5s, 500ms, \
             2m or 1h"
                .to_owned(),
            ":10:3",
        ),
        (
            "limits:\n  max_in_flight: lots\n".to_owned(),
            "line 10 column 18: not a whole number: write digits, e.g. 1024".to_owned(),
            ":10:18",
        ),
    ] {
        std::fs::write(&file, format!("{base}{extra}")).expect("write");
        let (ok, _, stderr) = check_config(&file);
        assert!(!ok, "{extra}");
        let mut lines = error_of(&stderr).lines();
        assert_eq!(
            lines.next(),
            Some(format!("error: config file {shown}: {heading}").as_str()),
            "{stderr}"
        );
        assert_eq!(
            lines.next().map(str::trim_start),
            Some(format!("--> {shown}{arrow}").as_str()),
            "{stderr}"
        );
        for leak in [
            "<input>",
            "DuplicateKeyPolicy",
            "invalid u64",
            "error: error",
        ] {
            assert!(!stderr.contains(leak), "{leak}: {stderr}");
        }
    }
    // Inside a list item, the first setting is found in that item.
    let duplicate_in_item = base.replace("    path: /a\n", "    path: /a\n    name: b\n");
    std::fs::write(&file, duplicate_in_item).expect("write");
    let (ok, _, stderr) = check_config(&file);
    assert!(!ok);
    assert!(
        error_of(&stderr).starts_with(&format!(
            "error: config file {shown}: line 5 column 5: `name` is set twice (first on line 3); \
             keep one\n"
        )),
        "{stderr}"
    );
    // Byte sizes take units; durations and sizes stay numbers when the config is written.
    std::fs::write(
        &file,
        format!(
            "{base}limits:\n  max_body_bytes: 4MB\n  max_buffered_body_bytes: 64 MiB\n  \
             min_body_bytes_per_second: 64Ki\n"
        ),
    )
    .expect("write");
    let (ok, _, stderr) = check_config(&file);
    assert!(ok, "{stderr}");
    let config = Config::load(&file).expect("load");
    assert_eq!(
        (
            config.limits.max_body_bytes,
            config.limits.max_buffered_body_bytes,
            config.limits.min_body_bytes_per_second
        ),
        (4_000_000, Some(64 << 20), 64 << 10)
    );
    assert!(
        config
            .to_yaml()
            .expect("yaml")
            .contains("max_body_bytes: 4000000\n")
    );
}

#[test]
fn check_config_binds_the_listeners_and_takes_the_spool_lock_as_run_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();

    let config = config_with(dir.path(), &format!("127.0.0.1:{port}"), "", &spool);
    let (ok, _, stderr) = check_config_binding(&config);
    assert!(!ok);
    assert_eq!(
        error_of(&stderr),
        format!(
            "error: listen 127.0.0.1:{port}: address already in use; a receiver started on this \
             configuration would be refused (check-config --no-bind skips these checks)\n"
        )
    );
    // --no-bind: for a configuration prepared elsewhere.
    let (ok, _, stderr) = check_config(&config);
    assert!(ok, "{stderr}");

    let config = config_with(dir.path(), "192.0.2.1:8080", "", &spool);
    let text = std::fs::read_to_string(&config).expect("read")
        + &format!("metrics_listen: 127.0.0.1:{port}\n");
    std::fs::write(&config, text).expect("write");
    let (ok, _, stderr) = check_config_binding(&config);
    assert!(!ok);
    assert_eq!(
        error_of(&stderr),
        format!(
            "error: listen 192.0.2.1:8080: address not available: no network interface of this \
             machine has 192.0.2.1; metrics_listen 127.0.0.1:{port}: address already in use; a \
             receiver started on this configuration would be refused (check-config --no-bind \
             skips these checks)\n"
        )
    );
    drop(taken);

    // A spool another receiver holds: a real one, running (ready, so it holds its lock).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = config_with(dir.path(), &free.to_string(), "", &spool);
    let mut receiver = bin()
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the receiver");
    // It binds its listeners before it takes the spool's locks.
    wait_for("the receiver to hold its spool", || {
        metahook_receiver::spool::held_lock(&spool).is_ok_and(|held| held.is_some())
    });
    let other = dir.path().join("other.yaml");
    // spool.lock_wait: 0s refuses at once (by default a start waits for the lock).
    std::fs::write(
        &other,
        std::fs::read_to_string(&config)
            .expect("read")
            .replace(&free.to_string(), "127.0.0.1:0")
            + "  lock_wait: 0s\n",
    )
    .expect("write");
    let (ok, _, stderr) = check_config_binding(&other);
    // What check-config warns of: run refuses.
    let run = bin()
        .args(["--log-format", "text", "--config"])
        .arg(&other)
        .arg("run")
        .output()
        .expect("run a second receiver");
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(!ok);
    let lock = spool.join("intake").join("LOCK");
    let run_stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{run_stderr}");
    assert_eq!(
        error_of(&run_stderr),
        format!(
            "error: cannot open the spool in {}: spool: in use by another receiver (it holds \
             {})\n",
            spool.display(),
            lock.display()
        )
    );
    assert_eq!(
        error_of(&stderr),
        format!(
            "error: spool.dir {}: in use by another receiver (it holds {}); a receiver started \
             on this configuration would be refused (check-config --no-bind skips these \
             checks)\n",
            spool.display(),
            lock.display()
        )
    );
    let (ok, _, stderr) = check_config_binding(&other);
    assert!(ok, "free again once it is gone: {stderr}");
}

/// Waits until `done` (a receiver process's state), for at most 20 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A configuration under `dir` with a file sink `local`, its spool in `dir/data/spool`.
fn config_with_sink(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sink.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nendpoints:\n  - name: a\n    path: /a\n    app_secret_env: S:-s\n    verify_token_env: T:-t\nspool: {{dir: {}}}\nsinks:\n  - name: local\n    file: {{path: {}}}\n{extra}",
            dir.join("data").join("spool").display(),
            dir.join("events.jsonl").display()
        ),
    )
    .expect("write");
    path
}

/// `dlq ARGS` on `config` (`None`: the embedded default) in `cwd`: (success, stdout, stderr).
fn dlq(config: Option<&Path>, cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = bin();
    command.env_remove("METAHOOK_CONFIG").current_dir(cwd);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let out = command.arg("dlq").args(args).output().expect("run dlq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dead_letter(seq: u64) -> metahook_receiver::spool::dead_letters::DeadLetter {
    metahook_receiver::spool::dead_letters::DeadLetter {
        seq,
        reason: "refused".into(),
        attempts: 1,
        dead_at: "2026-01-01T00:00:00Z".into(),
        event: serde_json::value::RawValue::from_string(format!(
            r#"{{"id":"e{seq}","kind":"message"}}"#
        ))
        .expect("raw"),
    }
}

#[test]
fn dlq_on_an_empty_store_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The embedded default, in an empty directory: no log line about "running" it.
    let (ok, stdout, stderr) = dlq(None, dir.path(), &["list", "--sink", "local"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "no dead letters of sink local in data/spool/dead-letters\n"
    );
    let (ok, stdout, stderr) = dlq(None, dir.path(), &["retry", "--sink", "local"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "no dead letters of sink local in data/spool/dead-letters: nothing queued\n"
    );
    assert_eq!(stderr, "");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read").count(),
        0,
        "dlq created files"
    );

    let config = config_with_sink(dir.path(), "");
    let store = dir.path().join("data").join("spool").join("dead-letters");
    let (ok, stdout, stderr) = dlq(Some(&config), dir.path(), &["show", "--sink", "local"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!("no dead letters of sink local in {}\n", store.display())
    );
    assert!(!dir.path().join("data").exists(), "dlq created the spool");
}

#[test]
fn dlq_retry_says_who_delivers_the_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_sink(dir.path(), "");
    let spool = dir.path().join("data").join("spool");
    let store = metahook_receiver::spool::dead_letters::DeadLetters::new(&spool);
    store
        .append("local", &[dead_letter(7), dead_letter(8)])
        .expect("append");
    let (ok, stdout, stderr) = dlq(Some(&config), dir.path(), &["retry", "--sink", "local"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "2 dead letter(s) of sink local queued for redelivery; no receiver is running on {}: \
             the next one started on it delivers them first\n",
            spool.display()
        )
    );

    let mut receiver = bin()
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the receiver");
    let events = dir.path().join("events.jsonl");
    let delivered = |ids: &[&str]| {
        std::fs::read_to_string(&events).is_ok_and(|text| {
            ids.iter()
                .all(|id| text.contains(&format!(r#""id":"{id}""#)))
        })
    };
    wait_for("the receiver to deliver the queued events", || {
        delivered(&["e7", "e8"])
    });
    store.append("local", &[dead_letter(9)]).expect("append");
    let (ok, stdout, stderr) = dlq(Some(&config), dir.path(), &["retry", "--sink", "local"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "1 dead letter(s) of sink local queued for redelivery; the receiver running on {} \
             delivers them next\n",
            spool.display()
        )
    );
    wait_for("the running receiver to deliver it", || delivered(&["e9"]));
    let _ = receiver.kill();
    let _ = receiver.wait();

    // Direct delivery has no consumer that would.
    let direct = config_with_sink(dir.path(), "delivery: {mode: direct}\n");
    store.append("local", &[dead_letter(10)]).expect("append");
    let (ok, stdout, stderr) = dlq(Some(&direct), dir.path(), &["retry", "--sink", "local"]);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(
            "dlq retry: with delivery.mode: direct no receiver redelivers dead letters (only \
             spool mode's sink consumers do); `dlq show --sink local` prints the events to send \
             again"
        ),
        "{stderr}"
    );
}

#[test]
fn a_demo_default_is_warned_of_once_not_at_every_secret_reload() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, "one").expect("write");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nendpoints:\n  - name: a\n    path: /a\n    app_secret_file: {}\n    verify_token_env: METAHOOK_TEST_UNSET_TOKEN:-demo\nspool: {{dir: {}}}\nsecret_reload_interval: 20ms\n",
            secret.display(),
            dir.path().join("spool").display()
        ),
    )
    .expect("write");
    let mut receiver = bin()
        .env_remove("METAHOOK_TEST_UNSET_TOKEN")
        .args(["--log-format", "text", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let stderr = receiver.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_line = |what: &str, seen: &mut Vec<String>| loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line saying {what:?}; saw {seen:#?}"));
        let found = line.contains(what);
        seen.push(line);
        if found {
            return;
        }
    };
    wait_line("receiver ready", &mut seen);
    // Two changes seen: the secrets were re-read at least twice since the start.
    for value in ["two", "three"] {
        std::fs::write(&secret, value).expect("write");
        wait_line("secrets changed on disk", &mut seen);
    }
    let _ = receiver.kill();
    let _ = receiver.wait();
    let warnings: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("documented demo default"))
        .collect();
    assert_eq!(warnings.len(), 1, "{seen:#?}");
    assert!(
        warnings[0].contains(
            "secret variables unset: using their documented demo defaults (set them for \
             production)"
        ) && warnings[0].contains("METAHOOK_TEST_UNSET_TOKEN"),
        "{seen:#?}"
    );
}
