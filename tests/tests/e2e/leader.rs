//! Two operator replicas with leader election (the chart's default): only the Lease holder
//! reconciles and writes, and when it dies without releasing the Lease (SIGKILL, as a node
//! failure) the standby takes over once the Lease expires and reconciles what comes next.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use metahook_tests::cluster::Operator;

use metahook_tests::kubelet::Kubelet;

use super::pods::{the_pod, wait_available};
use super::*;

/// The operator's Lease duration and grace (operator/src/operator.rs: `with_duration(15)`,
/// `with_grace(5)`): a standby may take an unrenewed Lease after both.
const LEASE_SECONDS: u64 = 15 + 5;

const HOLDING: &str = "holding the leader Lease";
const WAITING: &str = "waiting for the leader Lease";

fn replica(cluster: &Cluster, namespace: &str, lease: &str, identity: &str) -> Result<Operator> {
    Operator::start_with(
        cluster.kubeconfig(),
        &[
            format!("--namespace={namespace}"),
            format!("--lease-namespace={namespace}"),
            format!("--lease-name={lease}"),
            format!("--identity={identity}"),
        ],
    )
}

async fn lease_holder(client: &Client, namespace: &str, lease: &str) -> Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(lease)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Waits until `operator` logs that it holds the Lease.
async fn leads(operator: &Operator, within: Duration) -> Result<()> {
    wait_for(
        "the replica to take the leader Lease",
        within,
        Some(operator),
        || async { Ok((!operator.lines_with(&[HOLDING]).is_empty()).then_some(())) },
    )
    .await
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_killed_leader_hands_over_within_the_lease() -> Result<()>
{
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let prepared = prepare(&client, "e2e-leader", Some("acme-whatsapp"), |sub| {
        as_deployment(sub);
        sub.spec.receiver.replicas = 1;
    })
    .await?;
    let namespace = prepared.namespaces[0].clone();
    let lease = "metahook-operator-e2e";

    // The first replica takes the Lease; the second, started after it, waits.
    let first = replica(cluster, &namespace, lease, "e2e-replica-a")?;
    leads(&first, WAIT).await?;
    let second = replica(cluster, &namespace, lease, "e2e-replica-b")?;
    wait_for(
        "the second replica to wait for the Lease",
        WAIT,
        Some(&second),
        || async { Ok((!second.lines_with(&[WAITING]).is_empty()).then_some(())) },
    )
    .await?;

    let subscriptions = create_subscriptions(&client, &prepared.subscriptions).await?;
    let world = World {
        client: client.clone(),
        operator: first,
        subscriptions,
    };
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    reconciled(&world, &sub, 1).await?;
    // Run the pod (the kubelet harness, as in pods.rs) so the leader publishes its Ready
    // Event.
    let kubelet = Kubelet::start(&client, &namespace, None).await?;
    let pod = the_pod(&world, &namespace, &name).await?;
    kubelet.wait_ready(&pod.name_any(), WAIT).await?;
    wait_available(&world, &namespace, &name).await?;
    ensure!(
        lease_holder(&client, &namespace, lease).await?.as_deref() == Some("e2e-replica-a"),
        "the Lease is not held by the first replica"
    );
    let ready_events: Vec<Option<String>> = wait_for(
        "the leader's Ready Event",
        WAIT,
        Some(&world.operator),
        || {
            let client = client.clone();
            let sub = sub.clone();
            async move {
                let events = events_of(&client, &sub).await?;
                let ready: Vec<Option<String>> = events
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("Ready"))
                    .map(|e| e.reporting_instance.clone())
                    .collect();
                Ok((!ready.is_empty()).then_some(ready))
            }
        },
    )
    .await?;
    ensure!(
        ready_events
            .iter()
            .all(|i| i.as_deref() == Some("e2e-replica-a")),
        "Ready Events reported by {ready_events:?}, not only the leader"
    );
    ensure!(
        second.lines_with(&[HOLDING]).is_empty() && second.lines_with(&["reconciled"]).is_empty(),
        "the standby reconciled while the leader held the Lease:\n{}",
        second.log()
    );

    // SIGKILL: the Lease is not released, so the standby waits for it to expire.
    let World {
        client,
        operator: mut first_replica,
        ..
    } = world;
    first_replica.kill()?;
    let killed = Instant::now();
    leads(&second, Duration::from_secs(LEASE_SECONDS + 10)).await?;
    let handover = killed.elapsed();
    println!(
        "the standby took the Lease {:.1}s after the leader was killed",
        handover.as_secs_f64()
    );
    ensure!(
        lease_holder(&client, &namespace, lease).await?.as_deref() == Some("e2e-replica-b"),
        "the Lease did not pass to the second replica"
    );
    drop(first_replica);

    // The new leader reconciles a new subscription.
    let mut next = prepared.subscriptions[0].clone();
    next.metadata.name = Some(format!("{name}-after-handover"));
    let created = create_subscriptions(&client, &[next]).await?;
    let world = World {
        client,
        operator: second,
        subscriptions: created,
    };
    let current = reconciled(&world, &world.subscriptions[0], 1).await?;
    ensure!(
        condition(&current, "SecretsResolved").is_some_and(|c| c.status == "True"),
        "the new leader's pass: {:?}",
        current.status
    );
    // The pass logs its line after the status it wrote: wait for the line.
    let logged = wait_for(
        "the new leader's log line of a pass over the new subscription",
        WAIT,
        None,
        || async { Ok((passes(&world.operator, &world.subscriptions[0]) >= 1).then_some(())) },
    )
    .await;
    ensure!(
        logged.is_ok(),
        "the new leader's log shows no pass over the new subscription:\n{}",
        world.operator.log()
    );
    assert_clean_log(&world.operator)?;
    kubelet.shutdown().await?;
    Ok(())
}
