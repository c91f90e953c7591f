//! Endpoint secrets from files or the environment, re-read while running.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, so the files are polled and
//! their contents compared; a changed secret takes effect without a restart. A file that
//! cannot be read keeps the last good value (and is logged), so a half-written update never
//! locks Meta out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use metahook_config::EndpointConfig;

/// Where one secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file; trailing newlines are trimmed (`echo secret > file` is common).
    File(PathBuf),
    /// An environment variable, with an optional default (`VAR:-default`).
    Env {
        /// The variable.
        var: String,
        /// The value when it is unset.
        default: Option<String>,
    },
}

impl SecretSource {
    pub(crate) fn from_config(
        file: Option<&PathBuf>,
        env: Option<&String>,
    ) -> Option<SecretSource> {
        if let Some(file) = file {
            return Some(SecretSource::File(file.clone()));
        }
        env.map(|spec| match spec.split_once(":-") {
            Some((var, default)) => SecretSource::Env {
                var: var.to_owned(),
                default: Some(default.to_owned()),
            },
            None => SecretSource::Env {
                var: spec.clone(),
                default: None,
            },
        })
    }

    /// Reads the secret now.
    pub fn read(&self) -> Result<Vec<u8>, SecretError> {
        self.read_noting_default(&mut Vec::new())
    }

    /// Reads the secret now; when it is an unset variable's default (`VAR:-default`), adds
    /// the variable to `defaulted` (the caller says so once, not at every re-read).
    fn read_noting_default(&self, defaulted: &mut Vec<String>) -> Result<Vec<u8>, SecretError> {
        let value = match self {
            SecretSource::File(path) => read_file(path)?,
            SecretSource::Env { var, default } => match std::env::var(var) {
                Ok(value) => value.into_bytes(),
                Err(_) => match default {
                    Some(default) => {
                        if !defaulted.contains(var) {
                            defaulted.push(var.clone());
                        }
                        default.clone().into_bytes()
                    }
                    None => return Err(SecretError::Env { var: var.clone() }),
                },
            },
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                origin: self.describe(),
            });
        }
        Ok(value)
    }

    /// Where the secret comes from, for messages (never the value).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Env { var, .. } => format!("environment variable {var}"),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            SecretSource::File(path) => Some(path),
            SecretSource::Env { .. } => None,
        }
    }
}

/// Reads a secret file (a mounted Secret key), without its trailing newlines
/// (`echo secret > file` is common). The one reader of secret files: endpoint secrets, the
/// HTTP sink's signing secret, the PostgreSQL sink's URL.
pub fn read_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    let mut bytes = std::fs::read(path).map_err(|source| SecretError::File {
        path: path.to_owned(),
        source,
    })?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The variable is unset and has no default.
    #[error("secret environment variable {var} is not set")]
    Env {
        /// The variable.
        var: String,
    },
    /// The secret is empty.
    #[error("secret from {origin} is empty")]
    Empty {
        /// Where it came from.
        origin: String,
    },
}

/// The secrets of one endpoint at one moment.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecrets {
    /// App secrets to accept: the current one, then the previous one if configured.
    pub app_secrets: Vec<Vec<u8>>,
    /// The handshake's verify token.
    pub verify_token: Vec<u8>,
}

impl std::fmt::Debug for EndpointSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSecrets")
            .field(
                "app_secrets",
                &format_args!("[{} redacted]", self.app_secrets.len()),
            )
            .field("verify_token", &"redacted")
            .finish()
    }
}

/// An endpoint's secret sources and their current values, swapped atomically on reload.
#[derive(Debug)]
pub struct SecretStore {
    endpoint: String,
    /// Variables whose demo default is in force (said at load, and again when this changes).
    defaulted: std::sync::Mutex<Vec<String>>,
    app_secret: SecretSource,
    previous_app_secret: Option<SecretSource>,
    verify_token: SecretSource,
    current: ArcSwap<EndpointSecrets>,
}

impl SecretStore {
    /// Reads every secret of an endpoint; fails naming the first that cannot be read.
    pub fn load(endpoint: &EndpointConfig) -> Result<SecretStore, SecretError> {
        let missing = || SecretError::Env {
            var: format!("(endpoint {} has no secret source)", endpoint.name),
        };
        let app_secret = SecretSource::from_config(
            endpoint.app_secret_file.as_ref(),
            endpoint.app_secret_env.as_ref(),
        )
        .ok_or_else(missing)?;
        let previous_app_secret = SecretSource::from_config(
            endpoint.previous_app_secret_file.as_ref(),
            endpoint.previous_app_secret_env.as_ref(),
        );
        let verify_token = SecretSource::from_config(
            endpoint.verify_token_file.as_ref(),
            endpoint.verify_token_env.as_ref(),
        )
        .ok_or_else(missing)?;
        let (current, defaulted) =
            read_all(&app_secret, previous_app_secret.as_ref(), &verify_token)?;
        warn_of_defaults(&endpoint.name, &defaulted);
        Ok(SecretStore {
            endpoint: endpoint.name.clone(),
            defaulted: std::sync::Mutex::new(defaulted),
            app_secret,
            previous_app_secret,
            verify_token,
            current: ArcSwap::from_pointee(current),
        })
    }

    /// The secrets in force.
    pub fn current(&self) -> Arc<EndpointSecrets> {
        self.current.load_full()
    }

    /// Re-reads the sources; returns whether anything changed. On error the old values stay.
    pub fn reload(&self) -> Result<bool, SecretError> {
        let (fresh, defaulted) = read_all(
            &self.app_secret,
            self.previous_app_secret.as_ref(),
            &self.verify_token,
        )?;
        if let Ok(mut before) = self.defaulted.lock()
            && *before != defaulted
        {
            if defaulted.is_empty() {
                tracing::info!(endpoint = %self.endpoint, "secret variables set: no demo default in force any more");
            } else {
                warn_of_defaults(&self.endpoint, &defaulted);
            }
            *before = defaulted;
        }
        if *self.current.load_full() == fresh {
            return Ok(false);
        }
        self.current.store(Arc::new(fresh));
        Ok(true)
    }

    /// Whether any secret comes from a file (only those can change while running).
    pub fn has_files(&self) -> bool {
        [
            Some(&self.app_secret),
            self.previous_app_secret.as_ref(),
            Some(&self.verify_token),
        ]
        .into_iter()
        .flatten()
        .any(|s| s.path().is_some())
    }
}

/// The secrets now, and the variables whose demo default is in force.
fn read_all(
    app_secret: &SecretSource,
    previous: Option<&SecretSource>,
    verify_token: &SecretSource,
) -> Result<(EndpointSecrets, Vec<String>), SecretError> {
    let mut defaulted = Vec::new();
    let mut app_secrets = vec![app_secret.read_noting_default(&mut defaulted)?];
    if let Some(previous) = previous {
        app_secrets.push(previous.read_noting_default(&mut defaulted)?);
    }
    let verify_token = verify_token.read_noting_default(&mut defaulted)?;
    Ok((
        EndpointSecrets {
            app_secrets,
            verify_token,
        },
        defaulted,
    ))
}

/// One warning for the demo defaults an endpoint's secrets use (at load, and when that
/// changes; never at every re-read).
fn warn_of_defaults(endpoint: &str, defaulted: &[String]) {
    if !defaulted.is_empty() {
        tracing::warn!(
            endpoint,
            variables = defaulted.join(", "),
            "secret variables unset: using their documented demo defaults (set them for production)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_spec_with_default() {
        let source =
            SecretSource::from_config(None, Some(&"METAHOOK_TEST_UNSET_VAR:-demo".to_owned()));
        assert_eq!(
            source.as_ref().map(|s| s.read().ok()),
            Some(Some(b"demo".to_vec()))
        );
        let bare = SecretSource::from_config(None, Some(&"METAHOOK_TEST_UNSET_VAR".to_owned()));
        assert!(matches!(
            bare.map(|s| s.read()),
            Some(Err(SecretError::Env { .. }))
        ));
    }

    #[test]
    fn file_is_trimmed_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        let token = dir.path().join("token");
        std::fs::write(&secret, "one\n").expect("write");
        std::fs::write(&token, "tok").expect("write");
        let endpoint = EndpointConfig {
            name: "e".into(),
            path: "/e".into(),
            objects: None,
            app_secret_file: Some(secret.clone()),
            app_secret_env: None,
            previous_app_secret_file: None,
            previous_app_secret_env: None,
            verify_token_file: Some(token),
            verify_token_env: None,
            legacy_sha1_signature: false,
        };
        let store = SecretStore::load(&endpoint).expect("load");
        assert_eq!(store.current().app_secrets, vec![b"one".to_vec()]);
        assert!(!store.reload().expect("reload"));
        std::fs::write(&secret, "two").expect("write");
        assert!(store.reload().expect("reload"));
        assert_eq!(store.current().app_secrets, vec![b"two".to_vec()]);
        std::fs::remove_file(&secret).expect("remove");
        assert!(store.reload().is_err());
        assert_eq!(
            store.current().app_secrets,
            vec![b"two".to_vec()],
            "old value kept"
        );
        assert!(format!("{:?}", store.current()).contains("redacted"));
    }
}
