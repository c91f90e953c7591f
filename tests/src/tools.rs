//! External tools the suite drives (helm, kubectl, promtool, prometheus, buildah, podman,
//! kubernetes-validate, tsc, ...): found in `$METAHOOK_TOOLS_DIR/bin` (default
//! `/var/cache/metahook/tools/bin`, filled by `scripts/install-tools.sh`), then on `PATH`.
//!
//! A test that needs a tool fails, naming it and the script that installs it: the checks
//! these tools make are part of the suite, so their absence must never pass silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Where `scripts/install-tools.sh` installs tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("METAHOOK_TOOLS_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/metahook/tools"), PathBuf::from)
}

/// The executable `name`, or an error saying how to install it.
pub fn find(name: &str) -> Result<PathBuf> {
    let installed = tools_dir().join("bin").join(name);
    if installed.is_file() {
        return Ok(installed);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "`{name}` is not installed (looked in {} and PATH): run scripts/install-tools.sh \
                 (scripts/test.sh does)",
                tools_dir().join("bin").display()
            )
        })
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Runs `tool args…` and returns its output; a non-zero exit is an error carrying the
/// command line, stdout and stderr.
pub fn run(tool: &str, args: &[&str]) -> Result<Output> {
    run_in(tool, args, &repo_root())
}

/// [`run`] in the directory `dir`.
pub fn run_in(tool: &str, args: &[&str], dir: &Path) -> Result<Output> {
    let program = find(tool)?;
    let output = Command::new(&program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("starting {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "`{tool} {}` failed with {}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}
