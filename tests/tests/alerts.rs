//! The alert rules (charts/metahook/files/prometheus-rules.yaml): promtool accepts them and
//! their unit tests pass, every alert is labelled, annotated and linked to its runbook
//! section, every metric they use exists, and, with Debian's real `prometheus` scraping a
//! live receiver, the signature and sink alerts fire on real failures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use metahook_tests::promql;
use metahook_tests::testkit::{self, PATH, TestReceiver};
use metahook_tests::tools::{find, repo_root, run};
use serde_json::Value;

const RULES: &str = "charts/metahook/files/prometheus-rules.yaml";

fn rules() -> Result<Value> {
    let path = repo_root().join(RULES);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every rule of every group.
fn each_rule(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn promtool_accepts_the_rules() -> Result<()> {
    run("promtool", &["check", "rules", RULES])?;
    Ok(())
}

#[test]
fn promtool_unit_tests_pass() -> Result<()> {
    let dir = repo_root().join("tests/alerts");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| path.display().to_string())
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no unit tests in {}", dir.display());
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    run("promtool", &args)?;

    // Every alert has a unit test (its name appears as an alertname under test).
    let tested: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {f}")))
        .collect::<Result<_>>()?;
    for rule in each_rule(&rules()?) {
        if let Some(alert) = rule["alert"].as_str() {
            ensure!(
                tested.contains(&format!("alertname: {alert}\n")),
                "alert {alert} has no promtool unit test in tests/alerts/"
            );
        }
    }
    Ok(())
}

/// GitHub's anchors of a Markdown file's headings: lowercase, punctuation other than `-`
/// and `_` dropped, spaces as `-`; a repeated heading gets `-1`, `-2`, ….
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let base: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

#[test]
fn every_alert_is_labelled_annotated_and_has_a_runbook() -> Result<()> {
    let operations = repo_root().join("docs/operations.md");
    let markdown = std::fs::read_to_string(&operations)
        .with_context(|| format!("reading {}", operations.display()))?;
    let anchors = anchors(&markdown);
    // The Cargo workspace's repository URL is the base of every runbook link.
    let base = format!(
        "{}/blob/main/docs/operations.md#",
        env!("CARGO_PKG_REPOSITORY")
    );
    let mut problems = Vec::new();
    let mut alerts = 0;
    for rule in each_rule(&rules()?) {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        match rule["labels"]["severity"].as_str() {
            Some("critical" | "warning" | "info") => {}
            other => problems.push(format!(
                "{alert}: severity {other:?} is not critical, warning or info"
            )),
        }
        for key in ["summary", "description"] {
            if rule["annotations"][key]
                .as_str()
                .is_none_or(|text| text.trim().is_empty())
            {
                problems.push(format!("{alert}: no {key} annotation"));
            }
        }
        match rule["annotations"]["runbook_url"]
            .as_str()
            .and_then(|url| url.strip_prefix(&base))
        {
            Some(anchor) if anchors.contains(anchor) => {}
            Some(anchor) => problems.push(format!(
                "{alert}: runbook anchor #{anchor} is no heading of docs/operations.md"
            )),
            None => problems.push(format!("{alert}: runbook_url does not start with {base}")),
        }
    }
    ensure!(alerts > 0, "no alerts in {RULES}");
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Metric names documented in a Markdown file (every backquoted `metahook_…` name).
fn documented_metrics(path: &Path) -> Result<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            let name: String = quoted
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.starts_with("metahook_").then_some(name)
        })
        .collect())
}

/// Metric names the operator exports, from its exposition once every series has a value.
fn operator_metrics() -> Result<BTreeSet<String>> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    let metrics = metahook_operator::metrics::Metrics::new().context("operator metrics")?;
    metrics.reconciled(Ok(()), Duration::from_millis(5));
    metrics.certificate_expires("acme", "wa", 1_900_000_000);
    metrics.drains(
        "acme",
        "wa",
        metahook_operator::metrics::DrainCounts::default(),
    );
    metrics.drain_finished("acme", "wa", "drained");
    metrics.record_conditions(
        "acme",
        "wa",
        &[Condition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            reason: "Ready".to_owned(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }],
    );
    Ok(promql::exposition_names(&metrics.render()))
}

#[test]
fn every_metric_the_rules_use_exists() -> Result<()> {
    let root = repo_root();
    let mut known = documented_metrics(&root.join("docs/metrics.md"))?;
    known.extend(operator_metrics()?);
    // Prometheus' own per-target series.
    known.insert("up".to_owned());
    let mut problems = Vec::new();
    for rule in each_rule(&rules()?) {
        let name = rule["alert"].as_str().unwrap_or("(a recording rule)");
        let expr = rule["expr"].as_str().unwrap_or("");
        for metric in promql::metric_names(expr) {
            if !known.contains(&metric) {
                problems.push(format!(
                    "{name} uses {metric}, which is neither in docs/metrics.md nor exported by the operator"
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// A `prometheus` server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `config` and waits until it is ready.
    async fn start(dir: &Path, config: &str) -> Result<Prometheus> {
        let binary = find("prometheus")?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).context("writing prometheus.yml")?;
        let addr = free_port()?;
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).context("creating prometheus.log")?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Prometheus { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = prometheus.get("/-/ready").await
                && reply.status == StatusCode::OK
            {
                return Ok(prometheus);
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after 20 s; its log:\n{}",
                    prometheus.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, path: &str) -> Result<testkit::Reply> {
        testkit::request(self.addr, Method::GET, path, &[], Bytes::new()).await
    }

    /// The alerts Prometheus reports as firing, by name.
    async fn firing(&self) -> Result<(BTreeSet<String>, Value)> {
        let reply = self.get("/api/v1/alerts").await?;
        let body: Value = serde_json::from_slice(&reply.body)
            .with_context(|| format!("/api/v1/alerts answered {}", reply.text()))?;
        let firing = body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["state"] == "firing")
            .filter_map(|alert| alert["labels"]["alertname"].as_str())
            .map(str::to_owned)
            .collect();
        Ok((firing, body))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A loopback address nothing listens on (bound, then released).
fn free_port() -> Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    listener.local_addr().context("local address")
}

/// A signed WhatsApp text message, distinct per `n` (an identical body would be a
/// redelivery, answered 200 without being stored again).
fn message(n: usize) -> Vec<u8> {
    format!(r#"{{"object":"whatsapp_business_account","entry":[{{"id":"100200300400500","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","messages":[{{"from":"15551234567","id":"wamid.alerts.{n}","timestamp":"1700000000","type":"text","text":{{"body":"alert {n}"}}}}]}}}}]}}]}}"#).into_bytes()
}

/// The rules as the live test loads them: every `for:` set to 0s. The test cannot wait the
/// 5 to 15 minutes of the real durations; what it checks is that the expressions, as
/// written, select the live receiver's series and fire on real failures. The durations are
/// covered by the promtool unit tests.
fn rules_without_for() -> Result<String> {
    let mut rules = rules()?;
    for group in rules["groups"].as_array_mut().into_iter().flatten() {
        for rule in group["rules"].as_array_mut().into_iter().flatten() {
            if rule.get("for").is_some() {
                rule["for"] = Value::from("0s");
            }
        }
    }
    // JSON is YAML: Prometheus reads it as a rules file.
    serde_json::to_string_pretty(&rules).context("serializing the rules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_alerts_on_a_live_receiver() -> Result<()> {
    let started = Instant::now();
    // An HTTP sink whose destination is down: every attempt fails, and after two attempts
    // the events become dead letters.
    let sink = testkit::failing_http_sink("crm")?;
    let mut receiver = TestReceiver::start_with(|config, _| {
        config.sinks.push(sink);
    })
    .await?;

    let dir = tempfile::tempdir().context("creating temp dir")?;
    std::fs::write(dir.path().join("rules.yaml"), rules_without_for()?)
        .context("writing rules.yaml")?;
    // The job is named like one of the operator's ServiceMonitor jobs (the Service, i.e. the
    // subscription): the rules must not depend on the job's name.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - rules.yaml\n\
         scrape_configs:\n  - job_name: acme-whatsapp\n    static_configs:\n      - targets: ['{}']\n",
        receiver.probes_addr()
    );
    let prometheus = Prometheus::start(dir.path(), &config).await?;

    // Drive failures for as long as it takes, so every rate stays above 0: a POST with a
    // wrong signature, and a signed message the sink cannot deliver.
    let wanted = [
        "MetahookSignatureFailures",
        "MetahookSinkFailing",
        "MetahookDeadLetters",
    ];
    let wrong = format!("sha256={}", "0".repeat(64));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        let body = message(n);
        let refused = receiver
            .post_with(PATH, &[("x-hub-signature-256", wrong.as_str())], &body)
            .await?;
        ensure!(
            refused.status == StatusCode::FORBIDDEN,
            "a wrong signature got {}",
            refused.status
        );
        ensure!(
            receiver.post(&body).await?.status == StatusCode::OK,
            "a signed message was refused"
        );
        n += 1;
        let (firing, body) = prometheus.firing().await?;
        if wanted.iter().all(|alert| firing.contains(*alert)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after 60 s, not all of {wanted:?} fire; Prometheus reports:\n{body:#}\nits log:\n{}",
            prometheus.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The healthy file sink delivers, so it must not be reported as failing.
    let (_, body) = prometheus.firing().await?;
    let failing_sinks: BTreeSet<&str> = body["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|alert| alert["labels"]["alertname"] == "MetahookSinkFailing")
        .filter_map(|alert| alert["labels"]["sink"].as_str())
        .collect();
    ensure!(
        failing_sinks == BTreeSet::from(["crm"]),
        "sinks reported failing: {failing_sinks:?}"
    );

    // Stop the receiver: its target goes down, and the down alert must find it although
    // nothing in the rules names this job.
    receiver.stop().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (firing, body) = prometheus.firing().await?;
        if firing.contains("MetahookReceiverDown") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "MetahookReceiverDown does not fire 20 s after the receiver stopped; Prometheus reports:\n{body:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "alerts fired after {n} rounds, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    drop(prometheus);
    Ok(())
}
