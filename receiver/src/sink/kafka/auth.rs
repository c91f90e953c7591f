//! How the `kafka` sink connects and authenticates: the client's properties (servers, the
//! idempotent producer with `acks=all`, compression, TLS files, SASL), built by a pure
//! function from the settings and the credentials, which are read from their files (with
//! tokio::fs, off the runtime's workers) at every (re)open, so a rotated Secret is used at
//! the next one.

use std::path::Path;
use std::time::Duration;

use metahook_config::sink::kafka::{KafkaSaslConfig, KafkaSinkConfig};

use crate::sink::secret::read_secret;

/// SASL credentials as read from their files.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    /// Reads the user and password files. Errors name the key and file, never a value.
    pub(super) async fn read(sasl: &KafkaSaslConfig) -> Result<Credentials, String> {
        Ok(Credentials {
            user: read_secret("kafka.sasl.user_file", &sasl.user_file).await?,
            password: read_secret("kafka.sasl.password_file", &sasl.password_file).await?,
        })
    }

    #[cfg(test)]
    pub(super) fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }
}

/// The librdkafka properties of the producer for `config`, with `credentials` when SASL is
/// configured. `enable.idempotence` makes the client number each partition's records so
/// the broker drops the client's own retries; `acks=all` waits for every in-sync replica.
/// Topics are never created by the sink (`allow.auto.create.topics=false`): a topic the
/// cluster does not have is a refusal, and its records become dead letters.
pub(super) fn client_properties(
    config: &KafkaSinkConfig,
    credentials: Option<&Credentials>,
) -> Vec<(&'static str, String)> {
    let millis = |d: Duration| d.as_millis().min(i32::MAX as u128).to_string();
    let mut properties = vec![
        ("bootstrap.servers", config.bootstrap_servers.join(",")),
        ("enable.idempotence", "true".to_owned()),
        ("acks", "all".to_owned()),
        ("compression.type", config.compression.as_str().to_owned()),
        ("message.timeout.ms", millis(config.delivery_timeout)),
        // An unknown topic fails its records within one attempt instead of after 30 s.
        (
            "topic.metadata.propagation.max.ms",
            millis(config.delivery_timeout),
        ),
        ("allow.auto.create.topics", "false".to_owned()),
        // Up to one batch of the consumer's in the client's queue, several times over.
        ("queue.buffering.max.messages", "200000".to_owned()),
        ("linger.ms", "5".to_owned()),
        ("socket.keepalive.enable", "true".to_owned()),
    ];
    let tls = config.uses_tls();
    let protocol = match (tls, config.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    properties.push(("security.protocol", protocol.to_owned()));
    if let Some(ca) = &config.ca_file {
        properties.push(("ssl.ca.location", path(ca)));
    }
    if let (Some(cert), Some(key)) = (&config.client_cert_file, &config.client_key_file) {
        properties.push(("ssl.certificate.location", path(cert)));
        properties.push(("ssl.key.location", path(key)));
    }
    if let Some(sasl) = &config.sasl {
        properties.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
        if let Some(credentials) = credentials {
            properties.push(("sasl.username", credentials.user.clone()));
            properties.push(("sasl.password", credentials.password.clone()));
        }
    }
    properties
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use metahook_config::sink::kafka::{KafkaCompression, SaslMechanism};

    use super::*;

    fn map(properties: Vec<(&'static str, String)>) -> BTreeMap<&'static str, String> {
        properties.into_iter().collect()
    }

    #[test]
    fn plaintext_is_idempotent_with_acks_all() {
        let config = KafkaSinkConfig::new(vec!["k1:9092".into(), "k2:9092".into()]);
        let p = map(client_properties(&config, None));
        assert_eq!(p["bootstrap.servers"], "k1:9092,k2:9092");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["security.protocol"], "plaintext");
        assert_eq!(p["message.timeout.ms"], "30000");
        assert_eq!(p["allow.auto.create.topics"], "false");
        assert!(!p.contains_key("sasl.mechanism") && !p.contains_key("ssl.ca.location"));
    }

    #[test]
    fn tls_and_sasl_become_the_security_protocol() {
        let mut config = KafkaSinkConfig::new(vec!["k:9093".into()]);
        config.compression = KafkaCompression::Lz4;
        config.ca_file = Some(PathBuf::from("/s/ca.crt"));
        config.client_cert_file = Some(PathBuf::from("/s/tls.crt"));
        config.client_key_file = Some(PathBuf::from("/s/tls.key"));
        config.sasl = Some(KafkaSaslConfig {
            mechanism: SaslMechanism::ScramSha256,
            user_file: PathBuf::from("/s/user"),
            password_file: PathBuf::from("/s/pass"),
        });
        let credentials = Credentials::new("bob", "s3cret");
        let p = map(client_properties(&config, Some(&credentials)));
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["compression.type"], "lz4");
        assert_eq!(p["ssl.ca.location"], "/s/ca.crt");
        assert_eq!(p["ssl.certificate.location"], "/s/tls.crt");
        assert_eq!(p["ssl.key.location"], "/s/tls.key");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(p["sasl.username"], "bob");
        assert_eq!(p["sasl.password"], "s3cret");
        assert!(!format!("{credentials:?}").contains("s3cret"));

        config.ca_file = None;
        config.client_cert_file = None;
        config.client_key_file = None;
        let p = map(client_properties(&config, Some(&credentials)));
        assert_eq!(p["security.protocol"], "sasl_plaintext");
        config.tls = true;
        config.sasl = None;
        let p = map(client_properties(&config, None));
        assert_eq!(p["security.protocol"], "ssl");
        assert!(!p.contains_key("ssl.ca.location"), "the system's CAs");
    }

    #[tokio::test]
    async fn credentials_are_read_from_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("user"), "bob\n").expect("write");
        std::fs::write(dir.path().join("pass"), "s3cret\r\n").expect("write");
        let mut sasl = KafkaSaslConfig {
            mechanism: SaslMechanism::Plain,
            user_file: dir.path().join("user"),
            password_file: dir.path().join("pass"),
        };
        assert_eq!(
            Credentials::read(&sasl).await,
            Ok(Credentials::new("bob", "s3cret"))
        );
        sasl.password_file = dir.path().join("missing");
        let err = Credentials::read(&sasl).await.expect_err("missing file");
        assert!(err.contains("kafka.sasl.password_file"), "{err}");
    }
}
