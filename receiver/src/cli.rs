//! The `metahook-receiver` command line: `run` (default), `check-config`, `drain`, `dlq`,
//! `replay`, `sign`.
//!
//! It lives in the library so that the binary and the benchmark (which re-executes itself
//! as a receiver) run exactly the same code.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use metahook_config::Config;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::{app, verify};

/// Receives Meta webhooks (WhatsApp, Messenger, Instagram, Facebook Pages), verifies each
/// request's X-Hub-Signature-256, normalizes every item into one event schema and stores it
/// durably (fsync) before answering 200; sinks then deliver the events.
///
/// Configuration keys are described in docs/configuration.md.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true, after_long_help = CONFIG_KEYS)]
struct Cli {
    // Defaults, environment variables and values are said in the help's prose, not in
    // clap's `[default: …]` annotations: in the long help those stand alone on a line and
    // read like section headings.
    /// The YAML configuration file (or METAHOOK_CONFIG); without either, the embedded
    /// default (examples/local.yaml).
    #[arg(
        long,
        short,
        global = true,
        env = "METAHOOK_CONFIG",
        hide_env = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// Log format: json, one JSON object per line (the default), or text, for people (or
    /// METAHOOK_LOG_FORMAT).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Json,
        env = "METAHOOK_LOG_FORMAT",
        hide_env = true,
        hide_default_value = true,
        hide_possible_values = true,
        value_name = "json|text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Every configuration key, for `--help` (docs/configuration.md has the details; a test
/// keeps both in step with the config type).
const CONFIG_KEYS: &str = "\
Configuration keys (YAML; durations like 500ms, 30s, 24h; byte sizes like
4194304, 4MiB (1024-based) or 4MB (1000-based); the default follows \"default\"
where there is one):
  listen               HOST:PORT, :PORT or IP:PORT for webhooks and probes
  endpoints[]          one per Meta app:
    name               label in logs, metrics and events
    path               URL path Meta is pointed at
    objects            accepted objects, e.g. whatsapp_business_account, page,
                       instagram; absent: all
    app_secret_file, app_secret_env
                       app secret (env: VAR or VAR:-default)
    previous_app_secret_file, previous_app_secret_env
                       also accepted (during a rotation)
    verify_token_file, verify_token_env
                       token of the GET handshake
    legacy_sha1_signature
                       also accept X-Hub-Signature (sha1); default false
  delivery.mode        spool: 200 once fsync'd; direct: 200 once every sink
                       acked; default spool
  spool:
    dir                spool directory (segment log, fsync'd group commits)
    dedup_window       a body redelivered within it is stored once; default 1h
    dedup_max_entries  requests remembered for dedup; default 100000
    segment_bytes      size of a segment file; default 67108864
    max_bytes          503 + Retry-After while the spool holds more; default 0
                       (no limit)
    max_group_requests requests per group commit; default 1024
    group_commit_wait  wait for requests about to append; default 1ms
    preallocate_segments write each new segment over a delivered one
                       (faster fsyncs); default true
    lock_wait          how long run waits while another process (a drain)
                       holds the spool; default: until it is free (0s: fail)
    retention.max_age  keep delivered events this long for replay; default:
                       not kept
    retention.max_bytes
                       keep at most this many bytes of delivered events
  sinks[]:
    name               sink name (its cursor and metrics label)
    file.path          JSON-lines file
    nats.url           NATS server (JetStream publish, Nats-Msg-Id = event id)
    nats.subject       subject template; default meta.{platform}.{field}.{kind}
    nats.stream        stream name (required with create_stream)
    nats.create_stream create the stream if absent; default false
    nats.user_file, nats.password_file
                       user and password (files re-read at each connection)
    nats.token_file    token; or nats.nkey_seed_file (NKey seed), or
                       nats.credentials_file (.creds: JWT + seed); one method
    nats.ca_file       CAs for the server's certificate (TLS required)
    nats.client_cert_file, nats.client_key_file
                       mTLS to the server
    kafka.bootstrap_servers
                       brokers, [host:port, ...] (idempotent producer, acks=all,
                       headers metahook-event-id/-object/-field/-kind/-received-at)
    kafka.topic        topic template; default meta.{platform}
    kafka.key          conversation, account, event_id or none; default
                       conversation (account_id/participant: per-conversation
                       order)
    kafka.compression  none, gzip, snappy, lz4, zstd; default none
    kafka.tls          TLS with the system's CAs; any TLS file implies it
    kafka.ca_file, kafka.client_cert_file, kafka.client_key_file
                       CAs for the brokers; mTLS to them
    kafka.sasl         {mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512,
                       user_file, password_file} (files re-read at reopen)
    kafka.delivery_timeout
                       one attempt's wait for the broker; default 30s
    postgres.url       PostgreSQL connection URL (the unified message store)
    postgres.url_file  file holding the URL instead (re-read at reconnect)
    postgres.schema    schema of its tables (migrated at start); default
                       metahook
    postgres.ssl_mode  disable, prefer, require, verify-ca, verify-full; default
                       the URL's sslmode, else prefer
    postgres.ca_file   CAs for the server's certificate (verify-ca, verify-full)
    http.url           POST each event as JSON (Idempotency-Key = event id)
    http.signing_secret_file
                       secret of the X-Metahook-Signature HMAC
    http.timeout       per POST; default 10s
    http.concurrency   POSTs in flight; default 8
    http.batch_size    events per POST; above 1, one JSON array (at most 1000);
                       default 1
    http.ca_file       CAs for the service's certificate; default the system's
    http.client_cert_file, http.client_key_file
                       mTLS to the service
    http.username or http.username_file, http.password_file
                       basic authentication (files re-read at reopen)
    http.bearer_token_file
                       Authorization: Bearer (instead of basic)
    http.headers[]     {name, value_file}: a header whose value is a secret
    retry.max_attempts attempts per batch before dead letters; default 20
                       (0: forever)
    retry.max_backoff  longest wait between attempts; default 5m
  limits:
    max_body_bytes     413 above; default 4194304
    header_read_timeout
                       connection closed after; default 10s
    request_timeout    408 after, however fast the body comes; default 30s
    body_timeout       408 for a stalled body after; default 5s
    min_body_bytes_per_second
                       each this many body bytes extend body_timeout by 1s;
                       default 65536
    max_in_flight      503 + Retry-After above; default 1024
    max_in_flight_per_peer
                       429 above, per client address (IPv6: per /64);
                       default 128
    max_buffered_body_bytes
                       503 when bodies being read would hold more; default
                       33554432 (or max_body_bytes if larger)
    max_queued_requests
                       503 when this many requests wait for the spool
                       writer (an fsync stall); default max_in_flight
    max_queued_bytes   503 when their bytes would exceed it; default
                       max_buffered_body_bytes in force
    retry_after_seconds
                       Retry-After on 503 and 429; default 5
    max_json_depth     400 for bodies nested deeper; default 128
  log_message_text     log message texts; default false
  shutdown_grace       SIGTERM drain limit; default 25s
  shutdown_delay       keep accepting after readiness turns off; default 0s
  secret_reload_interval
                       secret files re-read every; default 2s
  metrics_listen       extra plain-HTTP address for /metrics, /healthz, /readyz
                       (and /admin/ with admin)
  admin.token_file     bearer token of the admin endpoints (POST /admin/replay)
                       on metrics_listen; default: none served
  tls:
    cert_file, key_file
                       serving certificate chain and key (PEM, reloaded when
                       changed)
    mode               server, or mutual (a client certificate is required on
                       endpoint paths); default server
    client_ca_file     CA bundle client certificates must chain to (mutual)
    allowed_client_names
                       client CN / DNS SAN accepted; default
                       client.webhooks.fbclientcerts.com
    reload_interval    certificate files checked every; default 10s
  trusted_proxy:
    cidrs              ingress addresses whose client-certificate headers are
                       believed
    allowed_client_names
                       CN accepted in the subject DN header; default
                       client.webhooks.fbclientcerts.com
    verify_header      verdict header; default ssl-client-verify
    subject_header     subject DN header; default ssl-client-subject-dn";

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// One line per dead letter: seq, event id, kind, attempts, when, why.
    List(DlqTarget),
    /// Print dead-lettered events as JSON, one per line.
    Show(DlqTarget),
    /// Queue dead letters for redelivery by the receiver running on the spool (or the next
    /// one started on it).
    Retry(DlqTarget),
    /// Delete dead letters.
    Purge(DlqTarget),
}

#[derive(Debug, clap::Args)]
struct DlqTarget {
    /// The sink, by its configured name.
    #[arg(long)]
    sink: String,
    /// Only these spool sequence numbers (repeatable); all when absent.
    #[arg(long = "seq", value_name = "SEQ")]
    seqs: Vec<u64>,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The sink to deliver to, by its configured name.
    #[arg(long, value_name = "NAME")]
    sink: String,
    /// Start of the window: an RFC 3339 time (2026-12-07T10:00:00Z) or a duration ago
    /// (90m, 24h).
    #[arg(long, value_name = "TIME")]
    since: String,
    /// End of the window (exclusive), as --since; the newest event when absent.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only events of this object (page, instagram, whatsapp_business_account; repeatable).
    #[arg(long = "object", value_name = "OBJECT")]
    objects: Vec<String>,
    /// Only events of this field, e.g. messages, feed (repeatable).
    #[arg(long = "type", visible_alias = "field", value_name = "FIELD")]
    fields: Vec<String>,
    /// Only events received on this endpoint, by its configured name (repeatable).
    #[arg(long = "endpoint", value_name = "NAME")]
    endpoints: Vec<String>,
    /// Only the event with this id (repeatable).
    #[arg(long = "event-id", value_name = "ID")]
    event_ids: Vec<String>,
    /// Also re-deliver the sink's dead letters that match (they stay dead letters).
    #[arg(long)]
    dead_letters: bool,
    /// Count what matches; deliver nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON (the admin endpoint's status object).
    #[arg(long)]
    json: bool,
    /// The running receiver's admin endpoint base URL (e.g. http://127.0.0.1:9090 through
    /// kubectl port-forward); default: http:// metrics_listen of the configuration.
    #[arg(long, value_name = "URL")]
    admin_url: Option<String>,
    /// File holding the admin token; default: admin.token_file of the configuration.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver (the default when no command is given).
    Run,
    /// Validate the configuration, read every secret and TLS file it names, check that
    /// spool.dir can be created and written and that no receiver holds it, and bind the
    /// listeners (listen, metrics_listen), releasing everything again; then exit.
    CheckConfig {
        /// Do not bind the listeners or look at the spool's lock: for a configuration
        /// prepared on another machine, or checked beside the receiver that runs it.
        #[arg(long)]
        no_bind: bool,
    },
    /// Deliver what the spool's sinks have not delivered, without taking requests; then
    /// print a JSON summary and exit with a code saying whether anything must be kept.
    ///
    /// Takes the spool's lock as `run` does (never opening a spool another process holds),
    /// normalizes requests the intake log holds and the event log does not, then runs every
    /// configured sink (retries, backoff and dead letters as in `run`) until each has
    /// delivered everything, --deadline passes, or SIGTERM/SIGINT comes; what is left stays
    /// in the spool. Binds no webhook listener; with metrics_listen set it serves /metrics
    /// (and /healthz 200, /readyz 503) there. Kubernetes runs it as a Job on the claim of a
    /// replica removed by a scale-down (docs/operations.md, "Drain mode").
    #[command(after_long_help = crate::drain::EXIT_CODES_HELP)]
    Drain {
        /// How long the sinks get, counted from when the drain holds the spool (e.g. 10m,
        /// 90s); 10m when absent.
        #[arg(long, value_name = "DURATION", default_value = "10m", hide_default_value = true, value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// How long to wait while another process holds the spool before giving up with
        /// exit code 5; 0s (give up at once) when absent.
        #[arg(long, value_name = "DURATION", default_value = "0s", hide_default_value = true, value_parser = humantime::parse_duration)]
        lock_wait: std::time::Duration,
        /// Also write the summary to this file, replacing it (Kubernetes:
        /// /dev/termination-log).
        #[arg(long, value_name = "PATH")]
        summary_file: Option<PathBuf>,
    },
    /// Inspect, retry or purge a sink's dead letters (events it gave up on).
    ///
    /// Works beside a running receiver: `retry` queues the events, and the receiver running
    /// on the spool (or the next one started on it) delivers them through the sink again.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Re-deliver events the spool still holds to one sink, with their original ids and
    /// the replay marker ("replayed": true first in the event JSON; HTTP also sends the header
    /// X-Metahook-Replay: 1, NATS Metahook-Replay: 1). docs/replay.md.
    ///
    /// Selects events whose received_at is in [--since, --until) and that match every
    /// filter given (a repeated filter matches any of its values). A window starting
    /// before the oldest event held is refused, saying what is available (spool.retention
    /// decides how long delivered events are kept).
    ///
    /// Beside a running receiver (it holds the spool's lock) the replay is carried out by
    /// that receiver, through its admin endpoint on metrics_listen (admin.token_file in
    /// its configuration); on a stopped spool this command takes the lock and delivers
    /// itself. Progress goes to standard error on a terminal; the summary to standard
    /// output. Exit codes: 0 every selected event delivered (or counted, with --dry-run),
    /// 1 refused or failed, 2 bad flags, 3 some events were not taken by the sink.
    Replay(ReplayArgs),
    /// Print the X-Hub-Signature-256 header value Meta would send for a body.
    ///
    /// Example: curl -H "X-Hub-Signature-256: $(metahook-receiver sign --secret-file s body.json)" ...
    Sign {
        /// File holding the app secret (trailing newlines are ignored).
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// The body to sign, byte for byte; `-` or absent reads standard input.
        #[arg(value_name = "BODY_FILE")]
        body: Option<PathBuf>,
    },
}

/// Runs the command line given by `args` (the program name first), as the binary does.
pub fn main_with<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    std::process::ExitCode::from(status_with(args))
}

/// [`main_with`], returning the exit status as a number (for callers that must
/// `std::process::exit` with it). Logs are flushed before it returns.
pub fn status_with<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version end here too, with exit code 0.
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    // Held until exit: dropping it flushes the log lines still buffered.
    let log_guard = init_logging(cli.log_format);
    let format = cli.log_format;
    match run(cli) {
        Ok(status) => status,
        Err(err) => {
            let chain = error_chain(&err);
            match format {
                LogFormat::Json => {
                    tracing::error!(error = chain, "metahook-receiver failed");
                }
                LogFormat::Text => {
                    // For a person: the message as it is, its lines (a YAML snippet with a
                    // caret under the bad key) as lines, not one `\n`-escaped log field.
                    // After the log lines still buffered, so the order stays.
                    drop(log_guard);
                    let mut stderr = std::io::stderr().lock();
                    let _ = writeln!(stderr, "error: {chain}");
                }
            }
            1
        }
    }
}

/// The error and its causes joined by `: `, each cause once: a message that already holds
/// its cause's text (`cannot read …: No such file or directory (os error 2)`, or kube's
/// `failed to infer config: …, kubeconfig: (failed to read kubeconfig …)`) is not followed
/// by that cause again.
pub fn error_chain(err: &anyhow::Error) -> String {
    metahook_config::error_chain(err.as_ref())
}

/// Runs the command; returns the exit status of a command that ended as it should (0, or
/// one of `drain`'s outcomes).
fn run(cli: Cli) -> anyhow::Result<u8> {
    let done = match cli.command.unwrap_or(Command::Run) {
        Command::Drain {
            deadline,
            lock_wait,
            summary_file,
        } => {
            let options = crate::drain::Options {
                deadline,
                lock_wait,
            };
            let summary = drain(cli.config.as_deref(), options);
            summary.report(summary_file.as_deref());
            return Ok(summary.outcome.exit_code());
        }
        Command::Sign { secret_file, body } => {
            let secret = std::fs::read(&secret_file)
                .with_context(|| format!("cannot read secret file {}", secret_file.display()))?;
            let secret = secret.trim_ascii_end();
            let body = match body.filter(|p| p.as_os_str() != "-") {
                Some(path) => std::fs::read(&path)
                    .with_context(|| format!("cannot read body file {}", path.display()))?,
                None => {
                    let mut buffer = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buffer)
                        .context("cannot read the body from standard input")?;
                    buffer
                }
            };
            println!("{}", verify::sign(secret, &body));
            Ok(())
        }
        Command::Dlq { action } => {
            let config = load(cli.config.as_deref(), None)?;
            dead_letters(&config, &action)
        }
        Command::Replay(args) => {
            let config = load(cli.config.as_deref(), None)?;
            return crate::replay::cli::run(&config, &args.into());
        }
        Command::CheckConfig { no_bind } => {
            let config = load(cli.config.as_deref(), Some("checking"))?;
            for endpoint in &config.endpoints {
                crate::secrets::SecretStore::load(endpoint)
                    .with_context(|| format!("endpoint {}", endpoint.name))?;
            }
            if let Some(tls) = &config.tls {
                crate::tls::check(tls)?;
            }
            check_writable_dir("spool.dir", &config.spool.dir)?;
            if !no_bind {
                check_what_run_takes(&config)?;
            }
            let scheme = match &config.tls {
                Some(tls) if tls.mode == metahook_config::TlsMode::Mutual => "https, mutual TLS",
                Some(_) => "https",
                None => "http",
            };
            println!(
                "configuration is valid: {} endpoint(s), {} sink(s), listening on {} ({scheme})",
                config.endpoints.len(),
                config.sinks.len(),
                config.listen
            );
            Ok(())
        }
        Command::Run => {
            let config = load(cli.config.as_deref(), Some("running"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
    };
    done.map(|()| 0)
}

impl From<ReplayArgs> for crate::replay::cli::Args {
    fn from(args: ReplayArgs) -> Self {
        crate::replay::cli::Args {
            sink: args.sink,
            since: args.since,
            until: args.until,
            objects: args.objects,
            fields: args.fields,
            endpoints: args.endpoints,
            event_ids: args.event_ids,
            dead_letters: args.dead_letters,
            dry_run: args.dry_run,
            json: args.json,
            admin_url: args.admin_url,
            token_file: args.token_file,
        }
    }
}

/// `drain`: every failure, a configuration that does not load included, ends in a summary.
fn drain(
    config: Option<&std::path::Path>,
    options: crate::drain::Options,
) -> crate::drain::Summary {
    use crate::drain::{Outcome, Summary};
    let config = match load(config, Some("draining")) {
        Ok(config) => config,
        Err(err) => return Summary::failed(Outcome::Error, &error_chain(&err)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return Summary::failed(
                Outcome::Error,
                &format!("cannot start the async runtime: {err}"),
            );
        }
    };
    runtime.block_on(async {
        match termination() {
            Ok(signal) => crate::drain::drain(&config, options, signal).await,
            Err(err) => Summary::failed(Outcome::Error, &error_chain(&err)),
        }
    })
}

/// Checks that the receiver will be able to create `dir` (if absent) and write a file in it,
/// leaving nothing behind: a file is written, synced and removed, and the directories this
/// check created are removed again.
fn check_writable_dir(key: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    // The directories to create, deepest first, up to the first one that exists.
    let mut created = Vec::new();
    let mut missing = Some(dir);
    while let Some(path) = missing.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        created.push(path.to_owned());
        missing = path.parent();
    }
    let result = (|| {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
        let probe = dir.join(format!(".metahook-check-config-{}", std::process::id()));
        let written = std::fs::File::create(&probe)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, b"check-config\n")?;
                file.sync_all()
            })
            .with_context(|| format!("{key}: cannot write in {}", dir.display()));
        let removed = std::fs::remove_file(&probe);
        written?;
        removed.with_context(|| format!("{key}: cannot remove {}", probe.display()))
    })();
    for path in &created {
        // Only what this check created, and only while empty.
        let _ = std::fs::remove_dir(path);
    }
    result
}

/// Takes what `run` would take, and releases it: binds `listen` and `metrics_listen`, and
/// checks that no receiver holds the spool (taking its lock for a moment, creating nothing).
/// Fails with every problem found, each naming its key and the cause.
fn check_what_run_takes(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the async runtime")?;
    let mut problems = Vec::new();
    runtime.block_on(async {
        let listener = app::bind("listen", config.listen).await;
        let metrics = match config.metrics_listen {
            Some(at) => Some(app::bind("metrics_listen", at).await),
            None => None,
        };
        for bound in std::iter::once(listener).chain(metrics) {
            if let Err(err) = bound {
                problems.push(error_chain(&err));
            }
        }
    });
    let dir = &config.spool.dir;
    match crate::spool::held_lock(dir) {
        Ok(None) => {}
        Ok(Some(lock)) => problems.push(format!(
            "spool.dir {}: in use by another receiver (it holds {})",
            dir.display(),
            lock.display()
        )),
        Err(err) => problems.push(format!("spool.dir {}: {err}", dir.display())),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{}; a receiver started on this configuration would be refused (check-config \
             --no-bind skips these checks)",
            problems.join("; ")
        )
    }
}

fn dead_letters(config: &Config, action: &DlqAction) -> anyhow::Result<()> {
    let (DlqAction::List(target)
    | DlqAction::Show(target)
    | DlqAction::Retry(target)
    | DlqAction::Purge(target)) = action;
    if !config.sinks.iter().any(|s| s.name == target.sink) {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "no sink named {:?} in the configuration (sinks: {})",
            target.sink,
            names.join(", ")
        );
    }
    let store = crate::spool::dead_letters::DeadLetters::new(&config.spool.dir);
    let seqs = (!target.seqs.is_empty()).then_some(target.seqs.as_slice());
    let sink = target.sink.as_str();
    if matches!(action, DlqAction::Retry(_))
        && config.delivery.mode == metahook_config::DeliveryMode::Direct
    {
        anyhow::bail!(
            "dlq retry: with delivery.mode: direct no receiver redelivers dead letters (only \
             spool mode's sink consumers do); `dlq show --sink {sink}` prints the events to \
             send again"
        );
    }
    let none = || {
        format!(
            "no dead letters of sink {sink} in {}",
            store.dir().display()
        )
    };
    if let Some(seqs) = seqs {
        let present: Vec<u64> = store.list(sink)?.iter().map(|e| e.seq).collect();
        let missing: Vec<String> = seqs
            .iter()
            .filter(|seq| !present.contains(seq))
            .map(u64::to_string)
            .collect();
        if !missing.is_empty() {
            let held = if present.is_empty() {
                "it holds none".to_owned()
            } else {
                let list: Vec<String> = present.iter().map(u64::to_string).collect();
                format!("it holds seq {}", list.join(", "))
            };
            anyhow::bail!(
                "sink {sink} has no dead letter with seq {} ({held}; `dlq list --sink {sink}` lists them)",
                missing.join(", ")
            );
        }
    }
    let chosen = |entries: Vec<crate::spool::dead_letters::DeadLetter>| {
        entries
            .into_iter()
            .filter(|e| seqs.is_none_or(|s| s.contains(&e.seq)))
            .collect::<Vec<_>>()
    };
    match action {
        DlqAction::List(_) => {
            let entries = chosen(store.list(sink)?);
            if entries.is_empty() {
                note(&none());
            }
            for entry in entries {
                let event: serde_json::Value =
                    serde_json::from_str(entry.event.get()).unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{} attempts\t{}\t{}",
                    entry.seq,
                    event["id"].as_str().unwrap_or(""),
                    event["kind"].as_str().unwrap_or(""),
                    entry.attempts,
                    entry.dead_at,
                    entry.reason
                );
            }
        }
        DlqAction::Show(_) => {
            let entries = chosen(store.list(sink)?);
            if entries.is_empty() {
                note(&none());
            }
            for entry in entries {
                println!("{}", entry.event.get());
            }
        }
        DlqAction::Retry(_) => {
            let queued = store.request_retry(sink, seqs)?;
            let spool = config.spool.dir.display();
            if queued == 0 {
                println!("{}: nothing queued", none());
            } else if crate::spool::held_lock(&config.spool.dir)?.is_some() {
                println!(
                    "{queued} dead letter(s) of sink {sink} queued for redelivery; the receiver \
                     running on {spool} delivers them next"
                );
            } else {
                println!(
                    "{queued} dead letter(s) of sink {sink} queued for redelivery; no receiver \
                     is running on {spool}: the next one started on it delivers them first"
                );
            }
        }
        DlqAction::Purge(_) => {
            let purged = store.purge(sink, seqs)?;
            println!("{purged} dead letter(s) of sink {sink} deleted");
        }
    }
    Ok(())
}

/// A line for the person at the terminal (on standard error, beside the log lines), such as
/// "no dead letters": standard output stays the data a script reads.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The embedded default configuration: examples/local.yaml, compiled in.
pub const EMBEDDED_CONFIG: &str = include_str!("../../examples/local.yaml");

/// The configuration at `path`, or the embedded default; `doing` (`running`, `checking`)
/// says in the log what is done with the default (`None`: nothing to say, e.g. for `dlq`,
/// whose answers name the directory they read).
fn load(path: Option<&std::path::Path>, doing: Option<&str>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => {
            if let Some(doing) = doing {
                tracing::info!(
                    "no --config given: {doing} the embedded default (examples/local.yaml: \
                     127.0.0.1:8080, spool and data/events.jsonl under ./data, demo secrets \
                     unless METAHOOK_APP_SECRET / METAHOOK_VERIFY_TOKEN are set)"
                );
            }
            Config::parse(EMBEDDED_CONFIG)
                .context("the embedded default configuration (examples/local.yaml)")
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Listened for from the start: a start may wait long for the spool's lock.
    let signal = termination()?;
    tokio::pin!(signal);
    let running = tokio::select! {
        started = app::start(config) => started?,
        () = &mut signal => {
            tracing::info!("stopped before the receiver started (nothing was accepted)");
            return Ok(());
        }
    };
    signal.await;
    tracing::info!("shutting down: readiness off, draining connections");
    running.shutdown();
    running.wait().await
}

/// Resolves at the first SIGTERM or SIGINT after this call.
fn termination() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// JSON (or text) log lines on standard error, written by a background thread through a
/// buffer ([`crate::log_writer`]): one line per request at tens of thousands of requests a
/// second would otherwise cost a write system call each on the request path. A stuck output
/// never blocks a request: past the buffer's limit lines are dropped and counted
/// (`metahook_log_lines_dropped_total`); those still buffered are lost only with the
/// process (kill -9).
fn init_logging(format: LogFormat) -> Option<crate::log_writer::LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = match crate::log_writer::buffered(std::io::stderr()) {
        Ok((writer, guard)) => (BoxMakeWriter::new(writer), Some(guard)),
        Err(err) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "cannot start the log writer thread ({err}); writing log lines directly"
            );
            (BoxMakeWriter::new(std::io::stderr), None)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .event_format(crate::json_log::JsonLines::new())
            .init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
