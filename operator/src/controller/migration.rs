//! Moving a subscription's receivers from a Deployment with an emptyDir spool (the default
//! before claims were) to a StatefulSet with a claim per replica, without deleting a pod
//! that holds events it acknowledged.
//!
//! The StatefulSet starts beside the Deployment and the Service selects both until it has
//! a ready pod; then the Service selects only the StatefulSet's pods (by
//! [`SPOOL_LABEL`]), and the Deployment's pods, taking no more traffic, go on delivering
//! what they hold. The operator reads each one's backlog from its /metrics (the receiver's
//! `metahook_spool_requests_waiting` and `metahook_spool_events`) and deletes the
//! Deployment only once every pod answered with nothing left, in a pass after the one
//! that moved the Service (so no request reaches them in between). A pod that cannot be
//! read, or that dead-lettered events, keeps the Deployment; the status says which and why.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Context;
use crate::error::Error;
use crate::resources::workload::SPOOL_LABEL;
use crate::resources::{METRICS_PORT, SUBSCRIPTION_LABEL};

/// How long one pod's /metrics may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the previous Deployment's pods hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Every pod answered: nothing undelivered, nothing dead-lettered. It may go.
    Empty,
    /// Something is held, or unknown: the message says what.
    Holding(String),
}

/// What a receiver's /metrics says it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Requests acknowledged and not yet normalized, plus events not yet delivered by
    /// every sink.
    pub undelivered: u64,
    /// Events its sinks dead-lettered since it started.
    pub dead_lettered: u64,
}

/// Reads the backlog from a receiver's Prometheus text exposition.
pub fn backlog_of(exposition: &str) -> Result<Backlog, String> {
    let mut backlog = Backlog::default();
    let mut seen = false;
    for line in exposition.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        let target = match metric {
            "metahook_spool_events" | "metahook_spool_requests_waiting" => {
                seen = true;
                &mut backlog.undelivered
            }
            "metahook_dead_letter_events_total" => &mut backlog.dead_lettered,
            _ => continue,
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{metric} has a value that is not a number: {value}"))?;
        // Gauges of counts: whole and non-negative.
        *target += value.max(0.0).round() as u64;
    }
    if !seen {
        return Err(
            "its /metrics has no metahook_spool_events (not a receiver in spool mode?)".to_owned(),
        );
    }
    Ok(backlog)
}

/// Did the live Service already select only the current workload's pods, with this
/// spool mode, before this pass?
pub fn service_moved(service: Option<&Service>, mode: &str) -> bool {
    service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.as_ref())
        .and_then(|selector| selector.get(SPOOL_LABEL))
        .is_some_and(|value| value == mode)
}

/// Reads the backlog of every pod of the subscription's Deployment (pods of a ReplicaSet).
pub(super) async fn previous_deployment(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Previous, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{SUBSCRIPTION_LABEL}={name}")))
        .await
        .map_err(|e| Error::kube(format!("list pods of {namespace}/{name}"), e))?
        .items;
    let of_deployment: Vec<&Pod> = listed
        .iter()
        .filter(|pod| {
            pod.owner_references()
                .iter()
                .any(|owner| owner.kind == "ReplicaSet" && owner.controller == Some(true))
        })
        .collect();
    let mut holding = Vec::new();
    let mut total = 0;
    for pod in &of_deployment {
        match scrape(ctx, pod).await {
            Ok(backlog) if backlog.undelivered == 0 && backlog.dead_lettered == 0 => {}
            Ok(backlog) if backlog.dead_lettered > 0 => holding.push(format!(
                "pod {} dead-lettered {} events (check `dlq list` in it; delete Deployment {namespace}/{name} yourself once they are dealt with)",
                pod.name_any(),
                backlog.dead_lettered
            )),
            Ok(backlog) => {
                total += backlog.undelivered;
                holding.push(format!(
                    "pod {} holds {} undelivered",
                    pod.name_any(),
                    backlog.undelivered
                ));
            }
            Err(why) => holding.push(format!("pod {}: {why}", pod.name_any())),
        }
    }
    if holding.is_empty() {
        return Ok(Previous::Empty);
    }
    Ok(Previous::Holding(format!(
        "Deployment {namespace}/{name} is kept until its pods have delivered what they acknowledged ({total} events): {}",
        holding.join("; ")
    )))
}

/// `http://IP:PORT` of a pod's `metrics` port (the receiver's `metrics_listen`, where its
/// /metrics and its admin endpoint are), reached by pod IP: the same way for the
/// migration's scrape and a WebhookReplay's admin calls (tests give pods 127.0.0.1 and
/// a local server's port).
pub(super) fn metrics_base(pod: &Pod) -> Result<String, String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or("no pod IP yet")?;
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map_or(METRICS_PORT, |p| p.container_port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Ok(format!("http://{host}:{port}"))
}

/// GETs a pod's /metrics on its `metrics` port.
async fn scrape(ctx: &Context, pod: &Pod) -> Result<Backlog, String> {
    let url = format!("{}/metrics", metrics_base(pod)?);
    let response = ctx
        .http
        .get(&url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    backlog_of(&text).map_err(|why| format!("{url}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_the_waiting_requests_and_the_undelivered_events() {
        let text = "# HELP metahook_spool_events x\n# TYPE metahook_spool_events gauge\n\
                    metahook_spool_events 7\nmetahook_spool_requests_waiting 2\n\
                    metahook_dead_letter_events_total{sink=\"db\"} 0\n\
                    metahook_sink_lag_events{sink=\"db\"} 7\n";
        assert_eq!(
            backlog_of(text),
            Ok(Backlog {
                undelivered: 9,
                dead_lettered: 0
            })
        );
    }

    #[test]
    fn dead_letters_of_every_sink_add_up() {
        let text = "metahook_spool_events 0\nmetahook_spool_requests_waiting 0\n\
                    metahook_dead_letter_events_total{sink=\"a\"} 2\n\
                    metahook_dead_letter_events_total{sink=\"b\"} 1\n";
        assert_eq!(backlog_of(text).map(|b| b.dead_lettered), Ok(3));
    }

    #[test]
    fn an_exposition_without_the_spool_gauges_is_not_read_as_empty() {
        let absent = backlog_of("metahook_build_info{version=\"1\"} 1\n");
        assert!(
            matches!(&absent, Err(e) if e.contains("metahook_spool_events")),
            "{absent:?}"
        );
        let garbled = backlog_of("metahook_spool_events NaNx\n");
        assert!(
            matches!(&garbled, Err(e) if e.contains("not a number")),
            "{garbled:?}"
        );
    }
}
