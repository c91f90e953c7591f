//! The committed CRD and its documentation are what the code generates. Run with
//! `METAHOOK_UPDATE_DOCS=1` to rewrite them after a deliberate change.

use std::path::{Path, PathBuf};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn updating() -> bool {
    std::env::var_os("METAHOOK_UPDATE_DOCS").is_some()
}

/// Compares a generated file with the committed one, or rewrites it when updating.
fn check_generated(relative: &str, generated: &str, regenerate: &str) {
    let path = repo_file(relative);
    if updating() {
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{relative} is stale (or missing; first difference at line {}): regenerate it with `{regenerate}`",
            line + 1
        );
    }
}

#[test]
fn committed_crd_matches_the_code() {
    let yaml = metahook_operator::crd::crd_yaml().expect("serialize the CRD");
    check_generated(
        "crds/webhooksubscription.yaml",
        &yaml,
        "cargo run -p metahook-operator --bin crdgen > crds/webhooksubscription.yaml \
         (or METAHOOK_UPDATE_DOCS=1 cargo test -p metahook-operator --test crd)",
    );
}

