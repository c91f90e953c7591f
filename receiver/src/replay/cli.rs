//! `metahook-receiver replay`: the flags made a [`ReplayRequest`], sent to the running
//! receiver's admin endpoint when one holds the spool (or `--admin-url` is given), else
//! carried out here on the stopped spool ([`super::local`]); progress on a terminal, and a
//! summary.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use metahook_config::{Config, DeliveryMode};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::request::{ReplayRequest, rfc3339};

/// How often a running receiver is asked how far its replay got.
const POLL: Duration = Duration::from_millis(300);

/// The command's flags (see `metahook-receiver replay --help`).
#[derive(Debug)]
pub struct Args {
    /// `--sink`.
    pub sink: String,
    /// `--since`.
    pub since: String,
    /// `--until`.
    pub until: Option<String>,
    /// `--object`.
    pub objects: Vec<String>,
    /// `--type`.
    pub fields: Vec<String>,
    /// `--endpoint`.
    pub endpoints: Vec<String>,
    /// `--event-id`.
    pub event_ids: Vec<String>,
    /// `--dead-letters`.
    pub dead_letters: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--json`.
    pub json: bool,
    /// `--admin-url`.
    pub admin_url: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
}

/// A time flag: RFC 3339, or a duration ago (`90m`, `24h`).
pub fn parse_time(flag: &str, text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now - ago);
    }
    bail!(
        "{flag}: {text:?} is neither an RFC 3339 time (2026-12-07T10:00:00Z) nor a duration ago (90m, 24h)"
    )
}

/// Runs the command; the exit status.
pub fn run(config: &Config, args: &Args) -> anyhow::Result<u8> {
    if config.delivery.mode == DeliveryMode::Direct {
        bail!("replay: with delivery.mode: direct no event log is kept to replay from");
    }
    if !config.sinks.iter().any(|s| s.name == args.sink) {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "--sink: no sink named {:?} in the configuration (sinks: {})",
            args.sink,
            names.join(", ")
        );
    }
    let now = OffsetDateTime::now_utc();
    let since = parse_time("--since", &args.since, now)?;
    let until = args
        .until
        .as_deref()
        .map(|u| parse_time("--until", u, now))
        .transpose()?;
    let request = ReplayRequest {
        sink: args.sink.clone(),
        since: rfc3339(since),
        until: until.map(rfc3339),
        objects: args.objects.clone(),
        fields: args.fields.clone(),
        endpoints: args.endpoints.clone(),
        event_ids: args.event_ids.clone(),
        dead_letters: args.dead_letters,
        dry_run: args.dry_run,
    };
    super::request::selection(&request)
        .map_err(|err| anyhow::anyhow!("--{}: {}", err.field, err.why))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let held = crate::spool::held_lock(&config.spool.dir)?;
    let mut progress = Progress::new();
    let status = match (&args.admin_url, held) {
        (None, None) => runtime.block_on(async {
            let status = super::local::replay(config, request, |s| {
                if let Ok(value) = serde_json::to_value(s) {
                    progress.show(&value);
                }
            })
            .await?;
            anyhow::Ok(serde_json::to_value(&status)?)
        })?,
        (url, lock) => {
            let base = match url {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => admin_base(config, lock.as_deref())?,
            };
            let token = token(config, args)?;
            runtime.block_on(remote(&base, &token, &request, &mut progress))?
        }
    };
    progress.done();
    summarize(&status, args.json)
}

/// The running receiver's admin endpoint, from `metrics_listen`.
fn admin_base(config: &Config, lock: Option<&std::path::Path>) -> anyhow::Result<String> {
    let held = lock.map_or_else(String::new, |l| format!(" (it holds {})", l.display()));
    let (Some(mut at), Some(_)) = (config.metrics_listen, &config.admin) else {
        bail!(
            "a receiver is running on spool.dir {}{held}: replay goes through its admin \
             endpoint, and this configuration has no {}; set metrics_listen and \
             admin.token_file in the receiver's configuration, or give --admin-url and \
             --token-file (docs/replay.md)",
            config.spool.dir.display(),
            if config.metrics_listen.is_none() {
                "metrics_listen"
            } else {
                "admin.token_file"
            }
        );
    };
    if at.ip().is_unspecified() {
        at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{at}"))
}

fn token(config: &Config, args: &Args) -> anyhow::Result<String> {
    let file = args
        .token_file
        .clone()
        .or_else(|| config.admin.as_ref().map(|a| a.token_file.clone()))
        .context(
            "--token-file: the admin token is needed (or admin.token_file in the configuration)",
        )?;
    let token = std::fs::read_to_string(&file)
        .with_context(|| format!("--token-file: cannot read {}", file.display()))?;
    Ok(token.trim().to_owned())
}

/// Starts the replay on the running receiver and follows it to its end.
async fn remote(
    base: &str,
    token: &str,
    request: &ReplayRequest,
    progress: &mut Progress,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let call = |builder: reqwest::RequestBuilder| async move {
        let response = builder
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the receiver's admin endpoint at {base}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("cannot read the admin endpoint's answer")?;
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({"error": String::from_utf8_lossy(&body)}));
        if !status.is_success() {
            let error = value["error"].as_str().unwrap_or("no reason given");
            bail!("the receiver refused the replay ({status}): {error}");
        }
        anyhow::Ok(value)
    };
    let body = serde_json::to_vec(request)?;
    let mut status = call(
        client
            .post(format!("{base}/admin/replay"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
    )
    .await?;
    while status["state"] == "running" {
        progress.show(&status);
        tokio::time::sleep(POLL).await;
        let id = status["id"].as_str().unwrap_or_default().to_owned();
        status = call(client.get(format!("{base}/admin/replay/{id}"))).await?;
    }
    Ok(status)
}

/// A progress line on standard error, when that is a terminal.
struct Progress {
    terminal: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, status: &Value) {
        if !self.terminal {
            return;
        }
        let n = |k: &str| status[k].as_u64().unwrap_or(0);
        let _ = write!(
            std::io::stderr().lock(),
            "\rreplay {} to {}: {} scanned, {} matched, {} delivered, {} failed ",
            status["id"].as_str().unwrap_or(""),
            status["request"]["sink"].as_str().unwrap_or(""),
            n("scanned"),
            n("matched"),
            n("delivered"),
            n("failed"),
        );
        self.shown = true;
    }

    fn done(&self) {
        if self.shown {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

/// Prints the summary; the exit status it means.
fn summarize(status: &Value, json: bool) -> anyhow::Result<u8> {
    let n = |k: &str| status[k].as_u64().unwrap_or(0);
    let state = status["state"].as_str().unwrap_or("");
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
    } else {
        let request = &status["request"];
        let dry = request["dry_run"].as_bool().unwrap_or(false);
        println!(
            "replay {} to sink {}: {state}{}",
            status["id"].as_str().unwrap_or(""),
            request["sink"].as_str().unwrap_or(""),
            if dry {
                " (dry run: nothing delivered)"
            } else {
                ""
            }
        );
        println!(
            "  window: {} to {}",
            request["since"].as_str().unwrap_or(""),
            request["until"].as_str().unwrap_or("the newest event")
        );
        println!(
            "  available: {} to {}",
            status["available"]["from"].as_str().unwrap_or(""),
            status["available"]["to"].as_str().unwrap_or("")
        );
        println!(
            "  scanned {}, matched {} ({} from dead letters), delivered {}, failed {}",
            n("scanned"),
            n("matched"),
            n("matched_dead_letters"),
            n("delivered"),
            n("failed")
        );
        if let Some(failures) = status["failures"].as_array() {
            for failure in failures {
                println!(
                    "  not taken: seq {} id {}: {}",
                    failure["seq"],
                    failure["id"].as_str().unwrap_or(""),
                    failure["reason"].as_str().unwrap_or("")
                );
            }
        }
    }
    match state {
        "succeeded" if n("failed") == 0 => Ok(0),
        "succeeded" => Ok(3),
        _ => {
            let error = status["error"].as_str().unwrap_or(state);
            bail!("replay {state}: {error}")
        }
    }
}
