//! The receiver's configuration, built as the receiver's own [`Config`] type (one type,
//! not two) and written into a ConfigMap.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use metahook_config::redact::has_credentials;
use metahook_config::{
    AdminConfig, Config, ConfigError, DeliveryConfig, DeliveryMode, EndpointConfig, FileSinkConfig,
    HttpHeaderConfig, HttpSinkConfig, KafkaCompression, KafkaKey, KafkaSaslConfig, KafkaSinkConfig,
    NatsSinkConfig, PostgresSinkConfig, RetentionConfig, RetryConfig, SaslMechanism, SinkConfig,
    SinkKind, SpoolConfig, SslMode, TlsConfig, TlsMode, TrustedProxyConfig,
};

use super::{
    CONFIG_KEY, DATA_DIR, HTTP_PORT, HTTPS_PORT, Inputs, METRICS_PORT, admin_token_ref, secret_path,
};
use crate::crd::{
    self, DeliveryModeSpec, KafkaCompressionSpec, KafkaKeySpec, KafkaSaslMechanismSpec,
    PostgresSslModeSpec, RetrySpec, SecretKeyRef, SinkSpec, TlsModeSpec,
};
use crate::error::Error;

/// Kubernetes removes a terminating pod from the Service's endpoints asynchronously: the
/// receiver keeps accepting this long after /readyz turns 503.
const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// What the pod's grace period keeps besides the delay and the delivery: the process's
/// own exit, so Kubernetes never has to SIGKILL it mid-write.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How long a terminating receiver delivers its backlog: the pod's grace period less the
/// delay and the margin (at least 5 s; the CRD's minimum grace is 15 s).
pub fn shutdown_grace(termination_grace_seconds: i64) -> Duration {
    let grace = Duration::from_secs(u64::try_from(termination_grace_seconds).unwrap_or(0));
    grace
        .saturating_sub(SHUTDOWN_DELAY + SHUTDOWN_MARGIN)
        .max(Duration::from_secs(5))
}

/// The receiver configuration for a subscription: every key the spec does not set keeps
/// the receiver's default, and the result passes the receiver's own validation.
pub fn receiver_config(inputs: &Inputs<'_>) -> Result<Config, Error> {
    let spec = &inputs.sub.spec;
    let endpoint = EndpointConfig {
        name: format!("{}/{}", inputs.namespace, inputs.name),
        path: spec.effective_path(),
        objects: Some(vec![spec.object.clone()]),
        app_secret_file: Some(mounted(&spec.app_secret_ref)),
        app_secret_env: None,
        previous_app_secret_file: spec.previous_app_secret_ref.as_ref().map(mounted),
        previous_app_secret_env: None,
        verify_token_file: Some(mounted(&inputs.verify_token)),
        verify_token_env: None,
        legacy_sha1_signature: false,
    };
    let port = if inputs.receiver_tls() {
        HTTPS_PORT
    } else {
        HTTP_PORT
    };
    let mut spool = SpoolConfig::new(PathBuf::from(format!("{DATA_DIR}/spool")));
    if let Some(retention) = spec
        .delivery
        .spool
        .as_ref()
        .and_then(|spool| spool.retention.as_ref())
    {
        spool.retention = Some(retention_config(retention, spool.segment_bytes)?);
    }
    let mut config = Config::new(any_address(port)?, vec![endpoint], spool);
    config.metrics_listen = Some(any_address(METRICS_PORT)?);
    // The admin endpoint on the metrics port, behind the generated token: what a
    // WebhookReplay drives.
    config.admin = Some(AdminConfig {
        token_file: PathBuf::from(secret_path(&admin_token_ref(&inputs.name).key)),
    });
    config.delivery = DeliveryConfig {
        mode: match spec.delivery.mode {
            DeliveryModeSpec::Spool => DeliveryMode::Spool,
            DeliveryModeSpec::Direct => DeliveryMode::Direct,
        },
    };
    config.sinks = spec
        .delivery
        .sinks
        .iter()
        .enumerate()
        .map(|(i, sink)| sink_config(i, sink, spec.delivery.retry.as_ref()))
        .collect::<Result<_, _>>()?;
    config.shutdown_delay = SHUTDOWN_DELAY;
    config.shutdown_grace = shutdown_grace(super::workload::termination_grace_seconds(spec));
    if let Some(secret) = &inputs.tls_secret {
        let dir = format!("{}/{secret}", super::SECRETS_DIR);
        let mut tls = TlsConfig::new(
            PathBuf::from(format!("{dir}/tls.crt")),
            PathBuf::from(format!("{dir}/tls.key")),
        );
        if inputs.receiver_checks_client() {
            // Never rendered as plain HTTPS: mutual TLS without its CA is refused, not
            // downgraded (the CRD's rule says the same where the server evaluates it).
            let ca = spec.tls.client_ca_ref.as_ref().ok_or_else(|| {
                invalid(
                    "tls.clientCARef",
                    "tls.mode mutual needs the CA bundle Meta's client certificate chains to",
                )
            })?;
            tls.mode = TlsMode::Mutual;
            tls.client_ca_file = Some(mounted(ca));
            tls.allowed_client_names
                .clone_from(&spec.tls.allowed_client_names);
        }
        config.tls = Some(tls);
    }
    if spec.tls.mode == TlsModeSpec::Mutual
        && inputs.ingress_terminates()
        && let Some(ingress) = &spec.ingress
    {
        let cidrs = ingress
            .trusted_proxy_cidrs
            .iter()
            .map(|cidr| {
                cidr.parse()
                    .map_err(|e| invalid("trusted_proxy.cidrs", format!("{cidr:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut proxy = TrustedProxyConfig::new(cidrs);
        proxy
            .allowed_client_names
            .clone_from(&spec.tls.allowed_client_names);
        config.trusted_proxy = Some(proxy);
    }
    config.validate()?;
    Ok(config)
}

/// The receiver's sink for a CRD sink, with the sink's retries or else the delivery's.
fn sink_config(
    index: usize,
    sink: &SinkSpec,
    default_retry: Option<&RetrySpec>,
) -> Result<SinkConfig, Error> {
    check_url_credentials(index, sink)?;
    let mut kinds = sink_kinds(sink, &mut Vec::new()).into_iter();
    let (Some(kind), None) = (kinds.next(), kinds.next()) else {
        return Err(invalid(
            format!("sinks[{index}]"),
            "set exactly one sink kind: nats, http, postgres, kafka or file",
        ));
    };
    let retry = match sink.retry.as_ref().or(default_retry) {
        Some(spec) => retry_config(index, spec)?,
        None => RetryConfig::default(),
    };
    Ok(SinkConfig {
        name: sink.name.clone(),
        kind,
        retry,
    })
}

/// Refuses a sink URL carrying credentials (the CRD's CEL rule, for API servers without
/// CEL): they would be written into the ConfigMap and logged.
fn check_url_credentials(index: usize, sink: &SinkSpec) -> Result<(), Error> {
    let urls = [
        sink.nats
            .as_ref()
            .map(|nats| ("nats", nats.url.as_str(), crd::NATS_CREDENTIALS)),
        sink.http
            .as_ref()
            .map(|http| ("http", http.url.as_str(), crd::HTTP_CREDENTIALS)),
    ];
    for (kind, url, instead) in urls.into_iter().flatten() {
        if has_credentials(url) {
            return Err(invalid(
                format!("delivery.sinks[{index}].{kind}.url"),
                crd::url_credentials_message(instead),
            ));
        }
    }
    Ok(())
}

/// Every kind a CRD sink sets (the CRD's rule allows one), as the receiver's [`SinkKind`].
/// Each Secret key a kind reads is pushed to `secrets` as its path is written, so the
/// Secrets mounted and the files configured come from the same lines.
pub(crate) fn sink_kinds<'a>(
    sink: &'a SinkSpec,
    secrets: &mut Vec<&'a SecretKeyRef>,
) -> Vec<SinkKind> {
    let SinkSpec {
        name: _,
        nats,
        http,
        postgres,
        kafka,
        file,
        retry: _,
    } = sink;
    let mut mount = |reference: &'a SecretKeyRef| {
        secrets.push(reference);
        mounted(reference)
    };
    let nats = nats.as_ref().map(|spec| {
        let mut nats = NatsSinkConfig::new(&spec.url);
        if let Some(subject) = &spec.subject {
            nats.subject.clone_from(subject);
        }
        nats.stream.clone_from(&spec.stream);
        nats.create_stream = spec.create_stream;
        nats.user_file = spec.user_ref.as_ref().map(&mut mount);
        nats.password_file = spec.password_ref.as_ref().map(&mut mount);
        nats.token_file = spec.token_ref.as_ref().map(&mut mount);
        nats.nkey_seed_file = spec.nkey_seed_ref.as_ref().map(&mut mount);
        nats.credentials_file = spec.credentials_ref.as_ref().map(&mut mount);
        if let Some(tls) = &spec.tls {
            nats.ca_file = tls.ca_ref.as_ref().map(&mut mount);
            nats.client_cert_file = tls.client_cert_ref.as_ref().map(&mut mount);
            nats.client_key_file = tls.client_key_ref.as_ref().map(&mut mount);
        }
        SinkKind::Nats(nats)
    });
    let http = http.as_ref().map(|spec| {
        let mut http = HttpSinkConfig::new(&spec.url);
        http.signing_secret_file = spec.signing_secret_ref.as_ref().map(&mut mount);
        http.ca_file = spec.ca_ref.as_ref().map(&mut mount);
        if let Some(batch_size) = spec.batch_size {
            http.batch_size = usize::try_from(batch_size).unwrap_or(usize::MAX);
        }
        if let Some(basic) = &spec.basic_auth {
            http.username.clone_from(&basic.username);
            http.username_file = basic.username_ref.as_ref().map(&mut mount);
            http.password_file = Some(mount(&basic.password_ref));
        }
        http.bearer_token_file = spec.bearer_token_ref.as_ref().map(&mut mount);
        http.headers = spec
            .headers
            .iter()
            .map(|header| HttpHeaderConfig {
                name: header.name.clone(),
                value_file: mount(&header.value_ref),
            })
            .collect();
        SinkKind::Http(http)
    });
    let postgres = postgres.as_ref().map(|spec| {
        let mut postgres = PostgresSinkConfig::url_file(mount(&spec.url_secret_ref));
        if let Some(schema) = &spec.schema {
            postgres.schema.clone_from(schema);
        }
        postgres.ssl_mode = spec.ssl_mode.map(|mode| match mode {
            PostgresSslModeSpec::Disable => SslMode::Disable,
            PostgresSslModeSpec::Prefer => SslMode::Prefer,
            PostgresSslModeSpec::Require => SslMode::Require,
            PostgresSslModeSpec::VerifyCa => SslMode::VerifyCa,
            PostgresSslModeSpec::VerifyFull => SslMode::VerifyFull,
        });
        postgres.ca_file = spec.ca_ref.as_ref().map(&mut mount);
        SinkKind::Postgres(postgres)
    });
    let kafka = kafka.as_ref().map(|spec| {
        let mut kafka = KafkaSinkConfig::new(spec.bootstrap_servers.clone());
        if let Some(topic) = &spec.topic {
            kafka.topic.clone_from(topic);
        }
        if let Some(key) = spec.key {
            kafka.key = match key {
                KafkaKeySpec::Conversation => KafkaKey::Conversation,
                KafkaKeySpec::Account => KafkaKey::Account,
                KafkaKeySpec::EventId => KafkaKey::EventId,
                KafkaKeySpec::None => KafkaKey::None,
            };
        }
        if let Some(compression) = spec.compression {
            kafka.compression = match compression {
                KafkaCompressionSpec::None => KafkaCompression::None,
                KafkaCompressionSpec::Gzip => KafkaCompression::Gzip,
                KafkaCompressionSpec::Snappy => KafkaCompression::Snappy,
                KafkaCompressionSpec::Lz4 => KafkaCompression::Lz4,
                KafkaCompressionSpec::Zstd => KafkaCompression::Zstd,
            };
        }
        if let Some(tls) = &spec.tls {
            kafka.tls = true;
            kafka.ca_file = tls.ca_ref.as_ref().map(&mut mount);
            kafka.client_cert_file = tls.client_cert_ref.as_ref().map(&mut mount);
            kafka.client_key_file = tls.client_key_ref.as_ref().map(&mut mount);
        }
        kafka.sasl = spec.sasl.as_ref().map(|sasl| KafkaSaslConfig {
            mechanism: match sasl.mechanism {
                KafkaSaslMechanismSpec::Plain => SaslMechanism::Plain,
                KafkaSaslMechanismSpec::ScramSha256 => SaslMechanism::ScramSha256,
                KafkaSaslMechanismSpec::ScramSha512 => SaslMechanism::ScramSha512,
            },
            user_file: mount(&sasl.user_ref),
            password_file: mount(&sasl.password_ref),
        });
        if let Some(timeout) = &spec.delivery_timeout {
            // The CRD's rule admits only durations; one too large to parse becomes 0,
            // which the receiver's validation refuses naming the key.
            kafka.delivery_timeout = humantime::parse_duration(timeout).unwrap_or_default();
        }
        SinkKind::Kafka(kafka)
    });
    let file = file.as_ref().map(|spec| {
        SinkKind::File(FileSinkConfig {
            path: PathBuf::from(format!("{DATA_DIR}/files/{}", spec.name)),
        })
    });
    [nats, http, postgres, kafka, file]
        .into_iter()
        .flatten()
        .collect()
}

/// `spec.delivery.spool.retention` as the receiver's `spool.retention`, refused as the
/// receiver refuses it ([`RetentionConfig::problem`]) but naming the CRD's fields.
fn retention_config(
    spec: &crd::SpoolRetentionSpec,
    segment_bytes: u64,
) -> Result<RetentionConfig, Error> {
    const FIELD: &str = "delivery.spool.retention";
    let max_age = spec
        .max_age
        .as_deref()
        .map(|age| {
            humantime::parse_duration(age)
                .map_err(|e| invalid(format!("{FIELD}.maxAge"), format!("{age:?}: {e}")))
        })
        .transpose()?;
    let max_bytes = spec
        .max_bytes
        .as_deref()
        .map(|bytes| {
            metahook_config::parse_byte_size(bytes)
                .map_err(|e| invalid(format!("{FIELD}.maxBytes"), e))
        })
        .transpose()?
        .unwrap_or(0);
    let retention = RetentionConfig { max_age, max_bytes };
    if let Some((key, why)) = retention.problem(segment_bytes) {
        let field = match key {
            ".max_age" => ".maxAge",
            ".max_bytes" => ".maxBytes",
            other => other,
        };
        return Err(invalid(format!("{FIELD}{field}"), why));
    }
    Ok(retention)
}

fn retry_config(index: usize, spec: &RetrySpec) -> Result<RetryConfig, Error> {
    let mut retry = RetryConfig::default();
    if let Some(attempts) = spec.max_attempts {
        retry.max_attempts = attempts;
    }
    if let Some(backoff) = &spec.max_backoff {
        retry.max_backoff = humantime::parse_duration(backoff).map_err(|e| {
            invalid(
                format!("sinks[{index}].retry.max_backoff"),
                format!("{backoff:?}: {e}"),
            )
        })?;
    }
    Ok(retry)
}

/// The file a mounted Secret key appears as.
fn mounted(reference: &SecretKeyRef) -> PathBuf {
    PathBuf::from(secret_path(reference))
}

fn any_address(port: i32) -> Result<SocketAddr, Error> {
    let port = u16::try_from(port).map_err(|e| invalid("listen", e.to_string()))?;
    Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config(ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    })
}

/// The ConfigMap holding the configuration's YAML (`Config::to_yaml`).
pub fn config_map(inputs: &Inputs<'_>, config_yaml: &str) -> Result<ConfigMap, Error> {
    Ok(ConfigMap {
        metadata: inputs.meta(super::config_map_name(&inputs.name))?,
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            config_yaml.to_owned(),
        )])),
        ..ConfigMap::default()
    })
}
