//! The Grafana dashboards (charts/metahook/dashboards/*.json): every panel's and variable's
//! PromQL parses (promtool), every metric they use is exported by a live receiver or
//! operator, and the JSON typechecks against Grafana's own schema (npm `@grafana/schema`,
//! `tsc --strict`: the dashboard is a typed `Dashboard` literal, so unknown keys are errors).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use metahook_receiver::config::{META_CLIENT_NAME, TlsConfig, TlsMode};
use metahook_receiver::enrich::{EnrichmentConfig, LeadAdsConfig, PageTokenConfig};
use metahook_tests::bench::client::Transport;
use metahook_tests::pki::{self, Ca, Versions};
use metahook_tests::promql;
use metahook_tests::testkit::{self, PATH, TestReceiver};
use metahook_tests::tools::{repo_root, run, run_in, tools_dir};
use serde_json::Value;

const DIR: &str = "charts/metahook/dashboards";

/// Every dashboard, by file name.
fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = repo_root().join(DIR);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    ensure!(
        paths.len() >= 2,
        "expected the receiver and operator dashboards in {DIR}"
    );
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, json))
        })
        .collect()
}

/// Every panel, the panels of rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// One PromQL query of a dashboard, and where it is.
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
}

/// The queries of a dashboard: each panel target's `expr`, and the series selector of each
/// `label_values(selector, label)` variable.
fn queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push(Query {
                    place: format!(
                        "{file} panel {:?} ({})",
                        panel["title"].as_str().unwrap_or(""),
                        target["refId"].as_str().unwrap_or("")
                    ),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable["query"].as_str().unwrap_or("");
        if variable["type"] == "query"
            && let Some(inner) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
            && let Some((selector, _label)) = inner.rsplit_once(',')
        {
            queries.push(Query {
                place: format!(
                    "{file} variable {}",
                    variable["name"].as_str().unwrap_or("")
                ),
                expr: selector.trim().to_owned(),
            });
        }
    }
    queries
}

/// `expr` with Grafana's variables replaced by stand-ins Prometheus accepts: durations for
/// the interval variables, `.*` for template variables (which the dashboards only use
/// inside `=~"…"` matchers, so anything else fails to parse, as it should).
fn substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
            // ${var:format}
            name = name.split(':').next().unwrap_or("").to_owned();
        } else {
            while let Some(&c) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                name.push(c);
                chars.next();
            }
        }
        out.push_str(match name.as_str() {
            "__rate_interval" | "__interval" => "5m",
            "__range" => "1h",
            "__range_s" | "__interval_ms" => "3600",
            _ => ".*",
        });
    }
    out
}

#[test]
fn dashboards_are_well_formed() -> Result<()> {
    let mut problems = Vec::new();
    for (file, dashboard) in dashboards()? {
        if dashboard["uid"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{file}: no uid"));
        }
        if dashboard["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            problems.push(format!("{file}: schemaVersion below 39 (Grafana 10)"));
        }
        let variables = dashboard["templating"]["list"].as_array();
        let datasource = variables.into_iter().flatten().any(|v| {
            v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
        });
        if !datasource {
            problems.push(format!(
                "{file}: no `datasource` variable of type datasource for prometheus"
            ));
        }
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("");
            if !ids.insert(panel["id"].as_u64()) {
                problems.push(format!(
                    "{file}: panel {title:?} repeats id {}",
                    panel["id"]
                ));
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().map_or(0, Vec::len);
            if targets == 0 {
                problems.push(format!("{file}: panel {title:?} has no query"));
            }
            // Every query goes to the data source the user picks.
            let mut sources = vec![&panel["datasource"]];
            sources.extend(
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            if sources.iter().any(|s| s["uid"] != "${datasource}") {
                problems.push(format!(
                    "{file}: panel {title:?} does not query ${{datasource}}"
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn every_query_parses() -> Result<()> {
    let dir = tempfile::tempdir().context("creating temp dir")?;
    for (file, dashboard) in dashboards()? {
        // Each query as a recording rule, one group per query so promtool's error names it.
        let groups: Vec<Value> = queries(&file, &dashboard)
            .iter()
            .enumerate()
            .map(|(i, query)| {
                serde_json::json!({
                    "name": format!("{i}: {}", query.place),
                    "rules": [{"record": format!("dashboard_query_{i}"), "expr": substitute(&query.expr)}],
                })
            })
            .collect();
        ensure!(!groups.is_empty(), "{file} has no queries");
        let path = dir.path().join(format!("{file}.rules.yaml"));
        // JSON is YAML: promtool reads it as a rules file.
        let rules = serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))?;
        std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
        let path = path.display().to_string();
        run("promtool", &["check", "rules", &path])
            .with_context(|| format!("a query of {file} does not parse"))?;
    }
    Ok(())
}

const MESSAGE: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"100200300400500","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","messages":[{"from":"15551234567","id":"wamid.dashboards.1","timestamp":"1700000000","type":"text","text":{"body":"hello"}}]}}]}]}"#;
const UNKNOWN: &[u8] = br#"{"object":"brand_new_object","entry":[{"id":"1","time":1700000000,"changes":[{"field":"brand_new_field","value":{"a":1}}]}]}"#;

/// The metric names of a receiver serving HTTPS, with a failing sink, after a good request,
/// its redelivery, a bad signature and an unknown object, so the labelled series exist.
async fn receiver_metrics() -> Result<BTreeSet<String>> {
    let certs = tempfile::tempdir().context("creating temp dir")?;
    let ca = Ca::new("metahook dashboards test CA")?;
    let (cert_file, key_file) = ca.server("127.0.0.1")?.write(certs.path(), "serving")?;
    let sink = testkit::failing_http_sink("crm")?;
    let mut receiver = TestReceiver::start_with(move |config, _| {
        config.tls = Some(TlsConfig {
            cert_file,
            key_file,
            mode: TlsMode::Server,
            client_ca_file: None,
            allowed_client_names: vec![META_CLIENT_NAME.to_owned()],
            reload_interval: Duration::from_secs(10),
        });
        config.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        config.sinks.push(sink);
        // Exports metahook_enrichment_total (no leadgen event is sent: no Graph call).
        config.enrichment = Some(EnrichmentConfig {
            lead_ads: Some(LeadAdsConfig::new(vec![PageTokenConfig {
                page_id: "1".into(),
                token_file: None,
                token_env: Some("METAHOOK_DASHBOARD_TEST_PAGE_TOKEN".into()),
                appsecret_proof: true,
            }])),
        });
    })
    .await?;
    let https = Transport::Tls(pki::client_config(&[ca.der()], None, Versions::Both)?);
    for body in [MESSAGE, MESSAGE, UNKNOWN] {
        let reply = receiver.post_over(&https, body).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "signed POST got {}",
            reply.status
        );
    }
    let wrong = format!("sha256={}", "0".repeat(64));
    let reply = testkit::request_over(
        receiver.addr,
        &https,
        Method::POST,
        PATH,
        &[("x-hub-signature-256", wrong.as_str())],
        Bytes::from_static(MESSAGE),
    )
    .await?;
    ensure!(
        reply.status == StatusCode::FORBIDDEN,
        "a wrong signature got {}",
        reply.status
    );
    // The sink fails twice, then dead-letters the events.
    receiver
        .wait_metric_at_least(
            r#"metahook_dead_letter_events_total{sink="crm"}"#,
            1.0,
            Duration::from_secs(20),
            "no dead letter after 20 s",
        )
        .await?;
    let text = receiver.metrics_text().await?;
    receiver.stop().await?;
    Ok(promql::exposition_names(&text))
}

/// The metric names of the operator's /metrics after a reconciliation, an error, a
/// certificate and a subscription's conditions were recorded.
async fn operator_metrics() -> Result<BTreeSet<String>> {
    use metahook_operator::metrics::{self, Metrics};
    let metrics = Arc::new(Metrics::new().context("operator metrics")?);
    metrics.reconciled(Ok(()), Duration::from_millis(12));
    metrics.reconciled(
        Err(&metahook_operator::Error::Certificate("bad key".to_owned())),
        Duration::from_millis(3),
    );
    metrics.certificate_expires("acme", "wa", 1_900_000_000);
    let condition = |type_: &str, status: &str| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: "Test".to_owned(),
        message: String::new(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    };
    metrics.record_conditions(
        "acme",
        "wa",
        &[
            condition("Ready", "False"),
            condition("SecretsResolved", "False"),
            condition("CertificateReady", "Unknown"),
            condition("ReceiverAvailable", "Unknown"),
        ],
    );
    metrics.leader.set(1);
    let listener = metrics::bind(([127, 0, 0, 1], 0).into()).await?;
    let addr = listener.local_addr().context("operator metrics address")?;
    let server = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        Arc::new(AtomicBool::new(true)),
    ));
    let reply = testkit::request(addr, Method::GET, "/metrics", &[], Bytes::new()).await;
    server.abort();
    Ok(promql::exposition_names(&reply?.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_a_query_uses_is_exported() -> Result<()> {
    let mut exported = receiver_metrics().await?;
    exported.extend(operator_metrics().await?);
    let mut problems = Vec::new();
    for (file, dashboard) in dashboards()? {
        for query in queries(&file, &dashboard) {
            for metric in promql::metric_names(&substitute(&query.expr)) {
                if !exported.contains(&metric) {
                    problems.push(format!(
                        "{} uses {metric}, which neither a live receiver nor the operator exports",
                        query.place
                    ));
                }
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "{}\nexported: {exported:?}",
        problems.join("\n")
    );
    Ok(())
}

/// Where scripts/tools/grafana.sh installs the npm packages.
fn node_modules() -> Result<PathBuf> {
    let dir = tools_dir().join("node/node_modules");
    let schema = dir.join("@grafana/schema/package.json");
    if !schema.is_file() {
        bail!(
            "npm package @grafana/schema is not installed ({} is missing): run scripts/install-tools.sh",
            schema.display()
        );
    }
    Ok(dir)
}

/// Runs `tsc --strict` over each dashboard as the initializer of a `Dashboard` constant.
fn typecheck(dir: &Path, dashboards: &[(String, String)]) -> Result<()> {
    let link = dir.join("node_modules");
    if !link.exists() {
        std::os::unix::fs::symlink(node_modules()?, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let mut args = vec![
        "--noEmit",
        "--strict",
        // Grafana's own declaration files are not ours to check; our literal is.
        "--skipLibCheck",
        "--module",
        "nodenext",
        "--moduleResolution",
        "nodenext",
        "--target",
        "es2022",
    ];
    let mut files = Vec::new();
    for (name, json) in dashboards {
        let file = format!("{}.ts", name.trim_end_matches(".json"));
        let source = format!(
            "import type {{ Dashboard }} from '@grafana/schema';\n\
             const dashboard: Dashboard = {json};\n\
             export default dashboard;\n"
        );
        std::fs::write(dir.join(&file), source).with_context(|| format!("writing {file}"))?;
        files.push(file);
    }
    args.extend(files.iter().map(String::as_str));
    run_in("tsc", &args, dir)?;
    Ok(())
}

#[test]
fn dashboards_typecheck_against_grafanas_schema() -> Result<()> {
    let dir = tempfile::tempdir().context("creating temp dir")?;
    let dashboards = dashboards()?
        .into_iter()
        .map(|(file, json)| Ok((file, serde_json::to_string_pretty(&json)?)))
        .collect::<Result<Vec<_>>>()?;
    typecheck(dir.path(), &dashboards)?;

    // The check has teeth: a key Grafana does not know, in a panel, is an error.
    let (file, json) = dashboards.first().context("no dashboards")?;
    let mut broken: Value = serde_json::from_str(json)?;
    let panel = broken["panels"]
        .as_array_mut()
        .and_then(|panels| panels.last_mut())
        .context("a dashboard without panels")?;
    panel["notAGrafanaKey"] = Value::from(1);
    let broken = vec![(
        format!("broken-{file}"),
        serde_json::to_string_pretty(&broken)?,
    )];
    match typecheck(dir.path(), &broken) {
        Ok(()) => bail!("tsc accepted a panel with an unknown key: the typecheck checks nothing"),
        Err(err) if format!("{err:#}").contains("notAGrafanaKey") => Ok(()),
        Err(err) => Err(err.context("tsc failed, but not on the unknown key")),
    }
}
