//! The `postgres` sink: the unified message store.
//!
//! Every event lands in `events` (the event as jsonb, keyed by event id), and is projected
//! into `conversations`, `messages` (with a delivery status that only moves forward, and
//! WhatsApp pricing), `engagement` (comments, mentions, reactions, ratings, leads, opt-ins and
//! opt-outs, with their author and the post they are about) and `leads` (Lead Ads ids). A batch
//! is one transaction: the events are streamed with a binary `COPY` into a temporary staging
//! table, moved into `events` by one `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, and only
//! the events that were new are projected (idempotent upserts), so a redelivery changes
//! nothing. Migrations run at start, under an advisory lock, recorded in `schema_migrations`.
//! docs/postgres.md describes the tables.

mod request;
pub mod tls;

use metahook_config::sink::postgres::{self as ssl_mode, PostgresSinkConfig, SslMode};
use tokio_postgres::{Client, NoTls};

use self::request::{Statements, upsert};
use super::{Delivered, Sink, SinkError};
use crate::event::Event;
use crate::secrets;
use crate::spool::Spooled;

/// An error with its causes: tokio-postgres names only the step that failed ("error
/// performing TLS handshake", "db error") and keeps why in its source.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs a connection until it ends, logging why.
async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(err) = connection.await {
        tracing::warn!(error = %err, "PostgreSQL connection ended");
    }
}

/// The schema, version by version. Each runs once, in order, in one transaction.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE {s}.events (
    id          text PRIMARY KEY,
    platform    text NOT NULL,
    object      text NOT NULL,
    field       text NOT NULL,
    kind        text NOT NULL,
    account_id  text,
    occurred_at timestamptz,
    received_at timestamptz NOT NULL,
    endpoint    text NOT NULL,
    event       jsonb NOT NULL
);
CREATE INDEX events_platform_kind_idx ON {s}.events (platform, kind, occurred_at);
CREATE TABLE {s}.conversations (
    platform         text NOT NULL,
    account_id       text NOT NULL,
    participant_id   text NOT NULL,
    participant_name text,
    first_event_at   timestamptz,
    last_event_at    timestamptz,
    PRIMARY KEY (platform, account_id, participant_id)
);
CREATE TABLE {s}.messages (
    id             text PRIMARY KEY,
    platform       text NOT NULL,
    account_id     text,
    participant_id text,
    direction      text NOT NULL,
    type           text,
    text           text,
    reply_to       text,
    sent_at        timestamptz,
    status         text,
    status_rank    integer NOT NULL DEFAULT 0,
    status_at      timestamptz,
    errors         jsonb,
    event_id       text NOT NULL
);
CREATE TABLE {s}.engagement (
    event_id       text PRIMARY KEY,
    platform       text NOT NULL,
    kind           text NOT NULL,
    account_id     text,
    participant_id text,
    target_id      text,
    text           text,
    occurred_at    timestamptz
);
",
    r"
ALTER TABLE {s}.engagement
    ADD COLUMN participant_name text,
    ADD COLUMN media_id         text;
CREATE INDEX engagement_participant_idx ON {s}.engagement (platform, account_id, participant_id);
ALTER TABLE {s}.messages
    ADD COLUMN payload                 text,
    ADD COLUMN referral                jsonb,
    ADD COLUMN pricing_category        text,
    ADD COLUMN pricing_billable        boolean,
    ADD COLUMN pricing_model           text,
    ADD COLUMN conversation_id         text,
    ADD COLUMN conversation_origin     text,
    ADD COLUMN conversation_expires_at timestamptz;
CREATE TABLE {s}.leads (
    leadgen_id   text PRIMARY KEY,
    account_id   text,
    form_id      text,
    ad_id        text,
    adgroup_id   text,
    page_id      text,
    created_time timestamptz,
    event_id     text NOT NULL
);
CREATE INDEX leads_form_idx ON {s}.leads (form_id, created_time);
",
];

/// Has this session compress what it stores with lz4 where the server has it.
///
/// PostgreSQL compresses a value over about 2 KB (most events: they carry their `raw`),
/// with pglz unless told otherwise, and pglz was the largest cost of a drain: a quarter of
/// the backend's CPU in `pglz_compress`; with lz4 (PostgreSQL 14+, when built with it) the
/// drain ran 1.13–1.17× faster (docs/benchmarks.md). `default_toast_compression` applies to
/// this connection's writes only, the staging table's included: no table changes, existing
/// rows keep their compression and every reader decompresses either. A server without lz4
/// (or older than 14) keeps its own default, which costs only speed.
async fn prefer_lz4(client: &Client) {
    let supported = client
        .query_opt(
            "SELECT 1 FROM pg_settings \
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)",
            &[],
        )
        .await;
    let set = match supported {
        Ok(Some(_)) => {
            client
                .batch_execute("SET default_toast_compression = 'lz4'")
                .await
        }
        Ok(None) => {
            tracing::debug!("PostgreSQL has no lz4: events are compressed with its default");
            return;
        }
        Err(err) => Err(err),
    };
    if let Err(err) = set {
        tracing::warn!(error = %err, "cannot choose lz4 compression; PostgreSQL's default is used");
    }
}

/// Events per batch (one transaction): the commit's WAL flush and the round trips of a
/// batch are shared by more events than the consumer's default batch.
pub const BATCH: usize = 2048;

/// The temporary table a batch is copied into (one per connection, emptied at each commit).
const STAGING: &str = "metahook_events_staging";

/// Writes events into PostgreSQL.
#[derive(Debug)]
pub struct PostgresSink {
    config: PostgresSinkConfig,
    session: Option<Session>,
}

/// A connection with its staging table created and the batch's statements prepared.
#[derive(Debug)]
struct Session {
    client: Client,
    statements: Statements,
}

impl PostgresSink {
    /// A sink for `config`; it connects (and migrates) on open.
    pub fn new(config: PostgresSinkConfig) -> PostgresSink {
        PostgresSink {
            config,
            session: None,
        }
    }

    fn remote(&self, what: &str, err: impl std::fmt::Display) -> SinkError {
        SinkError::Remote {
            context: format!("{what} (schema {})", self.config.schema),
            message: err.to_string(),
        }
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.config.schema)
    }

    /// Connects in the `sslmode` in force (the URL's is taken out of it, since
    /// tokio-postgres refuses `verify-*`), reading `ca_file` now.
    async fn connect(&self, url: &str) -> Result<Client, SinkError> {
        let setup = |e: String| self.remote("cannot connect to PostgreSQL", e);
        let (url, in_url) = ssl_mode::take_ssl_mode(url).map_err(setup)?;
        let mode = ssl_mode::resolve(self.config.ssl_mode, in_url).map_err(setup)?;
        let config = tls::connection_config(&url, mode).map_err(setup)?;
        let failed = |e: tokio_postgres::Error| {
            self.remote(
                &format!("cannot connect to PostgreSQL (sslmode {})", mode.as_str()),
                with_causes(&e),
            )
        };
        if mode == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
            tokio::spawn(watch(connection));
            return Ok(client);
        }
        // ca_file is read on a blocking thread, off the runtime's workers.
        let ca_file = self.config.ca_file.clone();
        let tls = tokio::task::spawn_blocking(move || tls::client_config(mode, ca_file.as_deref()))
            .await
            .map_err(|e| setup(e.to_string()))?
            .map_err(setup)?;
        let (client, connection) = config
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map_err(failed)?;
        tokio::spawn(watch(connection));
        Ok(client)
    }

    async fn migrate(&self, client: &mut Client) -> Result<(), SinkError> {
        let txn = client
            .transaction()
            .await
            .map_err(|e| self.remote("cannot begin migration", e))?;
        // One migrator at a time across receivers sharing the database.
        txn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("metahook:{}", self.config.schema)],
        )
        .await
        .map_err(|e| self.remote("cannot lock for migration", e))?;
        txn.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        ))
        .await
        .map_err(|e| self.remote("cannot create the schema", e))?;
        let row = txn
            .query_one(
                &self.sql("SELECT COALESCE(max(version), 0) FROM {s}.schema_migrations"),
                &[],
            )
            .await
            .map_err(|e| self.remote("cannot read schema_migrations", e))?;
        let applied: i32 = row.get(0);
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            if version <= applied {
                continue;
            }
            txn.batch_execute(&self.sql(migration))
                .await
                .map_err(|e| self.remote(&format!("migration {version} failed"), e))?;
            txn.execute(
                &self.sql("INSERT INTO {s}.schema_migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(|e| self.remote("cannot record migration", e))?;
            tracing::info!(schema = %self.config.schema, version, "applied PostgreSQL migration");
        }
        txn.commit()
            .await
            .map_err(|e| self.remote("cannot commit migration", e))
    }
}

impl Sink for PostgresSink {
    async fn open(&mut self, _state: Option<u64>) -> Result<Option<u64>, SinkError> {
        if self.session.as_ref().is_some_and(|s| !s.client.is_closed()) {
            return Ok(None);
        }
        self.session = None;
        let url = match &self.config.url_file {
            Some(file) => {
                // Read on a blocking thread: a stuck volume must not hold a runtime worker.
                let path = file.clone();
                let url = tokio::task::spawn_blocking(move || secrets::read_file(&path))
                    .await
                    .map_err(|e| self.remote("cannot read postgres.url_file", e))?
                    .map_err(|e| {
                        self.remote(
                            &format!("cannot read postgres.url_file {}", file.display()),
                            e,
                        )
                    })?;
                String::from_utf8_lossy(&url).trim().to_owned()
            }
            None => self.config.url.clone(),
        };
        let mut client = self.connect(&url).await?;
        self.migrate(&mut client).await?;
        prefer_lz4(&client).await;
        client
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} (
                     ord integer NOT NULL, id text NOT NULL, platform text NOT NULL,
                     object text NOT NULL, field text NOT NULL, kind text NOT NULL,
                     account_id text, occurred_at text, received_at text NOT NULL,
                     endpoint text NOT NULL, event jsonb NOT NULL
                 ) ON COMMIT DELETE ROWS"
            ))
            .await
            .map_err(|e| self.remote("cannot create the staging table", e))?;
        let statements = Statements::prepare(&client, &self.config.schema)
            .await
            .map_err(|e| self.remote("cannot prepare the batch statements", e))?;
        self.session = Some(Session { client, statements });
        Ok(None)
    }

    async fn deliver(&mut self, batch: &[Spooled]) -> Result<Delivered, SinkError> {
        let events: Vec<Event> = batch
            .iter()
            .map(|e| serde_json::from_slice(&e.json))
            .collect::<Result<_, _>>()
            .map_err(|e| self.remote("spooled event is not an event", e))?;
        let Some(session) = self.session.as_mut() else {
            return Err(SinkError::Remote {
                context: "PostgreSQL sink is not open".into(),
                message: "not connected".into(),
            });
        };
        let result = upsert(session, batch, &events).await;
        if result.is_err() && session.client.is_closed() {
            self.session = None;
        }
        result.map_err(|e| SinkError::Remote {
            context: format!("cannot store events (schema {})", self.config.schema),
            message: e.to_string(),
        })?;
        Ok(Delivered::all(0))
    }

    fn batch_size(&self) -> usize {
        BATCH
    }
}
