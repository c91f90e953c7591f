//! Enrichment: data added to normalized events after Meta's request was answered and
//! before the sinks see them, so it never delays Meta (whose retries a slow answer would
//! trigger) and never stops delivery: an event that cannot be enriched goes on as it is,
//! and is counted.
//!
//! One enricher today, Lead Ads ([`lead_ads`]): a `leadgen` event carries only ids; the
//! answers come from `GET /{leadgen-id}` with the Page's token. The normalization stage
//! ([`crate::normalizer`]) calls [`Enricher::enrich`] on each request's events after the
//! 200 and before they are appended for the sinks. Direct mode has no such stage (its
//! events are delivered before the 200), so `enrichment` needs `delivery.mode: spool`. An
//! [`Enricher`] is built from the `enrichment` configuration key and registers its own
//! metrics.

pub mod lead_ads;

pub use metahook_config::enrich::{EnrichmentConfig, LeadAdsConfig, PageTokenConfig};
use prometheus::{IntCounterVec, Opts};

use self::lead_ads::{LeadAds, LeadError};
use crate::event::{EnrichmentOutcome, Event, Kind, LeadEnrichment};

/// Records on a lead what its enrichment did.
fn mark(event: &mut Event, outcome: EnrichmentOutcome, reason: Option<String>) {
    if let Some(lead) = event.lead.as_mut() {
        lead.enrichment = Some(LeadEnrichment { outcome, reason });
    }
}
use crate::metrics::Metrics;

/// The normalization stage's hook (crate::normalizer): the records whose events it wants
/// pass here after normalization, off the stage's thread, before they are appended for
/// the sinks.
impl crate::normalizer::Enrich for Enricher {
    fn wants(&self, events: &[Event]) -> bool {
        self.lead_ads.is_some() && events.iter().any(is_lead)
    }

    fn enrich<'a>(&'a self, events: &'a mut [Event]) -> crate::normalizer::BoxFuture<'a, ()> {
        Box::pin(Enricher::enrich(self, events))
    }

    fn give_up(&self, events: &mut [Event], reason: &str) {
        for event in events.iter_mut().filter(|e| is_lead(e)) {
            mark(event, EnrichmentOutcome::Failed, Some(reason.to_owned()));
            self.total.with_label_values(&["failed"]).inc();
        }
    }

    fn concurrency(&self) -> usize {
        self.lead_ads.as_ref().map_or(1, LeadAds::concurrency)
    }
}

/// A Lead Ads event (the only kind an enricher completes today).
fn is_lead(event: &Event) -> bool {
    event.kind == Kind::Lead && event.lead.is_some()
}

/// Every `result` of `metahook_enrichment_total`, so each series exists from the start.
pub const RESULTS: [&str; 3] = ["enriched", "failed", "no_token"];

/// Why an enricher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The HTTP client could not be made.
    #[error("enrichment.lead_ads: cannot build the HTTP client: {0}")]
    Client(String),
    /// The metric could not be registered.
    #[error("enrichment: cannot register metahook_enrichment_total: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The configured enrichers and their counter.
#[derive(Debug)]
pub struct Enricher {
    lead_ads: Option<LeadAds>,
    /// `metahook_enrichment_total{result}`.
    total: IntCounterVec,
}

impl Enricher {
    /// Builds the enrichers `config` turns on (a lead's token is proved with the app secret
    /// of its endpoint, one of `endpoints`) and registers
    /// `metahook_enrichment_total{result}` in `metrics`. `config` was validated with the
    /// rest of the configuration.
    pub fn new(
        config: &EnrichmentConfig,
        endpoints: &[metahook_config::EndpointConfig],
        metrics: &Metrics,
    ) -> Result<Enricher, EnrichError> {
        let total = IntCounterVec::new(
            Opts::new(
                "metahook_enrichment_total",
                "Events an enricher handled, by result: enriched, failed (delivered without the data), no_token (no token for the Page).",
            ),
            &["result"],
        )?;
        for result in RESULTS {
            total.with_label_values(&[result]);
        }
        metrics.register(Box::new(total.clone()))?;
        let lead_ads = config
            .lead_ads
            .as_ref()
            .map(|lead_ads| LeadAds::new(lead_ads, endpoints))
            .transpose()
            .map_err(|e| EnrichError::Client(e.to_string()))?;
        Ok(Enricher { lead_ads, total })
    }

    /// Whether any enricher is on (the delivery path may skip the call otherwise).
    pub fn is_enabled(&self) -> bool {
        self.lead_ads.is_some()
    }

    /// Enriches the events it can, concurrently, each within the enricher's own bound
    /// (attempts × timeout plus backoff). Never fails: an event that cannot be enriched is
    /// left as it was, logged and counted.
    pub async fn enrich(&self, events: &mut [Event]) {
        let Some(lead_ads) = &self.lead_ads else {
            return;
        };
        let leads = events.iter_mut().filter(|event| is_lead(event));
        let work = leads.map(|event| async move {
            if event
                .lead
                .as_ref()
                .is_some_and(|lead| lead.leadgen_id.is_none())
            {
                mark(event, EnrichmentOutcome::Skipped, Some("the webhook carries no leadgen_id".to_owned()));
                return;
            }
            let result = lead_ads.enrich(event).await;
            let label = match &result {
                Ok(()) => "enriched",
                Err(LeadError::NoToken { .. }) => "no_token",
                Err(_) => "failed",
            };
            match result {
                Ok(()) => mark(event, EnrichmentOutcome::Ok, None),
                Err(error) => {
                    tracing::warn!(event = %event.id, error = %error, "lead not enriched; delivered without its answers");
                    let outcome = match error {
                        LeadError::NoToken { .. } => EnrichmentOutcome::Skipped,
                        _ => EnrichmentOutcome::Failed,
                    };
                    mark(event, outcome, Some(error.to_string()));
                }
            }
            self.total.with_label_values(&[label]).inc();
        });
        futures_util::future::join_all(work).await;
    }
}
