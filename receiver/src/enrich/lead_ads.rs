//! Lead Ads enrichment: `GET /{leadgen-id}?fields=field_data,created_time,ad_id,form_id,campaign_id`
//! with the Page's token (leads_retrieval), retried with backoff within a bound when the
//! Graph API answers 5xx, a rate limit (codes 4, 17, 32, 613) or nothing.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use metahook_backoff::{ExponentialBackoff, InvalidBackoff};
use metahook_config::EndpointConfig;
use metahook_config::enrich::LeadAdsConfig;
use serde::Deserialize;

use crate::event::{Event, LeadAnswer};
use crate::secrets::SecretSource;

/// The fields asked for by default: what `leads_retrieval` and `pages_manage_ads` allow
/// (Meta's "Retrieving Leads" guide).
pub const FIELDS: &str = "field_data,created_time,form_id";

/// The fields `ad_fields: true` adds: reading them also needs `ads_management` and
/// advertiser access to the ad account.
pub const AD_FIELDS: &str = "ad_id,campaign_id";

/// Meta's platform rate-limit error codes (Business Use Case limits, LeadGen's 80005
/// among them, are 80001 to 80014).
const RATE_LIMIT_CODES: [i64; 5] = [4, 17, 32, 341, 613];

/// Whether Meta's error code is a rate limit.
fn is_rate_limit(code: i64) -> bool {
    RATE_LIMIT_CODES.contains(&code) || (80_001..=80_014).contains(&code)
}

/// Why a lead was not enriched.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    /// No token is configured for the lead's Page.
    #[error("no Page token configured for Page {page}")]
    NoToken {
        /// The Page id (or `unknown`).
        page: String,
    },
    /// The token could not be read.
    #[error("Page {page}'s token: {message}")]
    Token {
        /// The Page.
        page: String,
        /// Why.
        message: String,
    },
    /// The Graph API refused or failed (after the retries).
    #[error("GET /{leadgen_id}: {message}")]
    Graph {
        /// The lead.
        leadgen_id: String,
        /// Meta's message (with code and fbtrace_id) or the transport error.
        message: String,
    },
}

/// A Page's token and whether it is sent with its `appsecret_proof`.
#[derive(Debug)]
struct PageToken {
    source: SecretSource,
    proof: bool,
}

/// The Lead Ads enricher.
#[derive(Debug)]
pub struct LeadAds {
    http: reqwest::Client,
    base: String,
    tokens: BTreeMap<String, PageToken>,
    /// Each endpoint's app secret, by endpoint name: a lead's token is proved with the
    /// secret of the app whose webhook brought it.
    app_secrets: BTreeMap<String, SecretSource>,
    max_attempts: u32,
    backoff: ExponentialBackoff,
    /// Leads fetched at once (`concurrency`).
    concurrency: usize,
    /// The `fields` of each request.
    fields: String,
}

/// Why the enricher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LeadAdsSetupError {
    /// The HTTP client.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// `retry_backoff` (validated with the configuration, so only a configuration built by
    /// hand gets here).
    #[error("retry_backoff: {0}")]
    Backoff(#[from] InvalidBackoff),
}

/// What `GET /{leadgen-id}` returns.
#[derive(Debug, Deserialize)]
struct GraphLead {
    #[serde(default)]
    created_time: Option<String>,
    #[serde(default)]
    ad_id: Option<String>,
    #[serde(default)]
    form_id: Option<String>,
    #[serde(default)]
    campaign_id: Option<String>,
    #[serde(default)]
    field_data: Vec<LeadAnswer>,
}

/// One failed attempt: whether another may succeed.
struct Attempt {
    message: String,
    transient: bool,
}

impl LeadAds {
    /// Builds the enricher (the HTTP client, the token sources, the endpoints' app secrets
    /// that prove the tokens).
    pub fn new(
        config: &LeadAdsConfig,
        endpoints: &[EndpointConfig],
    ) -> Result<LeadAds, LeadAdsSetupError> {
        let backoff = config.backoff()?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("metahook-receiver/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tokens = config
            .page_tokens
            .iter()
            .filter_map(|page| {
                let source = match (&page.token_file, &page.token_env) {
                    (Some(file), _) => SecretSource::File(file.clone()),
                    (None, Some(var)) => SecretSource::Env {
                        var: var.clone(),
                        default: None,
                    },
                    (None, None) => return None,
                };
                let token = PageToken {
                    source,
                    proof: page.appsecret_proof,
                };
                Some((page.page_id.clone(), token))
            })
            .collect();
        let app_secrets = endpoints
            .iter()
            .filter_map(|endpoint| {
                SecretSource::from_config(
                    endpoint.app_secret_file.as_ref(),
                    endpoint.app_secret_env.as_ref(),
                )
                .map(|source| (endpoint.name.clone(), source))
            })
            .collect();
        Ok(LeadAds {
            http,
            base: format!(
                "{}/{}",
                config.graph_url.trim_end_matches('/'),
                config.api_version.trim_matches('/')
            ),
            tokens,
            app_secrets,
            max_attempts: config.max_attempts,
            concurrency: config.concurrency,
            fields: if config.ad_fields {
                format!("{FIELDS},{AD_FIELDS}")
            } else {
                FIELDS.to_owned()
            },
            backoff,
        })
    }

    /// Leads fetched at once, off the normalization stage's thread.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Adds the lead's answers (and the ids the webhook lacked) to a `leadgen` event.
    pub async fn enrich(&self, event: &mut Event) -> Result<(), LeadError> {
        let Some(lead) = event.lead.as_ref() else {
            return Ok(());
        };
        let Some(leadgen_id) = lead.leadgen_id.clone() else {
            return Ok(());
        };
        let page = lead
            .page_id
            .clone()
            .or_else(|| event.account_id.clone())
            .unwrap_or_else(|| "unknown".to_owned());
        let page_token = self
            .tokens
            .get(&page)
            .ok_or_else(|| LeadError::NoToken { page: page.clone() })?;
        // Read at each use: a rotated Secret file takes effect at once.
        let token = page_token
            .source
            .read()
            .map_err(|e| LeadError::Token {
                page: page.clone(),
                message: e.to_string(),
            })
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| LeadError::Token {
                    page: page.clone(),
                    message: "not UTF-8".to_owned(),
                })
            })?;
        let token = token.trim();
        let proof = if page_token.proof {
            Some(self.proof(&event.endpoint, &page, token)?)
        } else {
            None
        };
        let fetched = self.fetch(&leadgen_id, token, proof.as_deref()).await?;
        if let Some(lead) = event.lead.as_mut() {
            lead.field_data = Some(fetched.field_data);
            lead.campaign_id = fetched.campaign_id.or(lead.campaign_id.take());
            if lead.ad_id.is_none() {
                lead.ad_id = fetched.ad_id;
            }
            if lead.form_id.is_none() {
                lead.form_id = fetched.form_id;
            }
            if lead.created_time.is_none() {
                lead.created_time = fetched.created_time.as_deref().and_then(graph_time);
            }
        }
        Ok(())
    }

    /// The token's `appsecret_proof`, made with the app secret of the endpoint the lead
    /// arrived on (read at each use, like the token).
    fn proof(&self, endpoint: &str, page: &str, token: &str) -> Result<String, LeadError> {
        let failed = |message: String| LeadError::Token {
            page: page.to_owned(),
            message,
        };
        let secret = self
            .app_secrets
            .get(endpoint)
            .ok_or_else(|| {
                failed(format!(
                    "endpoint {endpoint} has no app secret to make its appsecret_proof with \
                     (appsecret_proof: false for a token of another app)"
                ))
            })?
            .read()
            .map_err(|e| failed(format!("the app secret of endpoint {endpoint}: {e}")))?;
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(token.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    async fn fetch(
        &self,
        leadgen_id: &str,
        token: &str,
        proof: Option<&str>,
    ) -> Result<GraphLead, LeadError> {
        let mut attempt = 1;
        loop {
            match self.once(leadgen_id, token, proof).await {
                Ok(lead) => return Ok(lead),
                Err(failure) if failure.transient && attempt < self.max_attempts => {
                    let wait = self.backoff.delay(attempt);
                    tracing::debug!(leadgen_id, error = %failure.message, attempt, retry_in = ?wait, "lead fetch failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(failure) => {
                    return Err(LeadError::Graph {
                        leadgen_id: leadgen_id.to_owned(),
                        message: format!("{} (attempt {attempt})", failure.message),
                    });
                }
            }
        }
    }

    async fn once(
        &self,
        leadgen_id: &str,
        token: &str,
        proof: Option<&str>,
    ) -> Result<GraphLead, Attempt> {
        let url = format!("{}/{leadgen_id}?fields={}", self.base, self.fields);
        let mut request = self.http.get(url).bearer_auth(token);
        if let Some(proof) = proof {
            request = request.query(&[("appsecret_proof", proof)]);
        }
        let response = request.send().await.map_err(|e| Attempt {
            message: transport_message(&e.without_url()),
            transient: true,
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Attempt {
            message: transport_message(&e.without_url()),
            transient: true,
        })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| Attempt {
                message: format!("the answer is not a lead: {e}"),
                transient: false,
            });
        }
        let (message, code) = meta_error(&body);
        Err(Attempt {
            message: format!("HTTP {}: {message}", status.as_u16()),
            transient: status.is_server_error()
                || status.as_u16() == 429
                || code.is_some_and(|c| is_rate_limit(c) || c == 1 || c == 2),
        })
    }
}

/// Meta's `{"error": {message, type, code, error_subcode, fbtrace_id}}` as one line, and
/// its code.
fn meta_error(body: &[u8]) -> (String, Option<i64>) {
    #[derive(Deserialize)]
    struct Envelope {
        error: MetaError,
    }
    #[derive(Deserialize)]
    struct MetaError {
        #[serde(default)]
        message: String,
        #[serde(default)]
        code: Option<i64>,
        #[serde(default)]
        fbtrace_id: Option<String>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => {
            let mut text = error.message;
            if let Some(code) = error.code {
                text.push_str(&format!(" (code {code}"));
                if let Some(trace) = &error.fbtrace_id {
                    text.push_str(&format!(", fbtrace_id {trace}"));
                }
                text.push(')');
            }
            (text, error.code)
        }
        Err(_) => (
            format!(
                "not a Graph API error object: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            None,
        ),
    }
}

fn transport_message(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // reqwest names the URL; a graph_url with credentials is shown without them.
    crate::redact::redact_url(&text)
}

/// The Graph API's `2026-11-30T10:00:00+0000` as RFC 3339.
fn graph_time(text: &str) -> Option<String> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory][offset_minute]"
    );
    let at = time::OffsetDateTime::parse(text, format).ok()?;
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_retry_policy_doubles_retry_backoff() {
        let mut config = LeadAdsConfig::new(Vec::new());
        let backoff = config.backoff().expect("the defaults are valid");
        let waits: Vec<Duration> = (1..=3).map(|n| backoff.delay(n)).collect();
        assert_eq!(waits, [500, 1_000, 2_000].map(Duration::from_millis));
        config.retry_backoff = Duration::ZERO;
        assert!(config.backoff().is_err(), "0 would retry at once");
    }

    #[test]
    fn graph_times_become_rfc3339() {
        assert_eq!(
            graph_time("2026-11-30T10:00:00+0000").as_deref(),
            Some("2026-11-30T10:00:00Z")
        );
        assert_eq!(
            graph_time("2026-11-30T12:00:00+0200").as_deref(),
            Some("2026-11-30T10:00:00Z")
        );
        assert_eq!(graph_time("yesterday"), None);
    }

    #[test]
    fn meta_errors_read_as_one_line() {
        let (text, code) = meta_error(
            br#"{"error":{"message":"(#613) Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613,"fbtrace_id":"Xy"}}"#,
        );
        assert_eq!(
            text,
            "(#613) Calls to this api have exceeded the rate limit. (code 613, fbtrace_id Xy)"
        );
        assert_eq!(code, Some(613));
    }
}
