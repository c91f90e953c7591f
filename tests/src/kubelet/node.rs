//! The harness as a Node of the test cluster. Pods are bound to it (the scheduler's
//! Binding), which is what makes their deletion graceful: the API server deletes a pod
//! bound to no node at once, but gives a bound one a deletionTimestamp and waits for its
//! kubelet — here the harness — to stop the containers and remove it. So scale-downs,
//! rollouts and Job deletions wait for the containers as in a real cluster.
//!
//! The node stays healthy as a kubelet keeps it: its Lease in `kube-node-lease` is renewed
//! and its Ready condition re-posted every few seconds. Without that the node lifecycle
//! controller would mark it unreachable after 40 s, turn its pods unready and, later,
//! evict them.

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::status::time;

/// The namespace of node Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long the Lease is valid without renewal.
const LEASE_SECONDS: i32 = 40;
/// The version the node reports (the harness plays a 1.20 kubelet).
const KUBELET_VERSION: &str = "v1.20.2-metahook-e2e";

/// Creates the node `name` with address `address` (the bridge's gateway), Ready, with its
/// Lease.
pub async fn register(client: &Client, name: &str, address: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "metahook.io/e2e-kubelet": "true",
            },
        },
    }))
    .context("the Node object")?;
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let now = time(Timestamp::now());
    let status = json!({"status": {
        "conditions": [ready_condition(&now, &now)],
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": name},
        ],
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "nodeInfo": {
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
            "containerRuntimeVersion": "podman://4", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH, "osImage": "metahook e2e",
            "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("reporting Node {name} Ready"))?;
    // Owned by the node, as the kubelet makes it: deleting the node deletes the Lease.
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": created.uid().unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(Timestamp::now()),
        },
    }))
    .context("the node's Lease")?;
    Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .create(&PostParams::default(), &lease)
        .await
        .with_context(|| format!("creating the Lease of Node {name}"))?;
    Ok(())
}

fn ready_condition(heartbeat: &str, since: &str) -> serde_json::Value {
    json!({
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "the metahook e2e kubelet harness is running pods",
        "lastHeartbeatTime": heartbeat, "lastTransitionTime": since,
    })
}

/// A Lease's renewTime: RFC 3339 with microseconds.
fn micro_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Renews the node's Lease and re-posts its Ready condition.
pub async fn heartbeat(client: &Client, name: &str, since: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let renew = json!({"spec": {"renewTime": micro_time(Timestamp::now())}});
    leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .with_context(|| format!("renewing the Lease of Node {name}"))?;
    let now = time(Timestamp::now());
    let status = json!({"status": {"conditions": [ready_condition(&now, since)]}});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("posting the status of Node {name}"))?;
    Ok(())
}

/// Binds pod `name` (uid `uid`) to node `node`, as the scheduler does; `false` when the
/// pod is gone or already bound (to this node or another).
pub async fn bind(pods: &Api<Pod>, name: &str, uid: &str, node: &str) -> Result<bool> {
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    match pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(err) => Err(err).with_context(|| format!("binding pod {name} to Node {node}")),
    }
}

/// Deletes the node (its Lease goes with it). Pods still bound to it are removed by the
/// pod garbage collector.
pub async fn deregister(client: &Client, name: &str) -> Result<()> {
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err).with_context(|| format!("deleting Node {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_times_carry_microseconds() {
        let at: Timestamp = "2026-01-02T03:04:05.123456789Z"
            .parse()
            .expect("a timestamp");
        assert_eq!(micro_time(at), "2026-01-02T03:04:05.123456Z");
    }
}
