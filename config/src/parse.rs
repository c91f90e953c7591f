//! Reading a configuration: the file, YAML parsing with messages for people, validation,
//! and the YAML the operator writes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::document::Config;
use crate::error::{ConfigError, invalid};
use crate::messages::Messages;

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_from(&text, Some(path))
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_from(text, None)
    }

    /// Parses and validates YAML text read from `path` (named in errors and their snippets).
    fn parse_from(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            if let Some(kind) = kubernetes_kind(text) {
                return ConfigError::KubernetesResource {
                    path: path.map_or_else(|| PathBuf::from("the file"), Path::to_owned),
                    kind,
                };
            }
            let shown = path.map(|p| p.display().to_string());
            let messages = Messages { text };
            let mut options = serde_saphyr::RenderOptions::new(&messages);
            options.source_name = Some(shown.as_deref().unwrap_or("config"));
            let rendered = e.render_with_options(options);
            // The snippet's heading is `error: line L column C: …`: the `error: ` is said
            // once, by whoever prints the error.
            let message = rendered.strip_prefix("error: ").unwrap_or(&rendered);
            ConfigError::Parse {
                path: path.map(Path::to_owned).unwrap_or_default(),
                message: message.to_owned(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as YAML (what the operator writes into a ConfigMap).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| invalid("(serialize)", e.to_string()))
    }
}

/// `Kind (apiVersion)` when `text` is a Kubernetes resource: top-level `apiVersion` and
/// `kind`, which no receiver configuration has (read only after the configuration failed to
/// parse, to say what the file is instead).
fn kubernetes_kind(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Resource {
        #[serde(rename = "apiVersion")]
        api_version: String,
        kind: String,
    }
    // A multi-document file (`---`): its first document tells.
    let first = serde_saphyr::from_multiple::<serde_json::Value>(text)
        .ok()
        .and_then(|docs| docs.into_iter().next())?;
    let resource: Resource = serde_json::from_value(first).ok()?;
    Some(format!("{} {}", resource.kind, resource.api_version))
}
