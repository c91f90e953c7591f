//! The receiver's configuration, built as the receiver's own [`Config`] type (one type,
//! not two) and written into a ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use metahook_receiver::config::{Config, ConfigError};
use serde_json::{Value, json};

use super::{CONFIG_KEY, DATA_DIR, HTTP_PORT, HTTPS_PORT, Inputs, METRICS_PORT, secret_path};
use crate::crd::{DeliveryModeSpec, RetrySpec, SinkSpec};
use crate::error::Error;

/// The receiver configuration for a subscription.
///
/// Built as JSON and read through the receiver's deserializer, so the receiver's defaults
/// and `deny_unknown_fields` apply exactly as to a hand-written file, then validated.
pub fn receiver_config(inputs: &Inputs<'_>) -> Result<Config, Error> {
    let spec = &inputs.sub.spec;
    let mut endpoint = json!({
        "name": format!("{}/{}", inputs.namespace, inputs.name),
        "path": spec.effective_path(),
        "objects": [spec.object],
        "app_secret_file": secret_path(&spec.app_secret_ref),
        "verify_token_file": secret_path(&inputs.verify_token),
    });
    if let Some(previous) = &spec.previous_app_secret_ref {
        endpoint["previous_app_secret_file"] = json!(secret_path(previous));
    }
    let sinks: Vec<Value> = spec
        .delivery
        .sinks
        .iter()
        .map(|sink| sink_config(sink, spec.delivery.retry.as_ref()))
        .collect();
    let port = if inputs.receiver_tls() {
        HTTPS_PORT
    } else {
        HTTP_PORT
    };
    let mut config = json!({
        "listen": format!("0.0.0.0:{port}"),
        "metrics_listen": format!("0.0.0.0:{METRICS_PORT}"),
        "endpoints": [endpoint],
        "spool": {"dir": format!("{DATA_DIR}/spool")},
        "delivery": {"mode": match spec.delivery.mode {
            DeliveryModeSpec::Spool => "spool",
            DeliveryModeSpec::Direct => "direct",
        }},
        "sinks": sinks,
        // Kubernetes removes a terminating pod from the Service's endpoints asynchronously:
        // keep accepting for a moment after /readyz turns 503.
        "shutdown_delay": "5s",
        "shutdown_grace": "25s",
    });
    if let Some(secret) = &inputs.tls_secret {
        let mut tls = json!({
            "cert_file": format!("{}/{secret}/tls.crt", super::SECRETS_DIR),
            "key_file": format!("{}/{secret}/tls.key", super::SECRETS_DIR),
            "mode": "server",
        });
        if inputs.receiver_checks_client()
            && let Some(ca) = &spec.tls.client_ca_ref
        {
            tls["mode"] = json!("mutual");
            tls["client_ca_file"] = json!(secret_path(ca));
            tls["allowed_client_names"] = json!(spec.tls.allowed_client_names);
        }
        config["tls"] = tls;
    }
    if spec.tls.mode == crate::crd::TlsModeSpec::Mutual
        && inputs.ingress_terminates()
        && let Some(ingress) = &spec.ingress
    {
        config["trusted_proxy"] = json!({
            "cidrs": ingress.trusted_proxy_cidrs,
            "allowed_client_names": spec.tls.allowed_client_names,
        });
    }
    let config: Config = serde_json::from_value(config).map_err(|e| {
        Error::Config(ConfigError::Invalid {
            key: "(built from the WebhookSubscription)".to_owned(),
            message: e.to_string(),
        })
    })?;
    config.validate()?;
    Ok(config)
}

fn sink_config(sink: &SinkSpec, default_retry: Option<&RetrySpec>) -> Value {
    let mut out = json!({"name": sink.name});
    if let Some(nats) = &sink.nats {
        let mut value = json!({"url": nats.url, "create_stream": nats.create_stream});
        if let Some(subject) = &nats.subject {
            value["subject"] = json!(subject);
        }
        if let Some(stream) = &nats.stream {
            value["stream"] = json!(stream);
        }
        out["nats"] = value;
    }
    if let Some(http) = &sink.http {
        let mut value = json!({"url": http.url});
        if let Some(secret) = &http.signing_secret_ref {
            value["signing_secret_file"] = json!(secret_path(secret));
        }
        if let Some(ca) = &http.ca_ref {
            value["ca_file"] = json!(secret_path(ca));
        }
        out["http"] = value;
    }
    if let Some(postgres) = &sink.postgres {
        let mut value = json!({"url_file": secret_path(&postgres.url_secret_ref)});
        if let Some(schema) = &postgres.schema {
            value["schema"] = json!(schema);
        }
        out["postgres"] = value;
    }
    if let Some(file) = &sink.file {
        out["file"] = json!({"path": format!("{DATA_DIR}/files/{}", file.name)});
    }
    if let Some(retry) = sink.retry.as_ref().or(default_retry) {
        let mut value = json!({});
        if let Some(attempts) = retry.max_attempts {
            value["max_attempts"] = json!(attempts);
        }
        if let Some(backoff) = &retry.max_backoff {
            value["max_backoff"] = json!(backoff);
        }
        out["retry"] = value;
    }
    out
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
