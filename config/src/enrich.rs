//! The `enrichment` configuration key: which enrichers run, where the Graph API is, and
//! the Page tokens, read from files or the environment like the endpoints' secrets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use metahook_backoff::{ExponentialBackoff, InvalidBackoff};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

/// `enrichment`: optional stages that add data to events after Meta's request is answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// Fetch the answers of Lead Ads (`leadgen` events) from the Graph API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_ads: Option<LeadAdsConfig>,
}

/// `enrichment.lead_ads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadAdsConfig {
    /// The Graph API's base URL. Default `https://graph.facebook.com`.
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// The Graph API version. Default [`crate::GRAPH_API_VERSION`], the operator's too.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Timeout of one request. Default 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per lead when the Graph API answers 5xx, a rate limit or nothing (1–10).
    /// Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first wait between attempts, doubling. Default 500ms.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Also fetch `ad_id` and `campaign_id`, which need `ads_management` (and advertiser
    /// access to the ad account) beyond `leads_retrieval` and `pages_manage_ads`. Default
    /// false (the webhook carries `ad_id` anyway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ad_fields: bool,
    /// Leads fetched at once (1–256), off the normalization stage's thread: other requests
    /// are normalized and delivered meanwhile; with this many leads waiting, the stage
    /// waits for the first to finish. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A Page access token (with leads_retrieval) per Page whose leads are fetched.
    pub page_tokens: Vec<PageTokenConfig>,
}

/// One Page's token: from a file (re-read at each use, so a rotated Secret takes effect)
/// or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageTokenConfig {
    /// The Page id (`entry[].id` and `value.page_id` of its `leadgen` changes).
    pub page_id: String,
    /// A file holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Send `appsecret_proof` (hex HMAC-SHA256 of the token keyed with the app secret of the
    /// endpoint the lead arrived on) with each call, as Meta asks of servers (an app with
    /// "Require App Secret" on refuses a Page token without it). Turn off only for a token
    /// issued to another app than the endpoint's (Meta answers "Invalid appsecret_proof").
    /// Default true.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub appsecret_proof: bool,
}

fn default_true() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(value: &bool) -> bool {
    *value
}

fn default_graph_url() -> String {
    "https://graph.facebook.com".to_owned()
}
fn default_api_version() -> String {
    crate::GRAPH_API_VERSION.to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_concurrency() -> usize {
    16
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(500)
}

impl LeadAdsConfig {
    /// A configuration with the defaults and these tokens.
    pub fn new(page_tokens: Vec<PageTokenConfig>) -> LeadAdsConfig {
        LeadAdsConfig {
            graph_url: default_graph_url(),
            api_version: default_api_version(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            retry_backoff: default_retry_backoff(),
            ad_fields: false,
            concurrency: default_concurrency(),
            page_tokens,
        }
    }

    /// The enricher's retry policy: `retry_backoff` doubling, without jitter (each lead's
    /// retries are few and bounded by `max_attempts`). Refused when `retry_backoff` is 0;
    /// validation calls this, so a loaded configuration always has a policy.
    pub fn backoff(&self) -> Result<ExponentialBackoff, InvalidBackoff> {
        ExponentialBackoff::new(
            self.retry_backoff,
            self.retry_backoff.saturating_mul(1 << MAX_DOUBLINGS),
            0.0,
        )
    }
}

/// The doublings of `retry_backoff` before the waits stop growing (1,024 × `retry_backoff`;
/// `max_attempts` ≤ 10 stays below).
const MAX_DOUBLINGS: u32 = 10;

impl EnrichmentConfig {
    /// Checks the keys serde cannot, naming the bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(lead_ads) = &self.lead_ads else {
            return Ok(());
        };
        let key = |k: &str| format!("enrichment.lead_ads.{k}");
        let url = lead_ads.graph_url.as_str();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(['?', '#'])
        {
            return Err(invalid(
                key("graph_url"),
                format!(
                    "{:?} must be an http:// or https:// base URL without query",
                    crate::redact::redact_url(url)
                ),
            ));
        }
        let version = lead_ads.api_version.as_str();
        let well_formed = version
            .strip_prefix('v')
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && minor.bytes().all(|b| b.is_ascii_digit())
            });
        if !well_formed {
            return Err(invalid(
                key("api_version"),
                format!("{version:?} is not a Graph API version such as v26.0"),
            ));
        }
        lead_ads
            .backoff()
            .map_err(|err| invalid(key("retry_backoff"), err.to_string()))?;
        if lead_ads.timeout.is_zero() {
            return Err(invalid(key("timeout"), "must be more than 0"));
        }
        if !(1..=10).contains(&lead_ads.max_attempts) {
            return Err(invalid(key("max_attempts"), "must be between 1 and 10"));
        }
        if !(1..=256).contains(&lead_ads.concurrency) {
            return Err(invalid(key("concurrency"), "must be between 1 and 256"));
        }
        if lead_ads.page_tokens.is_empty() {
            return Err(invalid(
                key("page_tokens"),
                "at least one Page token is required (leads are fetched with their Page's token)",
            ));
        }
        let mut pages = HashSet::new();
        for (i, page) in lead_ads.page_tokens.iter().enumerate() {
            let key = |k: &str| format!("enrichment.lead_ads.page_tokens[{i}].{k}");
            if page.page_id.is_empty() || !page.page_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    key("page_id"),
                    format!("{:?} is not a numeric Page id", page.page_id),
                ));
            }
            if !pages.insert(page.page_id.as_str()) {
                return Err(invalid(
                    key("page_id"),
                    format!("Page {} has another token above", page.page_id),
                ));
            }
            match (&page.token_file, &page.token_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("token_file"),
                        "set either token_file or token_env, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        key("token_file"),
                        "one of token_file or token_env is required",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<(), ConfigError> {
        let config: EnrichmentConfig =
            serde_saphyr::from_str(yaml).map_err(|e| invalid("(parse)", e.to_string()))?;
        config.validate()
    }

    #[test]
    fn defaults_and_a_valid_configuration() {
        let config: EnrichmentConfig = serde_saphyr::from_str(
            "lead_ads:\n  page_tokens:\n    - page_id: '111'\n      token_file: /run/secrets/page\n",
        )
        .expect("parses");
        config.validate().expect("valid");
        let lead_ads = config.lead_ads.expect("lead_ads");
        assert_eq!(lead_ads.graph_url, "https://graph.facebook.com");
        assert_eq!(lead_ads.max_attempts, 3);
        assert_eq!(lead_ads.timeout, Duration::from_secs(5));
    }

    #[test]
    fn each_bad_key_is_named() {
        let cases = [
            (
                "lead_ads:\n  page_tokens: []\n",
                "enrichment.lead_ads.page_tokens",
            ),
            (
                "lead_ads:\n  api_version: '23'\n  page_tokens:\n    - {page_id: '1', token_env: T}\n",
                "enrichment.lead_ads.api_version",
            ),
            (
                "lead_ads:\n  graph_url: ftp://x\n  page_tokens:\n    - {page_id: '1', token_env: T}\n",
                "enrichment.lead_ads.graph_url",
            ),
            (
                "lead_ads:\n  max_attempts: 0\n  page_tokens:\n    - {page_id: '1', token_env: T}\n",
                "enrichment.lead_ads.max_attempts",
            ),
            (
                "lead_ads:\n  page_tokens:\n    - {page_id: 'x1', token_env: T}\n",
                "enrichment.lead_ads.page_tokens[0].page_id",
            ),
            (
                "lead_ads:\n  page_tokens:\n    - {page_id: '1', token_env: T}\n    - {page_id: '1', token_env: U}\n",
                "enrichment.lead_ads.page_tokens[1].page_id",
            ),
            (
                "lead_ads:\n  page_tokens:\n    - {page_id: '1'}\n",
                "enrichment.lead_ads.page_tokens[0].token_file",
            ),
            (
                "lead_ads:\n  concurrency: 0\n  page_tokens:\n    - {page_id: '1', token_env: T}\n",
                "enrichment.lead_ads.concurrency",
            ),
            (
                "lead_ads:\n  concurrency: 257\n  page_tokens:\n    - {page_id: '1', token_env: T}\n",
                "enrichment.lead_ads.concurrency",
            ),
            (
                "lead_ads:\n  page_tokens:\n    - {page_id: '1', token_env: T, token_file: /x}\n",
                "enrichment.lead_ads.page_tokens[0].token_file",
            ),
        ];
        for (yaml, wanted) in cases {
            match parse(yaml) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, wanted, "{yaml}"),
                other => panic!("{yaml}: expected an error naming {wanted}, got {other:?}"),
            }
        }
        assert!(
            parse("lead_ads:\n  tokens: []\n").is_err(),
            "unknown keys are refused"
        );
    }
}
