//! A container's environment as the kubelet builds it: `envFrom` ConfigMaps and Secrets
//! first, then `env` (later names win), values from the pod's own fields, ConfigMap and
//! Secret keys, and `$(VAR)` references expanded in values, command and args.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::Setup;

/// The environment of `container` in `pod`, in order. `host_ip` answers `status.hostIP`;
/// `status.podIP` cannot be answered: the address exists only once the container runs.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    container: &Container,
    host_ip: Option<&str>,
) -> Result<Vec<(String, String)>, Setup> {
    let namespace = pod.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(existing, _)| *existing != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(source) = &from.config_map_ref {
            let found = config_maps.get_opt(&source.name).await.map_err(|err| {
                Setup::Wait(anyhow!(err).context(format!("envFrom ConfigMap {}", source.name)))
            })?;
            match found {
                Some(config_map) => {
                    for (key, value) in config_map.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{key}"), value);
                    }
                }
                None if source.optional == Some(true) => {}
                None => {
                    return Err(Setup::Wait(anyhow!(
                        "envFrom: ConfigMap {} does not exist",
                        source.name
                    )));
                }
            }
        } else if let Some(source) = &from.secret_ref {
            let found = secrets.get_opt(&source.name).await.map_err(|err| {
                Setup::Wait(anyhow!(err).context(format!("envFrom Secret {}", source.name)))
            })?;
            match found {
                Some(secret) => {
                    for (key, value) in secret.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{key}"),
                            String::from_utf8_lossy(&value.0).into_owned(),
                        );
                    }
                }
                None if source.optional == Some(true) => {}
                None => {
                    return Err(Setup::Wait(anyhow!(
                        "envFrom: Secret {} does not exist",
                        source.name
                    )));
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &env),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, host_ip)
                        .map_err(|err| Setup::Fail(err.context(format!("env {}", var.name))))?
                } else if let Some(key) = &from.config_map_key_ref {
                    let found = config_maps.get_opt(&key.name).await.map_err(|err| {
                        Setup::Wait(
                            anyhow!(err)
                                .context(format!("env {}: ConfigMap {}", var.name, key.name)),
                        )
                    })?;
                    match found.and_then(|c| c.data.and_then(|mut d| d.remove(&key.key))) {
                        Some(value) => value,
                        None if key.optional == Some(true) => continue,
                        None => {
                            return Err(Setup::Wait(anyhow!(
                                "env {}: ConfigMap {} has no key {}",
                                var.name,
                                key.name,
                                key.key
                            )));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let found = secrets.get_opt(&key.name).await.map_err(|err| {
                        Setup::Wait(
                            anyhow!(err).context(format!("env {}: Secret {}", var.name, key.name)),
                        )
                    })?;
                    match found.and_then(|s| s.data.and_then(|mut d| d.remove(&key.key))) {
                        Some(value) => String::from_utf8_lossy(&value.0).into_owned(),
                        None if key.optional == Some(true) => continue,
                        None => {
                            return Err(Setup::Wait(anyhow!(
                                "env {}: Secret {} has no key {}",
                                var.name,
                                key.name,
                                key.key
                            )));
                        }
                    }
                } else {
                    return Err(Setup::Fail(anyhow!(
                        "env {}: a valueFrom the harness does not resolve: {from:?}",
                        var.name
                    )));
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The value of a downward API field path of `pod`.
pub fn field_value(pod: &Pod, path: &str, host_ip: Option<&str>) -> anyhow::Result<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let quoted_key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_owned)
    };
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => host_ip
            .context("status.hostIP is not known yet")?
            .to_owned(),
        "status.podIP" | "status.podIPs" => {
            bail!("{path}: the harness knows the address only once the container runs")
        }
        _ => {
            if let Some(key) = quoted_key("metadata.labels['") {
                pod.labels().get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = quoted_key("metadata.annotations['") {
                pod.annotations().get(&key).cloned().unwrap_or_default()
            } else {
                bail!("field path {path} is not resolved by the harness")
            }
        }
    })
}

/// Kubernetes' `$(VAR)` expansion: a reference to a variable defined before is replaced,
/// `$$` is a literal `$`, anything else stays as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(end) = tail.find(')')
        {
            let name = &tail[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn references_expand_as_kubernetes_expands_them() {
        let env = vec![
            ("POD_NAME".to_owned(), "spool-receiver-2".to_owned()),
            ("DIR".to_owned(), "/data".to_owned()),
        ];
        assert_eq!(
            expand("$(DIR)/$(POD_NAME)/x", &env),
            "/data/spool-receiver-2/x"
        );
        assert_eq!(
            expand("$(UNKNOWN) $$(DIR) $ $x", &env),
            "$(UNKNOWN) $(DIR) $ $x"
        );
        assert_eq!(expand("$(unterminated", &env), "$(unterminated");
    }

    #[test]
    fn fields_of_the_pod_resolve() -> anyhow::Result<()> {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("receiver-1".to_owned()),
                namespace: Some("ns".to_owned()),
                labels: Some(BTreeMap::from([("app".to_owned(), "r".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert_eq!(field_value(&pod, "metadata.name", None)?, "receiver-1");
        assert_eq!(field_value(&pod, "metadata.namespace", None)?, "ns");
        assert_eq!(field_value(&pod, "metadata.labels['app']", None)?, "r");
        assert_eq!(
            field_value(&pod, "status.hostIP", Some("10.88.0.1"))?,
            "10.88.0.1"
        );
        assert!(field_value(&pod, "status.podIP", None).is_err());
        assert!(field_value(&pod, "spec.nope", None).is_err());
        Ok(())
    }
}
