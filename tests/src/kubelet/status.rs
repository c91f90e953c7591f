//! What the harness reports in a Pod's status, as the kubelet computes it: the phase from
//! the container's state and the pod's restart policy, the conditions, the container
//! status with its current and last state, and the termination message. Pure functions of
//! what the worker observed, so the rules are unit-tested without a cluster.

use k8s_openapi::jiff::{RoundMode, Timestamp, TimestampRound, Unit};
use serde_json::{Value, json};

/// The kubelet reads at most this much of a container's termination message file.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// With `FallbackToLogsOnError`, the message is at most this many last log lines...
const FALLBACK_LOG_LINES: usize = 80;
/// ... and at most this many bytes of them (the kubelet's limits).
const FALLBACK_LOG_BYTES: usize = 2048;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// The process's exit code (128 + signal when killed).
    pub exit_code: i32,
    /// `Completed` (0), `OOMKilled`, or `Error`.
    pub reason: String,
    /// The termination message, when there is one.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// `podman://<id>`.
    pub container_id: String,
}

impl Termination {
    /// The reason the kubelet gives an exit: `Completed` for 0, `OOMKilled` when the memory
    /// limit killed it, `Error` otherwise.
    pub fn reason_for(exit_code: i32, oom_killed: bool) -> &'static str {
        if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }

    fn to_json(&self) -> Value {
        let mut terminated = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "containerID": self.container_id,
        });
        if let Some(message) = &self.message {
            terminated["message"] = json!(message);
        }
        if let Some(at) = self.started_at {
            terminated["startedAt"] = json!(time(at));
        }
        if let Some(at) = self.finished_at {
            terminated["finishedAt"] = json!(time(at));
        }
        json!({ "terminated": terminated })
    }
}

/// The container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: `ContainerCreating`, `CrashLoopBackOff`, `CreateContainerConfigError`...
    Waiting {
        /// The kubelet's reason word.
        reason: String,
        /// What went wrong, when something did.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the process started.
        started_at: Timestamp,
    },
    /// Ended and not restarted (restart policy Never, or OnFailure after a success).
    Terminated(Termination),
}

impl State {
    /// `Waiting` with `reason` and no message.
    pub fn waiting(reason: &str) -> State {
        State::Waiting {
            reason: reason.to_owned(),
            message: None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut waiting = json!({ "reason": reason });
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({ "waiting": waiting })
            }
            State::Running { started_at } => {
                json!({ "running": { "startedAt": time(*started_at) } })
            }
            State::Terminated(termination) => termination.to_json(),
        }
    }
}

/// Everything the status of a one-container pod is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The pod's `restartPolicy` (`Always` when absent).
    pub restart_policy: String,
    /// The container's name and image.
    pub container: String,
    /// The container's image.
    pub image: String,
    /// The image's id, once the container was created.
    pub image_id: String,
    /// `podman://<id>`, once created.
    pub container_id: Option<String>,
    /// The current state.
    pub state: State,
    /// How the previous run ended (after a restart).
    pub last_state: Option<Termination>,
    /// The readiness probe passes (or there is none and the container runs).
    pub ready: bool,
    /// The startup probe passed (or there is none and the container runs).
    pub started: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// The address of the node (the bridge's gateway, where containers reach the host).
    pub host_ip: Option<String>,
    /// The container's address on the bridge.
    pub pod_ip: Option<String>,
    /// When the harness accepted the pod.
    pub start_time: Timestamp,
    /// When `ready` last changed (the Ready and ContainersReady conditions' transition).
    pub ready_since: Timestamp,
}

/// The pod phase the kubelet derives from its (one) container: Pending until it first
/// runs; Running while it runs or restarts; Succeeded or Failed once it ended for good.
pub fn phase(report: &Report) -> &'static str {
    match &report.state {
        State::Terminated(termination) if termination.exit_code == 0 => "Succeeded",
        State::Terminated(_) => "Failed",
        State::Running { .. } => "Running",
        // Between restarts (CrashLoopBackOff) the pod keeps running.
        State::Waiting { .. } if report.last_state.is_some() => "Running",
        State::Waiting { .. } => "Pending",
    }
}

/// Whether the container runs again after it exited with `exit_code`.
pub fn restarts(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The `status` of the pod (the body of a merge patch of the status subresource).
pub fn status(report: &Report) -> Value {
    let phase = phase(report);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let ready_condition = |type_: &str| {
        let mut condition = json!({
            "type": type_,
            "status": if report.ready { "True" } else { "False" },
            "lastTransitionTime": time(report.ready_since),
            "lastProbeTime": null,
        });
        if !report.ready {
            let (reason, message) = if terminal {
                ("PodCompleted", String::new())
            } else {
                (
                    "ContainersNotReady",
                    format!("containers with unready status: [{}]", report.container),
                )
            };
            condition["reason"] = json!(reason);
            if !message.is_empty() {
                condition["message"] = json!(message);
            }
        }
        condition
    };
    let since_start = |type_: &str| {
        json!({
            "type": type_, "status": "True", "lastProbeTime": null,
            "lastTransitionTime": time(report.start_time),
        })
    };
    let mut container = json!({
        "name": report.container,
        "image": report.image,
        "imageID": report.image_id,
        "ready": report.ready,
        "started": report.started,
        "restartCount": report.restart_count,
        "state": report.state.to_json(),
        "lastState": report.last_state.as_ref().map_or_else(|| json!({}), Termination::to_json),
    });
    if let Some(id) = &report.container_id {
        container["containerID"] = json!(id);
    }
    let mut status = json!({
        "phase": phase,
        "startTime": time(report.start_time),
        "conditions": [
            since_start("Initialized"),
            ready_condition("Ready"),
            ready_condition("ContainersReady"),
            since_start("PodScheduled"),
        ],
        "containerStatuses": [container],
    });
    if let Some(ip) = &report.host_ip {
        status["hostIP"] = json!(ip);
    }
    if let Some(ip) = &report.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    status
}

/// The termination message of an exited container, as the kubelet takes it: the file at
/// `terminationMessagePath` (at most 4 KiB); with policy `FallbackToLogsOnError` and an
/// empty file after a failure, the last 80 lines (at most 2 KiB) of its logs instead.
/// `None` when there is nothing to say.
pub fn termination_message(
    policy: Option<&str>,
    file: &[u8],
    exit_code: i32,
    logs: impl FnOnce() -> String,
) -> Option<String> {
    let file = &file[..file.len().min(MAX_MESSAGE_BYTES)];
    let message = String::from_utf8_lossy(file).into_owned();
    if !message.is_empty() {
        return Some(message);
    }
    if policy != Some("FallbackToLogsOnError") || exit_code == 0 {
        return None;
    }
    let logs = logs();
    let lines: Vec<&str> = logs.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
    let mut start = tail.len().saturating_sub(FALLBACK_LOG_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    let tail = &tail[start..];
    (!tail.is_empty()).then(|| tail.to_owned())
}

/// A timestamp as the API writes one: RFC 3339, whole seconds (truncated).
pub fn time(at: Timestamp) -> String {
    let seconds = TimestampRound::new()
        .smallest(Unit::Second)
        .mode(RoundMode::Trunc);
    at.round(seconds).unwrap_or(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: State) -> Report {
        let at: Timestamp = "2026-01-02T03:04:05Z".parse().expect("a timestamp");
        Report {
            restart_policy: "Always".to_owned(),
            container: "receiver".to_owned(),
            image: "localhost/metahook-receiver:0.1.0".to_owned(),
            image_id: "sha256:abc".to_owned(),
            container_id: Some("podman://123".to_owned()),
            state,
            last_state: None,
            ready: false,
            started: false,
            restart_count: 0,
            host_ip: Some("10.88.0.1".to_owned()),
            pod_ip: None,
            start_time: at,
            ready_since: at,
        }
    }

    fn exited(code: i32) -> Termination {
        Termination {
            exit_code: code,
            reason: Termination::reason_for(code, false).to_owned(),
            message: Some("done".to_owned()),
            started_at: None,
            finished_at: Some("2026-01-02T03:05:00.6Z".parse().expect("a timestamp")),
            container_id: "podman://123".to_owned(),
        }
    }

    #[test]
    fn the_phase_follows_the_container() {
        assert_eq!(
            phase(&report(State::waiting("ContainerCreating"))),
            "Pending"
        );
        let running = State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(phase(&report(running)), "Running");
        assert_eq!(phase(&report(State::Terminated(exited(0)))), "Succeeded");
        assert_eq!(phase(&report(State::Terminated(exited(3)))), "Failed");
        let mut restarting = report(State::waiting("CrashLoopBackOff"));
        restarting.last_state = Some(exited(1));
        assert_eq!(phase(&restarting), "Running");
    }

    #[test]
    fn restart_policies_decide_what_an_exit_means() {
        assert!(restarts("Always", 0));
        assert!(restarts("Always", 1));
        assert!(!restarts("OnFailure", 0));
        assert!(restarts("OnFailure", 2));
        assert!(!restarts("Never", 0));
        assert!(!restarts("Never", 2));
        assert_eq!(Termination::reason_for(0, false), "Completed");
        assert_eq!(Termination::reason_for(137, true), "OOMKilled");
        assert_eq!(Termination::reason_for(1, false), "Error");
    }

    #[test]
    fn a_ready_running_pod_reports_ip_conditions_and_its_container() {
        let mut running = report(State::Running {
            started_at: "2026-01-02T03:04:06.7Z".parse().expect("a timestamp"),
        });
        running.ready = true;
        running.started = true;
        running.pod_ip = Some("10.88.0.7".to_owned());
        let status = status(&running);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.88.0.7");
        assert_eq!(status["podIPs"], json!([{"ip": "10.88.0.7"}]));
        assert_eq!(status["hostIP"], "10.88.0.1");
        assert_eq!(status["startTime"], "2026-01-02T03:04:05Z");
        let conditions = status["conditions"].as_array().expect("conditions");
        let of = |t: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == t)
                .unwrap_or_else(|| panic!("no {t} condition"))
                .clone()
        };
        for type_ in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
            assert_eq!(of(type_)["status"], "True", "{type_}");
        }
        let container = &status["containerStatuses"][0];
        assert_eq!(container["name"], "receiver");
        assert_eq!(container["ready"], true);
        assert_eq!(container["started"], true);
        assert_eq!(container["containerID"], "podman://123");
        assert_eq!(
            container["state"],
            json!({"running": {"startedAt": "2026-01-02T03:04:06Z"}})
        );
        assert_eq!(container["lastState"], json!({}));
    }

    #[test]
    fn a_failed_job_pod_reports_its_exit_and_message() {
        let status = status(&report(State::Terminated(exited(2))));
        assert_eq!(status["phase"], "Failed");
        let ready = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("Ready")
            .clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "PodCompleted");
        assert_eq!(
            status["containerStatuses"][0]["state"],
            json!({"terminated": {
                "exitCode": 2, "reason": "Error", "message": "done",
                "containerID": "podman://123", "finishedAt": "2026-01-02T03:05:00Z",
            }})
        );
        assert!(status.get("podIP").is_none());
    }

    #[test]
    fn a_restarted_container_shows_its_last_state_and_count() {
        let mut restarted = report(State::waiting("CrashLoopBackOff"));
        restarted.last_state = Some(exited(1));
        restarted.restart_count = 1;
        let status = status(&restarted);
        let container = &status["containerStatuses"][0];
        assert_eq!(container["restartCount"], 1);
        assert_eq!(container["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(
            container["state"],
            json!({"waiting": {"reason": "CrashLoopBackOff"}})
        );
        let ready = &status["conditions"][1];
        assert_eq!(
            (ready["type"].as_str(), ready["reason"].as_str()),
            (Some("Ready"), Some("ContainersNotReady"))
        );
    }

    #[test]
    fn the_message_is_the_file_else_the_log_tail_on_failure_when_asked() {
        let logs = || (1..=100).map(|n| format!("line {n}\n")).collect::<String>();
        assert_eq!(
            termination_message(None, b"drained 3 events", 0, logs).as_deref(),
            Some("drained 3 events")
        );
        let big = vec![b'x'; 5000];
        assert_eq!(
            termination_message(None, &big, 1, logs).map(|m| m.len()),
            Some(MAX_MESSAGE_BYTES)
        );
        assert_eq!(termination_message(Some("File"), b"", 1, logs), None);
        assert_eq!(
            termination_message(Some("FallbackToLogsOnError"), b"", 0, logs),
            None
        );
        let tail =
            termination_message(Some("FallbackToLogsOnError"), b"", 1, logs).expect("the log tail");
        assert!(
            tail.starts_with("line 21\n") && tail.ends_with("line 100"),
            "{tail}"
        );
        let long = || "é".repeat(3000);
        let tail =
            termination_message(Some("FallbackToLogsOnError"), b"", 1, long).expect("the log tail");
        assert!(tail.len() <= 2048 && tail.chars().all(|c| c == 'é'));
    }
}
