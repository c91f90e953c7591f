//! The operator enforces its own spec, wherever the API server does not: a cluster older
//! than CEL (Kubernetes < 1.25 drops `x-kubernetes-validations`), a CRD applied without
//! its rules, a rule the server failed to evaluate.
//!
//! Every rule exists once, in [`crate::crd`]: it becomes the CEL rule of the generated CRD,
//! and here the operator evaluates the very same rules, with kube's CEL validator against
//! the schema the CRD is generated from, before it renders anything. A violation makes the
//! pass a refusal (`Ready` False, reason `InvalidSpec`, the field and the rule's message)
//! that changes nothing. The one transition rule (`oldSelf`) is checked against what
//! `status.registration` records as registered, the operator's own memory of the old spec.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, ErrorKind, ValidationError, Validator, compile_schema};
use serde_json::Value;

use crate::crd::{REGISTERED_APP_IS_FIXED, WebhookSubscription};

/// The `Ready` reason of a spec that breaks a rule.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// The CRD's openAPIV3Schema as JSON, made once.
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        WebhookSubscription::crd()
            .spec
            .versions
            .first()
            .and_then(|version| version.schema.as_ref())
            .and_then(|schema| schema.open_api_v3_schema.as_ref())
            .and_then(|schema| serde_json::to_value(schema).ok())
            .unwrap_or(Value::Null)
    })
}

thread_local! {
    /// The schema's rules compiled once per thread, with a validator (compiling them on
    /// every pass cost more CPU than the rest of a reconciliation).
    static COMPILED: (Validator, CompiledSchema) = (Validator::new(), compile_schema(schema()));
}

/// Every rule `sub` breaks, each as `field: message` (empty: valid). A rule that cannot be
/// evaluated counts as broken: a security rule must fail closed.
pub fn violations(sub: &WebhookSubscription) -> Vec<String> {
    let mut found = Vec::new();
    let schema = schema();
    if schema.is_null() {
        found.push("the operator cannot read its own CRD schema".to_owned());
        return found;
    }
    match serde_json::to_value(sub) {
        Ok(object) => {
            let result = COMPILED
                .with(|(validator, compiled)| validator.validate_compiled(compiled, &object, None));
            if let Err(errors) = result {
                found.extend(errors.into_vec().iter().map(describe));
            }
        }
        Err(error) => found.push(format!("the subscription cannot be read as JSON: {error}")),
    }
    let registered = sub.status.as_ref().and_then(|s| s.registration.as_ref());
    if let (Some(wanted), Some(registered)) = (&sub.spec.registration, registered)
        && (wanted.app_id != registered.app_id || sub.spec.object != registered.object)
    {
        found.push(format!(
            "spec.registration.appId: {REGISTERED_APP_IS_FIXED} (registered: app {} for {})",
            registered.app_id, registered.object
        ));
    }
    found
}

fn describe(error: &ValidationError) -> String {
    let place = if error.field_path.is_empty() {
        String::new()
    } else {
        format!("{}: ", error.field_path)
    };
    match error.kind {
        ErrorKind::ValidationFailure => format!("{place}{}", error.message),
        _ => format!(
            "{place}the rule `{}` could not be evaluated ({:?}): {}",
            error.rule, error.kind, error.message
        ),
    }
}
