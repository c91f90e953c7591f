//! The receiver's pods: a Deployment, or a StatefulSet with a PersistentVolumeClaim per
//! replica when the spool is persistent.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretProjection, SecurityContext, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_DIR, CONFIG_HASH_ANNOTATION, CONFIG_KEY, DATA_DIR, Inputs, METRICS_PORT, SECRETS_DIR,
};
use crate::crd::{DEFAULT_SPOOL_SIZE, DeliveryModeSpec};
use crate::error::Error;

/// The user and group the receiver runs as (non-root).
pub const RUN_AS: i64 = 65532;
/// The pods' terminationGracePeriodSeconds when `spec.receiver.terminationGracePeriodSeconds`
/// is absent: 5 s out of the endpoints, about 50 s to deliver the backlog, 5 s margin.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 60;
/// The pod label telling where its spool lives (`persistent`, `ephemeral`, `direct`): the
/// Service selects the current workload's pods by it once they are ready, so the pods of a
/// workload being replaced stop taking traffic while they deliver what they hold.
pub const SPOOL_LABEL: &str = "metahook.io/spool";

/// The receiver's workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// emptyDir spool (or none, in direct mode).
    Deployment(Box<Deployment>),
    /// Persistent spool, one PersistentVolumeClaim per replica.
    StatefulSet(Box<StatefulSet>),
}

/// Where a receiver keeps the events it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolVolume {
    /// A PersistentVolumeClaim per replica (the default in spool mode).
    Claim {
        /// Its size.
        size: String,
        /// Its StorageClass; the cluster's default when absent.
        storage_class_name: Option<String>,
    },
    /// An emptyDir: `spec.delivery.spool.ephemeral`, acknowledged events are lost with the pod.
    EmptyDir,
    /// No spool: direct delivery answers Meta once the sinks took the events.
    Direct,
}

impl SpoolVolume {
    /// The spool the spec asks for.
    pub fn of(spec: &crate::crd::WebhookSubscriptionSpec) -> SpoolVolume {
        if spec.delivery.mode == DeliveryModeSpec::Direct {
            return SpoolVolume::Direct;
        }
        match &spec.delivery.spool {
            Some(spool) if spool.ephemeral => SpoolVolume::EmptyDir,
            spool => SpoolVolume::Claim {
                size: spool
                    .as_ref()
                    .and_then(|s| s.size.clone())
                    .unwrap_or_else(|| DEFAULT_SPOOL_SIZE.to_owned()),
                storage_class_name: spool.as_ref().and_then(|s| s.storage_class_name.clone()),
            },
        }
    }

    /// The value of [`SPOOL_LABEL`] and of `status.spool.mode`.
    pub fn mode(&self) -> &'static str {
        match self {
            SpoolVolume::Claim { .. } => "persistent",
            SpoolVolume::EmptyDir => "ephemeral",
            SpoolVolume::Direct => "direct",
        }
    }
}

/// The pods' terminationGracePeriodSeconds.
pub fn termination_grace_seconds(spec: &crate::crd::WebhookSubscriptionSpec) -> i64 {
    spec.receiver
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS)
}

/// The labels of the receiver pods: the selector's, the common ones, and [`SPOOL_LABEL`].
pub fn pod_labels(inputs: &Inputs<'_>) -> BTreeMap<String, String> {
    let mut labels = inputs.labels();
    labels.insert(
        SPOOL_LABEL.to_owned(),
        SpoolVolume::of(&inputs.sub.spec).mode().to_owned(),
    );
    labels
}

/// The pod template: one `receiver` container, hardened, with its configuration, Secrets
/// and data volume, and a hash of its inputs so it rolls when they change.
pub fn pod_template(inputs: &Inputs<'_>, config_hash: &str) -> PodTemplateSpec {
    let persistent = matches!(SpoolVolume::of(&inputs.sub.spec), SpoolVolume::Claim { .. });
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: super::config_map_name(&inputs.name),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.to_owned(),
                    path: CONFIG_KEY.to_owned(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secrets_volume(inputs),
    ];
    if !persistent {
        volumes.push(Volume {
            name: "data".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    let scheme = if inputs.receiver_tls() {
        "HTTPS"
    } else {
        "HTTP"
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(inputs.webhook_port_name().to_owned()),
            scheme: Some(scheme.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let container = Container {
        name: "receiver".to_owned(),
        image: Some(inputs.image.clone()),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(inputs.webhook_port_name().to_owned()),
                container_port: inputs.webhook_port(),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: Some(
            inputs
                .sub
                .spec
                .receiver
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "secrets".to_owned(),
                mount_path: SECRETS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "data".to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(inputs)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                config_hash.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(termination_grace_seconds(&inputs.sub.spec)),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

/// One projected volume holding exactly the Secret keys the receiver reads, each at
/// `<secret>/<key>`: nothing else of those Secrets reaches the pod.
fn secrets_volume(inputs: &Inputs<'_>) -> Volume {
    let sources = inputs
        .mounted_secret_keys()
        .into_iter()
        .map(|(secret, keys)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.clone(),
                items: Some(
                    keys.into_iter()
                        .map(|key| KeyToPath {
                            path: format!("{secret}/{key}"),
                            key,
                            mode: None,
                        })
                        .collect(),
                ),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Volume {
        name: "secrets".to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            // Readable by the receiver's group only.
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    }
}

/// Requests and limits when the spec gives none: enough for a receiver at a few thousand
/// requests per second (docs/benchmarks.md measured about 36 MiB peak RSS).
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("256Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The claim template's name: claims are `data-NAME-<ordinal>`.
pub const CLAIM_TEMPLATE: &str = "data";

/// The name of replica `ordinal`'s claim of StatefulSet `name`.
pub fn claim_name(name: &str, ordinal: u32) -> String {
    format!("{CLAIM_TEMPLATE}-{name}-{ordinal}")
}

/// The ordinal of a claim of StatefulSet `name`, when `claim` is one of its claims' names.
pub fn claim_ordinal(name: &str, claim: &str) -> Option<u32> {
    let digits = claim.strip_prefix(&format!("{CLAIM_TEMPLATE}-{name}-"))?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0') && digits.len() > 1
    {
        return None;
    }
    digits.parse().ok()
}

/// The workload for the subscription (not called in sidecar mode). `retention_policy`:
/// the server knows StatefulSet's `persistentVolumeClaimRetentionPolicy` (1.27+), which is
/// then set to retain the claims explicitly, whatever the cluster's defaults.
pub fn workload(
    inputs: &Inputs<'_>,
    config_hash: &str,
    retention_policy: bool,
) -> Result<Workload, Error> {
    let metadata = inputs.meta(inputs.name.clone())?;
    let selector = LabelSelector {
        match_labels: Some(inputs.selector_labels()),
        match_expressions: None,
    };
    // Left out with autoscaling: the autoscaler's field then.
    let replicas =
        super::autoscaling::replicas_owned(inputs).then_some(inputs.sub.spec.receiver.replicas);
    let template = pod_template(inputs, config_hash);
    Ok(match SpoolVolume::of(&inputs.sub.spec) {
        SpoolVolume::EmptyDir | SpoolVolume::Direct => Workload::Deployment(Box::new(Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas,
                selector,
                template,
                // Never below the wanted replicas while rolling: a pod drains its spool on
                // SIGTERM before it exits.
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_owned()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::Int(1)),
                    }),
                }),
                revision_history_limit: Some(5),
                ..DeploymentSpec::default()
            }),
            status: None,
        })),
        SpoolVolume::Claim {
            size,
            storage_class_name,
        } => {
            let mut requests = BTreeMap::new();
            requests.insert("storage".to_owned(), Quantity(size));
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(CLAIM_TEMPLATE.to_owned()),
                    labels: Some(inputs.labels()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name,
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(requests),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            };
            Workload::StatefulSet(Box::new(StatefulSet {
                metadata,
                spec: Some(StatefulSetSpec {
                    replicas,
                    selector,
                    service_name: Some(inputs.name.clone()),
                    template,
                    volume_claim_templates: Some(vec![claim]),
                    // Receivers do not need each other: start and stop them all at once.
                    pod_management_policy: Some("Parallel".to_owned()),
                    revision_history_limit: Some(5),
                    // Claims outlive their pods: a removed replica's claim is drained by a
                    // Job of the operator and deleted only once it holds nothing.
                    persistent_volume_claim_retention_policy: retention_policy.then(|| {
                        StatefulSetPersistentVolumeClaimRetentionPolicy {
                            when_deleted: Some("Retain".to_owned()),
                            when_scaled: Some("Retain".to_owned()),
                        }
                    }),
                    ..StatefulSetSpec::default()
                }),
                status: None,
            }))
        }
    })
}
