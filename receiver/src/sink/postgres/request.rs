//! What one batch of the `postgres` sink sends: the prepared statements, the binary `COPY`
//! into the staging table, and the projections of the new events, in one transaction.

use bytes::{BufMut, BytesMut};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use super::{STAGING, Session};
use crate::event::{Event, Kind};
use crate::spool::Spooled;

/// Delivery status ranks: a status only replaces a lower one.
fn status_rank(status: &str) -> i32 {
    match status {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "played" => 4,
        "failed" => 5,
        _ => 0,
    }
}

/// The batch's SQL with the schema filled in, prepared once per connection. The events go
/// through `COPY` and one `INSERT ... SELECT`; every projection takes one array per column
/// (`UNNEST`), so a batch is a fixed number of round trips whatever its size; rows that share
/// a key within the batch are folded in SQL first (`ON CONFLICT DO UPDATE` may touch a row
/// once).
#[derive(Debug)]
pub(super) struct Statements {
    copy: Statement,
    events: Statement,
    conversations: Statement,
    messages: Statement,
    statuses: Statement,
    pricing: Statement,
    engagement: Statement,
    leads: Statement,
}

/// The staging table's columns, in `COPY` order, with their types.
const STAGING_COLUMNS: &str =
    "ord, id, platform, object, field, kind, account_id, occurred_at, received_at, endpoint, event";
const STAGING_TYPES: &[Type] = &[
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
];

impl Statements {
    pub(super) async fn prepare(
        client: &Client,
        schema: &str,
    ) -> Result<Statements, tokio_postgres::Error> {
        let s = |t: &str| t.replace("{s}", schema);
        Ok(Statements {
            copy: client
                .prepare(&format!(
                    "COPY {STAGING} ({STAGING_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await?,
            // In batch order, so that of two events with one id the first is kept.
            events: client.prepare(&s(&format!("INSERT INTO {{s}}.events
                 (id, platform, object, field, kind, account_id, occurred_at, received_at, endpoint, event)
                 SELECT id, platform, object, field, kind, account_id, occurred_at::timestamptz,
                        received_at::timestamptz, endpoint, event
                 FROM {STAGING} ORDER BY ord
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id"))).await?,
            conversations: client.prepare(&s("INSERT INTO {s}.conversations AS c
                 (platform, account_id, participant_id, participant_name, first_event_at, last_event_at)
                 SELECT platform, account, participant, max(name), min(at), max(at)
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]::timestamptz[])
                      AS t(platform, account, participant, name, at)
                 GROUP BY platform, account, participant
                 ON CONFLICT (platform, account_id, participant_id) DO UPDATE SET
                   participant_name = COALESCE(EXCLUDED.participant_name, c.participant_name),
                   first_event_at = LEAST(c.first_event_at, EXCLUDED.first_event_at),
                   last_event_at = GREATEST(c.last_event_at, EXCLUDED.last_event_at)")).await?,
            messages: client.prepare(&s("INSERT INTO {s}.messages AS m
                 (id, platform, account_id, participant_id, direction, type, text, reply_to, sent_at, event_id,
                  payload, referral)
                 SELECT DISTINCT ON (id) id, platform, account, participant, direction, type, text, reply_to, at,
                        event_id, payload, referral
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::text[], $9::text[]::timestamptz[], $10::text[], $11::text[], $12::text[]::jsonb[])
                      WITH ORDINALITY
                      AS t(id, platform, account, participant, direction, type, text, reply_to, at, event_id,
                           payload, referral, ord)
                 ORDER BY id, ord
                 ON CONFLICT (id) DO UPDATE SET
                   participant_id = COALESCE(m.participant_id, EXCLUDED.participant_id),
                   type = COALESCE(m.type, EXCLUDED.type),
                   text = COALESCE(m.text, EXCLUDED.text),
                   reply_to = COALESCE(m.reply_to, EXCLUDED.reply_to),
                   sent_at = COALESCE(m.sent_at, EXCLUDED.sent_at),
                   payload = COALESCE(m.payload, EXCLUDED.payload),
                   referral = COALESCE(m.referral, EXCLUDED.referral)")).await?,
            statuses: client.prepare(&s("INSERT INTO {s}.messages AS m
                 (id, platform, account_id, participant_id, direction, status, status_rank, status_at, errors, event_id)
                 SELECT DISTINCT ON (id) id, platform, account, participant, 'out', status, rank, at, errors, event_id
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                             $7::text[]::timestamptz[], $8::text[]::jsonb[], $9::text[])
                      AS t(id, platform, account, participant, status, rank, at, errors, event_id)
                 ORDER BY id, rank DESC
                 ON CONFLICT (id) DO UPDATE SET
                   status = EXCLUDED.status, status_rank = EXCLUDED.status_rank, status_at = EXCLUDED.status_at,
                   errors = COALESCE(EXCLUDED.errors, m.errors)
                 WHERE m.status_rank < EXCLUDED.status_rank")).await?,
            // Runs after `statuses`, so the row exists. Pricing and conversation belong to
            // the message, not to one status: whichever status carries them first fills them,
            // whatever its rank, and a later one never blanks them.
            pricing: client.prepare(&s("UPDATE {s}.messages AS m SET
                   pricing_category = COALESCE(m.pricing_category, t.category),
                   pricing_billable = COALESCE(m.pricing_billable, t.billable),
                   pricing_model = COALESCE(m.pricing_model, t.model),
                   conversation_id = COALESCE(m.conversation_id, t.conversation),
                   conversation_origin = COALESCE(m.conversation_origin, t.origin),
                   conversation_expires_at = COALESCE(m.conversation_expires_at, t.expires_at)
                 FROM (SELECT id, max(category) AS category, bool_or(billable) AS billable, max(model) AS model,
                              max(conversation) AS conversation, max(origin) AS origin,
                              max(expires_at) AS expires_at
                       FROM UNNEST($1::text[], $2::text[], $3::text[]::boolean[], $4::text[], $5::text[],
                                   $6::text[], $7::text[]::timestamptz[])
                            AS u(id, category, billable, model, conversation, origin, expires_at)
                       GROUP BY id) AS t
                 WHERE m.id = t.id")).await?,
            engagement: client.prepare(&s("INSERT INTO {s}.engagement
                 (event_id, platform, kind, account_id, participant_id, target_id, text, occurred_at,
                  participant_name, media_id)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                      $7::text[], $8::text[]::timestamptz[], $9::text[], $10::text[])
                 ON CONFLICT (event_id) DO NOTHING")).await?,
            leads: client.prepare(&s("INSERT INTO {s}.leads
                 (leadgen_id, account_id, form_id, ad_id, adgroup_id, page_id, created_time, event_id)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                      $7::text[]::timestamptz[], $8::text[])
                 ON CONFLICT (leadgen_id) DO NOTHING")).await?,
        })
    }
}

/// Columns of one projection, filled event by event.
struct Columns<const N: usize> {
    text: [Vec<Option<String>>; N],
}

impl<const N: usize> Columns<N> {
    fn new() -> Self {
        Columns {
            text: std::array::from_fn(|_| Vec::new()),
        }
    }

    fn push(&mut self, row: [Option<&str>; N]) {
        for (column, value) in self.text.iter_mut().zip(row) {
            column.push(value.map(str::to_owned));
        }
    }

    fn is_empty(&self) -> bool {
        self.text[0].is_empty()
    }
}

/// An event's JSON as a `jsonb` value in binary form (format version 1, then the text): the
/// spooled bytes are sent as they are, not parsed and serialized again here.
#[derive(Debug)]
struct Jsonb<'a>(&'a [u8]);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// One transaction: every event through the staging table, then the projections of those
/// that were new. Only events newly inserted are projected, so a redelivered event cannot
/// move anything (its status included).
pub(super) async fn upsert(
    session: &mut Session,
    batch: &[Spooled],
    events: &[Event],
) -> Result<(), tokio_postgres::Error> {
    let sql = &session.statements;
    let txn = session.client.transaction().await?;
    let sink = txn.copy_in(&sql.copy).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, STAGING_TYPES));
    for ((ord, event), spooled) in (0i32..).zip(events).zip(batch) {
        writer
            .as_mut()
            .write(&[
                &ord,
                &event.id,
                &event.platform.as_str(),
                &event.object,
                &event.field,
                &event.kind.as_str(),
                &event.account_id,
                &event.occurred_at,
                &event.received_at,
                &event.endpoint,
                &Jsonb(&spooled.json),
            ])
            .await?;
    }
    writer.finish().await?;
    let inserted = txn.query(&sql.events, &[]).await?;
    let new: std::collections::HashSet<String> =
        inserted.iter().map(|row| row.get::<_, String>(0)).collect();

    let mut conversations = Columns::<5>::new();
    let mut messages = Columns::<12>::new();
    let mut statuses = Columns::<8>::new();
    let mut ranks: Vec<i32> = Vec::new();
    let mut pricing = Columns::<7>::new();
    let mut engagement = Columns::<10>::new();
    let mut leads = Columns::<8>::new();
    let mut seen = std::collections::HashSet::new();
    for event in events
        .iter()
        .filter(|e| new.contains(&e.id) && seen.insert(e.id.as_str()))
    {
        let platform = Some(event.platform.as_str());
        let account = Some(event.account_id.as_deref().unwrap_or(""));
        let participant = event
            .conversation
            .as_ref()
            .and_then(|c| c.participant.as_ref());
        let participant_id = participant.and_then(|p| p.id.as_deref());
        let at = event
            .occurred_at
            .as_deref()
            .or(Some(event.received_at.as_str()));
        if participant_id.is_some() {
            conversations.push([
                platform,
                account,
                participant_id,
                participant.and_then(|p| p.name.as_deref()),
                at,
            ]);
        }
        let body = event.message.as_ref();
        match event.kind {
            Kind::Message | Kind::Echo => {
                if let Some(id) = body.and_then(|m| m.id.as_deref()) {
                    let direction = if event.kind == Kind::Echo {
                        "out"
                    } else {
                        "in"
                    };
                    let referral = event
                        .referral
                        .as_ref()
                        .and_then(|r| serde_json::to_string(r).ok());
                    messages.push([
                        Some(id),
                        platform,
                        account,
                        participant_id,
                        Some(direction),
                        body.map(|m| m.kind.as_str()),
                        body.and_then(|m| m.text.as_deref()),
                        body.and_then(|m| m.reply_to.as_deref()),
                        at,
                        Some(&event.id),
                        body.and_then(|m| m.payload.as_deref()),
                        referral.as_deref(),
                    ]);
                }
            }
            Kind::Status => {
                if let (Some(id), Some(value)) =
                    (body.and_then(|m| m.id.as_deref()), event.status.as_ref())
                {
                    let errors = (!value.errors.is_empty())
                        .then(|| serde_json::to_string(&value.errors).unwrap_or_default());
                    statuses.push([
                        Some(id),
                        platform,
                        account,
                        participant_id,
                        Some(&value.value),
                        at,
                        errors.as_deref(),
                        Some(&event.id),
                    ]);
                    ranks.push(status_rank(&value.value));
                    if value.pricing.is_some() || value.conversation.is_some() {
                        let price = value.pricing.as_ref();
                        let billable = price.and_then(|p| p.billable).map(|b| b.to_string());
                        let talk = value.conversation.as_ref();
                        pricing.push([
                            Some(id),
                            price.and_then(|p| p.category.as_deref()),
                            billable.as_deref(),
                            price.and_then(|p| p.model.as_deref()),
                            talk.and_then(|c| c.id.as_deref()),
                            talk.and_then(|c| c.origin.as_deref()),
                            talk.and_then(|c| c.expires_at.as_deref()),
                        ]);
                    }
                }
            }
            Kind::Comment
            | Kind::Mention
            | Kind::Reaction
            | Kind::Rating
            | Kind::Lead
            | Kind::Optin
            | Kind::Optout
            | Kind::Preference
            | Kind::LiveComment => {
                engagement.push([
                    Some(&event.id),
                    platform,
                    Some(event.kind.as_str()),
                    account,
                    participant_id,
                    body.and_then(|m| m.reply_to.as_deref().or(m.id.as_deref())),
                    body.and_then(|m| m.text.as_deref()),
                    at,
                    participant.and_then(|p| p.name.as_deref()),
                    event.media.as_ref().and_then(|m| m.id.as_deref()),
                ]);
                if let Some(lead) = event
                    .lead
                    .as_ref()
                    .filter(|l| event.kind == Kind::Lead && l.leadgen_id.is_some())
                {
                    leads.push([
                        lead.leadgen_id.as_deref(),
                        account,
                        lead.form_id.as_deref(),
                        lead.ad_id.as_deref(),
                        lead.adgroup_id.as_deref(),
                        lead.page_id.as_deref(),
                        lead.created_time.as_deref(),
                        Some(&event.id),
                    ]);
                }
            }
            _ => {}
        }
    }
    if !conversations.is_empty() {
        let c = &conversations.text;
        txn.execute(&sql.conversations, &[&c[0], &c[1], &c[2], &c[3], &c[4]])
            .await?;
    }
    if !messages.is_empty() {
        let m = &messages.text;
        txn.execute(
            &sql.messages,
            &[
                &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &m[6], &m[7], &m[8], &m[9], &m[10],
                &m[11],
            ],
        )
        .await?;
    }
    if !statuses.is_empty() {
        let s = &statuses.text;
        txn.execute(
            &sql.statuses,
            &[
                &s[0], &s[1], &s[2], &s[3], &s[4], &ranks, &s[5], &s[6], &s[7],
            ],
        )
        .await?;
    }
    if !pricing.is_empty() {
        let p = &pricing.text;
        txn.execute(
            &sql.pricing,
            &[&p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6]],
        )
        .await?;
    }
    if !engagement.is_empty() {
        let e = &engagement.text;
        txn.execute(
            &sql.engagement,
            &[
                &e[0], &e[1], &e[2], &e[3], &e[4], &e[5], &e[6], &e[7], &e[8], &e[9],
            ],
        )
        .await?;
    }
    if !leads.is_empty() {
        let l = &leads.text;
        txn.execute(
            &sql.leads,
            &[&l[0], &l[1], &l[2], &l[3], &l[4], &l[5], &l[6], &l[7]],
        )
        .await?;
    }
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        let order: Vec<i32> = ["sent", "delivered", "read", "played", "failed"]
            .iter()
            .map(|s| status_rank(s))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(status_rank("deleted"), 0);
    }
}
