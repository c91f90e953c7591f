//! The Ingress for the public host, with ingress-nginx annotations for where TLS ends.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::Inputs;
use crate::crd::{IngressSpec as IngressSpecCrd, TlsModeSpec, TlsTerminationSpec};
use crate::error::Error;

const NGINX: &str = "nginx.ingress.kubernetes.io";

/// Every annotation key [`annotations`] may set, whatever the spec: the operator owns
/// them, so `spec.ingress.annotations` may not set one even where this subscription's TLS
/// topology leaves it unset (the policy refuses such a spec, and the builder puts its own
/// values over the spec's).
pub const OPERATOR_ANNOTATIONS: &[&str] = &[
    "nginx.ingress.kubernetes.io/backend-protocol",
    "nginx.ingress.kubernetes.io/ssl-passthrough",
    "nginx.ingress.kubernetes.io/ssl-redirect",
    "nginx.ingress.kubernetes.io/auth-tls-verify-client",
    "nginx.ingress.kubernetes.io/auth-tls-secret",
    "nginx.ingress.kubernetes.io/auth-tls-verify-depth",
    "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream",
];

/// The ingress-nginx annotations for the subscription's TLS topology.
///
/// - passthrough: the controller forwards TLS untouched (`ssl-passthrough`, which routes
///   by host only) and the receiver terminates it;
/// - ingress termination with tls.mode mutual: the controller checks Meta's client
///   certificate against the clientCARef Secret (`auth-tls-*`; ingress-nginx reads its
///   `ca.crt` key) and passes its verdict in `ssl-client-verify` / `ssl-client-subject-dn`,
///   which the receiver believes only from `trustedProxyCIDRs`;
/// - with tls.mode server or mutual, the controller speaks HTTPS to the receiver.
///
/// The spec's own annotations (checked against the operator's policy first) go under
/// these: none of them replaces one the operator sets.
pub fn annotations(inputs: &Inputs<'_>, ingress: &IngressSpecCrd) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = ingress
        .annotations
        .iter()
        .filter(|(key, _)| !OPERATOR_ANNOTATIONS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let tls = &inputs.sub.spec.tls;
    if tls.mode != TlsModeSpec::None {
        out.insert(format!("{NGINX}/backend-protocol"), "HTTPS".to_owned());
    }
    match ingress.tls_termination {
        TlsTerminationSpec::Passthrough => {
            out.insert(format!("{NGINX}/ssl-passthrough"), "true".to_owned());
        }
        TlsTerminationSpec::Ingress => {
            out.insert(format!("{NGINX}/ssl-redirect"), "true".to_owned());
            if tls.mode == TlsModeSpec::Mutual
                && let Some(ca) = &tls.client_ca_ref
            {
                out.insert(format!("{NGINX}/auth-tls-verify-client"), "on".to_owned());
                out.insert(
                    format!("{NGINX}/auth-tls-secret"),
                    format!("{}/{}", inputs.namespace, ca.name),
                );
                out.insert(format!("{NGINX}/auth-tls-verify-depth"), "2".to_owned());
                out.insert(
                    format!("{NGINX}/auth-tls-pass-certificate-to-upstream"),
                    "true".to_owned(),
                );
            }
        }
    }
    out
}

/// The Ingress, when the spec asks for one.
pub fn ingress(inputs: &Inputs<'_>) -> Result<Option<Ingress>, Error> {
    let Some(spec) = &inputs.sub.spec.ingress else {
        return Ok(None);
    };
    let mut metadata = inputs.meta(inputs.name.clone())?;
    metadata.annotations = Some(annotations(inputs, spec));
    let tls = match (spec.tls_termination, &spec.tls_secret_name) {
        (TlsTerminationSpec::Ingress, Some(secret)) => Some(vec![IngressTLS {
            hosts: Some(vec![spec.host.clone()]),
            secret_name: Some(secret.clone()),
        }]),
        _ => None,
    };
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls,
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(inputs.sub.spec.effective_path()),
                        path_type: "Exact".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: inputs.name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some(inputs.webhook_port_name().to_owned()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    }))
}
