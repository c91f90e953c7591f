//! The `metahook-operator` binary: its flags, and a clear error without a cluster.

use std::process::Command;

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metahook-operator"))
}

#[test]
fn help_lists_every_flag() {
    let output = operator().arg("--help").output().expect("run");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--receiver-image",
        "--metrics-addr",
        "--namespace",
        "--no-leader-election",
        "--lease-namespace",
        "--lease-name",
        "--identity",
        "--certificate-lifetime",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        assert!(
            include_str!("../../docs/operator.md").contains(&format!("`{flag}`")),
            "{flag} missing from docs/operator.md"
        );
    }
}

#[test]
fn without_a_cluster_it_says_what_is_missing() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = operator()
        .args(["--log-format", "text", "--metrics-addr", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Kubernetes client configuration"),
        "unclear error: {stderr}"
    );
    // Each cause once: kube's error repeats its source's text, which is not printed again.
    for cause in [
        "No such file or directory (os error 2)",
        "failed to read an incluster environment variable",
    ] {
        assert_eq!(
            stderr.matches(cause).count(),
            1,
            "{cause} repeated: {stderr}"
        );
    }
}

#[test]
fn a_bad_flag_value_is_named() {
    let output = operator()
        .args(["--certificate-lifetime", "soon"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--certificate-lifetime"), "{stderr}");
}

#[test]
fn metrics_listen_on_8081_so_a_receiver_on_its_default_8080_does_not_collide() {
    use clap::Parser as _;
    let cli = metahook_operator::cli::Cli::try_parse_from(["metahook-operator"]).expect("parse");
    assert_eq!(cli.metrics_addr.port(), 8081);
}

#[test]
fn namespace_takes_a_comma_separated_list_and_absent_means_the_cluster() {
    use clap::Parser as _;
    use metahook_operator::cli::Cli;
    use metahook_operator::watch::{WatchScope, watch_scopes};
    let cli = Cli::try_parse_from(["metahook-operator", "--namespace", "team-b,team-a,team-b"])
        .expect("parse");
    assert_eq!(
        watch_scopes(&cli.namespaces),
        vec![
            WatchScope::Namespace("team-a".to_owned()),
            WatchScope::Namespace("team-b".to_owned())
        ]
    );
    let cli = Cli::try_parse_from(["metahook-operator"]).expect("parse");
    assert_eq!(watch_scopes(&cli.namespaces), vec![WatchScope::Cluster]);
    assert_eq!(watch_scopes(&[String::new()]), vec![WatchScope::Cluster]);
}
