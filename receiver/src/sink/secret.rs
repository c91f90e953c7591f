//! Credential files the sinks read at every (re)connection (mounted Secrets), so a rotated
//! Secret is used at the next one.

use std::path::Path;

/// A secret file's text without its trailing newlines; the error names the configuration
/// key and the file, never the value. Read with tokio::fs, off the runtime's workers.
pub(crate) async fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{key} {} is not UTF-8 text", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}
