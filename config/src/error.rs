//! The configuration's error, a leaf every part of the configuration (and the receiver's
//! components checking their own settings at load) can name without importing anything else.

use std::path::{Path, PathBuf};

/// A configuration that cannot be used, naming the file and the bad key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid YAML, or a key has the wrong type or is unknown.
    #[error("{}{message}", in_file(path))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The file is a Kubernetes resource (a WebhookSubscription, say), not a receiver
    /// configuration.
    #[error(
        "{path} is a Kubernetes resource ({kind}), not a receiver configuration: apply it with \
         `kubectl apply -f {path}` (the operator runs the receivers it describes); --config and \
         check-config read a receiver configuration such as examples/local.yaml"
    )]
    KubernetesResource {
        /// The file.
        path: PathBuf,
        /// Its `kind` (and `apiVersion`).
        kind: String,
    },
    /// A value is not acceptable.
    #[error("config: {key}: {message}")]
    Invalid {
        /// The key, e.g. `endpoints[1].path`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `config file PATH: `, or `config: ` for text that came from no file.
fn in_file(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "config: ".to_owned()
    } else {
        format!("config file {}: ", path.display())
    }
}

/// A [`ConfigError::Invalid`] naming `key`.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// An error and its causes joined by `: `, each once (a message that already holds its
/// cause's text is not followed by it again): a client library's top-level message
/// ("error sending request") hides the cause ("Connection refused") in its sources, and
/// kube's `failed to infer config: …, kubeconfig: (failed to read kubeconfig …)` already
/// holds its cause's text. Shared by the receiver's and the operator's command lines.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
