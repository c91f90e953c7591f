//! Meta's rate-limit headers: how much of a limit a call used, and when a throttled caller
//! may come back.
//!
//! - `X-App-Usage` (calls with the app token, platform limits): `{"call_count": 28,
//!   "total_cputime": 25, "total_time": 25}`, each a percentage of the app's limit.
//! - `X-Business-Use-Case-Usage` (Page, Instagram, WhatsApp, LeadGen calls with Page or
//!   system-user tokens): `{"<business-object-id>": [{"type": "pages", "call_count": 100,
//!   "total_cputime": 10, "total_time": 10, "estimated_time_to_regain_access": 30}]}`, the
//!   last in minutes. Its windows are an hour to a day: a throttled caller waits the
//!   announced time instead of retrying in seconds (META_WEBHOOKS.md §9).

use std::time::Duration;

use serde_json::Value;

/// The usage one answer reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// The app's usage (`X-App-Usage`): the highest of its percentages.
    pub app_percent: Option<f64>,
    /// Each business object's usage (`X-Business-Use-Case-Usage`): its id, the use case's
    /// type (`pages`, `instagram`, `whatsapp_business_management`, ...) and the highest of its
    /// percentages.
    pub business: Vec<BusinessUsage>,
    /// The longest `estimated_time_to_regain_access` announced (absent or 0: none).
    pub regain_access: Option<Duration>,
}

/// One business object's usage of one use case.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessUsage {
    /// The business object (Page, Instagram account, WABA, ad account) id.
    pub id: String,
    /// The use case, e.g. `pages`.
    pub kind: String,
    /// The highest of `call_count`, `total_cputime` and `total_time`, in percent.
    pub percent: f64,
}

fn highest(entry: &Value) -> f64 {
    ["call_count", "total_cputime", "total_time"]
        .iter()
        .filter_map(|key| entry.get(*key).and_then(Value::as_f64))
        .fold(0.0, f64::max)
}

impl Usage {
    /// Reads the headers' JSON values (either may be absent or malformed: then it is
    /// simply not reported).
    pub fn parse(app_usage: Option<&str>, business_usage: Option<&str>) -> Usage {
        let mut usage = Usage::default();
        if let Some(app) = app_usage.and_then(|text| serde_json::from_str::<Value>(text).ok()) {
            usage.app_percent = Some(highest(&app));
        }
        let business = business_usage.and_then(|text| serde_json::from_str::<Value>(text).ok());
        if let Some(Value::Object(objects)) = business {
            for (id, entries) in objects {
                for entry in entries.as_array().into_iter().flatten() {
                    usage.business.push(BusinessUsage {
                        id: id.clone(),
                        kind: entry
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown")
                            .to_owned(),
                        percent: highest(entry),
                    });
                    let minutes = entry
                        .get("estimated_time_to_regain_access")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if minutes > 0 {
                        let wait = Duration::from_secs(minutes.saturating_mul(60));
                        usage.regain_access =
                            Some(usage.regain_access.map_or(wait, |w| w.max(wait)));
                    }
                }
            }
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_headers_as_meta_sends_them() {
        let usage = Usage::parse(
            Some(r#"{"call_count":28,"total_cputime":25,"total_time":91}"#),
            Some(
                r#"{"1111":[{"type":"pages","call_count":100,"total_cputime":10,"total_time":10,"estimated_time_to_regain_access":30}],"2222":[{"type":"instagram","call_count":5,"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}]}"#,
            ),
        );
        assert_eq!(usage.app_percent, Some(91.0));
        assert_eq!(
            usage.business,
            [
                BusinessUsage {
                    id: "1111".into(),
                    kind: "pages".into(),
                    percent: 100.0
                },
                BusinessUsage {
                    id: "2222".into(),
                    kind: "instagram".into(),
                    percent: 5.0
                },
            ]
        );
        assert_eq!(usage.regain_access, Some(Duration::from_secs(30 * 60)));
        assert_eq!(Usage::parse(Some("not json"), None), Usage::default());
    }
}
