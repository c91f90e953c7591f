//! The container images built by `scripts/build-images.sh` (scripts/test.sh builds them
//! before the tests): run with podman + runc as Kubernetes would run them — non-root,
//! read-only root filesystem, no capabilities — the receiver image answers Meta's handshake
//! and stores a signed fixture; the operator image prints its help. Their metadata carries
//! the OCI labels and the Cargo version.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use metahook_tests::podman::{Container, podman, podman_ok};
use metahook_tests::testkit::{self, read_events};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const SECRET: &str = "image-test-app-secret";
const TOKEN: &str = "image-test-verify-token";

fn image(component: &str) -> String {
    format!("localhost/metahook-{component}:{VERSION}")
}

/// Fails with the command that builds the image when it is missing.
fn require_image(component: &str) -> Result<()> {
    let name = image(component);
    if !podman(&["image", "exists", &name])?.status.success() {
        bail!("image {name} is missing: run scripts/build-images.sh (scripts/test.sh does)");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[test]
fn images_carry_oci_labels_the_cargo_version_and_a_non_root_user() -> Result<()> {
    for component in ["receiver", "operator"] {
        require_image(component)?;
        let inspected = podman_ok(&["image", "inspect", &image(component)])?;
        let inspected: serde_json::Value =
            serde_json::from_str(&inspected).context("podman image inspect output")?;
        let config = &inspected[0]["Config"];
        let labels = &config["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"], VERSION,
            "{component}"
        );
        assert_eq!(
            labels["org.opencontainers.image.title"],
            format!("metahook-{component}")
        );
        for label in [
            "org.opencontainers.image.revision",
            "org.opencontainers.image.created",
            "org.opencontainers.image.source",
            "org.opencontainers.image.licenses",
            "org.opencontainers.image.description",
        ] {
            let value = labels[label].as_str().unwrap_or_default();
            assert!(
                !value.is_empty() && value != "unknown",
                "{component}: label {label} is {value:?}"
            );
        }
        assert_eq!(config["User"], "65532:65532", "{component} runs as 65532");
        assert_eq!(
            config["Entrypoint"][0],
            format!("/usr/local/bin/metahook-{component}")
        );
        // No shell: the image holds the program and nothing to exec into.
        let shell = podman(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &image(component),
            "-c",
            "true",
        ])?;
        assert!(
            !shell.status.success(),
            "{component} image has a /bin/sh it should not have"
        );
    }
    Ok(())
}

#[test]
fn operator_image_prints_its_help() -> Result<()> {
    require_image("operator")?;
    let help = podman_ok(&[
        "run",
        "--rm",
        "--read-only",
        "--cap-drop",
        "ALL",
        &image("operator"),
        "--help",
    ])?;
    for flag in [
        "--receiver-image",
        "--metrics-addr",
        "--namespace",
        "--no-leader-election",
    ] {
        assert!(help.contains(flag), "operator --help lacks {flag}:\n{help}");
    }
    let version = podman_ok(&["run", "--rm", &image("operator"), "--version"])?;
    assert_eq!(version.trim(), format!("metahook-operator {VERSION}"));
    Ok(())
}

/// The receiver's configuration inside the container, as the operator lays it out
/// (config, secrets and data under the paths its Deployment mounts).
fn write_receiver_files(dir: &Path) -> Result<()> {
    let config = dir.join("config");
    let secrets = dir.join("secrets");
    let data = dir.join("data");
    for sub in [&config, &secrets, &data] {
        std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    std::fs::write(
        config.join("config.yaml"),
        "listen: 0.0.0.0:8080\n\
         endpoints:\n\
         \x20 - name: whatsapp\n\
         \x20   path: /webhooks/whatsapp\n\
         \x20   objects: [whatsapp_business_account]\n\
         \x20   app_secret_file: /etc/metahook/secrets/app-secret\n\
         \x20   verify_token_file: /etc/metahook/secrets/verify-token\n\
         spool:\n\
         \x20 dir: /var/lib/metahook/spool\n\
         sinks:\n\
         \x20 - name: local\n\
         \x20   file: {path: /var/lib/metahook/events.jsonl}\n",
    )
    .context("writing config.yaml")?;
    std::fs::write(secrets.join("app-secret"), SECRET).context("writing app-secret")?;
    std::fs::write(secrets.join("verify-token"), TOKEN).context("writing verify-token")?;
    // The container runs as 65532 and writes only to the data volume.
    let chown = Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(&data)
        .status()
        .context("running chown")?;
    ensure!(chown.success(), "chown of {} failed", data.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_image_runs_locked_down_and_stores_a_signed_fixture() -> Result<()> {
    require_image("receiver")?;
    let dir = tempfile::tempdir()?;
    write_receiver_files(dir.path())?;
    let port = free_port()?;
    let name = format!("metahook-image-test-{}", std::process::id());
    let mount = |sub: &str, target: &str, mode: &str| {
        format!("{}:{target}:{mode}", dir.path().join(sub).display())
    };
    let _ = podman(&["rm", "--force", &name]);
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--publish",
        &format!("127.0.0.1:{port}:8080"),
        "--volume",
        &mount("config", "/etc/metahook/config", "ro"),
        "--volume",
        &mount("secrets", "/etc/metahook/secrets", "ro"),
        "--volume",
        &mount("data", "/var/lib/metahook", "rw"),
        &image("receiver"),
        "--config",
        "/etc/metahook/config/config.yaml",
    ])?;
    let container = Container { name };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;

    testkit::wait_ready(addr, Duration::from_secs(30)).await?;
    let challenge = testkit::request(
        addr,
        Method::GET,
        &format!(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={TOKEN}&hub.challenge=4242"
        ),
        &[],
        Bytes::new(),
    )
    .await?;
    assert_eq!(challenge.status, StatusCode::OK);
    assert_eq!(challenge.text(), "4242");

    let body = std::fs::read(testkit::own_fixtures_dir().join("whatsapp__messages.text.json"))
        .context("reading the text fixture")?;
    let signature = metahook_receiver::verify::sign(SECRET.as_bytes(), &body);
    let answer = testkit::request(
        addr,
        Method::POST,
        "/webhooks/whatsapp",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &signature),
        ],
        Bytes::from(body),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    let forged = testkit::request(
        addr,
        Method::POST,
        "/webhooks/whatsapp",
        &[("x-hub-signature-256", &format!("sha256={}", "0".repeat(64)))],
        Bytes::from_static(b"{}"),
    )
    .await?;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let events_path = dir.path().join("data/events.jsonl");
    let events = testkit::wait_for_lines(&events_path, 1, Duration::from_secs(10)).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "message");
    assert_eq!(events[0]["platform"], "whatsapp");
    assert_eq!(events[0]["message"]["type"], "text");

    // SIGTERM drains and exits 0, as a pod's termination would.
    podman_ok(&["stop", "--time", "20", &container.name])?;
    let exit = podman_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &container.name,
    ])?;
    assert_eq!(exit.trim(), "0", "the receiver exits 0 on SIGTERM");
    assert_eq!(read_events(&events_path)?.len(), 1);
    Ok(())
}
