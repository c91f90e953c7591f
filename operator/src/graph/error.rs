//! A failed Graph API call: Meta's error object, and which failures are worth a retry.

use std::fmt;

use serde::Deserialize;

/// Meta's platform error codes that mean "too many calls": 4 (app), 17 (user), 32 (page),
/// 613 (custom rate limit), 341 (application limit). Business Use Case limits use 80001
/// to 80014 ([`BUC_RATE_LIMIT_CODES`]).
pub const RATE_LIMIT_CODES: [i64; 5] = [4, 17, 32, 341, 613];

/// Meta's Business Use Case rate-limit codes: 80001 (Pages), 80002 (Instagram), 80004 (Ads
/// Management), 80005 (LeadGen), 80006 (Messenger), 80007/80008 (WhatsApp Business
/// Management), ... up to 80014; they come with `X-Business-Use-Case-Usage`.
pub const BUC_RATE_LIMIT_CODES: std::ops::RangeInclusive<i64> = 80_001..=80_014;

/// A failed Graph API call: Meta's error object when it sent one, else what went wrong
/// on the way (connect error, timeout, a body that is not Meta's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// The call, e.g. `POST /123/subscriptions`.
    pub call: String,
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    /// Meta's `error.message`, or the transport error.
    pub message: String,
    /// The rest of Meta's error object, when it sent one (boxed: errors stay small).
    pub meta: Option<Box<MetaErrorFields>>,
    /// How long Meta says the caller is throttled (`estimated_time_to_regain_access` of
    /// `X-Business-Use-Case-Usage`), when it said.
    pub regain_access: Option<std::time::Duration>,
}

/// Meta's error object beyond its message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaErrorFields {
    /// `error.type` (e.g. `OAuthException`).
    pub kind: Option<String>,
    /// `error.code`.
    pub code: Option<i64>,
    /// `error.error_subcode`.
    pub subcode: Option<i64>,
    /// `error.fbtrace_id`, which Meta's support asks for.
    pub fbtrace_id: Option<String>,
}

impl fmt::Display for GraphError {
    /// Everything, `fbtrace_id` included: for logs and Events.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

/// [`GraphError::for_status`].
struct WithoutTrace<'a>(&'a GraphError);

impl fmt::Display for WithoutTrace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f, false)
    }
}

impl GraphError {
    fn write(&self, f: &mut fmt::Formatter<'_>, trace: bool) -> fmt::Result {
        write!(f, "{}: ", self.call)?;
        if let Some(status) = self.status {
            write!(f, "HTTP {status}: ")?;
        }
        write!(f, "{}", self.message)?;
        let mut details = Vec::new();
        if let Some(meta) = &self.meta {
            if let Some(kind) = &meta.kind {
                details.push(format!("type {kind}"));
            }
            if let Some(code) = meta.code {
                details.push(format!("code {code}"));
            }
            if let Some(subcode) = meta.subcode {
                details.push(format!("subcode {subcode}"));
            }
            if let Some(id) = meta.fbtrace_id.as_ref().filter(|_| trace) {
                details.push(format!("fbtrace_id {id}"));
            }
        }
        if let Some(wait) = self.regain_access {
            details.push(format!(
                "Meta's estimated_time_to_regain_access {} min",
                wait.as_secs().div_ceil(60)
            ));
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

impl GraphError {
    /// The error as a Kubernetes status says it: all but `fbtrace_id`, which is unique per
    /// request. A status that changed with every failed call would be rewritten by every
    /// failed pass; the trace id stays in the log line and the Event of the failure.
    pub fn for_status(&self) -> String {
        WithoutTrace(self).to_string()
    }

    /// An error that is not Meta's error object.
    pub fn transport(call: impl Into<String>, message: impl Into<String>) -> GraphError {
        GraphError {
            call: call.into(),
            status: None,
            message: message.into(),
            meta: None,
            regain_access: None,
        }
    }

    /// Meta's `error.code`.
    pub fn code(&self) -> Option<i64> {
        self.meta.as_ref().and_then(|m| m.code)
    }

    /// Meta's `error.fbtrace_id`.
    pub fn fbtrace_id(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.fbtrace_id.as_deref())
    }

    /// Is it a rate limit (codes 4, 17, 32, 341, 613, a Business Use Case code 80001 to
    /// 80014, HTTP 429, or an announced time to regain access)?
    pub fn is_rate_limit(&self) -> bool {
        self.code().is_some_and(|code| {
            RATE_LIMIT_CODES.contains(&code) || BUC_RATE_LIMIT_CODES.contains(&code)
        }) || self.status == Some(429)
            || self.regain_access.is_some()
    }

    /// Did Meta refuse the access token (code 190: expired, subcode 463; the user changed
    /// their password, 460; revoked or invalid, 467 and others)? Only a new token helps.
    pub fn is_token_rejected(&self) -> bool {
        self.code() == Some(190)
    }

    /// Is a retry likely to succeed: no response at all, a 5xx, a rate limit, or Meta's
    /// "unknown error" / "service temporarily unavailable" (codes 1, 2)?
    pub fn is_transient(&self) -> bool {
        self.status.is_none()
            || self.status.is_some_and(|status| status >= 500)
            || self.is_rate_limit()
            || matches!(self.code(), Some(1 | 2))
    }

    /// Parses a non-2xx answer: Meta's `{"error": {...}}`, or the raw body when it is not.
    pub fn from_response(call: &str, status: u16, body: &[u8]) -> GraphError {
        #[derive(Deserialize)]
        struct Envelope {
            error: MetaError,
        }
        #[derive(Deserialize)]
        struct MetaError {
            #[serde(default)]
            message: Option<String>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            code: Option<i64>,
            #[serde(default)]
            error_subcode: Option<i64>,
            #[serde(default)]
            fbtrace_id: Option<String>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => GraphError {
                call: call.to_owned(),
                status: Some(status),
                message: error
                    .message
                    .unwrap_or_else(|| "(Meta's error carries no message)".to_owned()),
                meta: Some(Box::new(MetaErrorFields {
                    kind: error.kind,
                    code: error.code,
                    subcode: error.error_subcode,
                    fbtrace_id: error.fbtrace_id,
                })),
                regain_access: None,
            },
            Err(_) => GraphError {
                call: call.to_owned(),
                status: Some(status),
                message: format!(
                    "not a Graph API error object: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                meta: None,
                regain_access: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_error_objects_are_parsed_and_classified() {
        let body = br#"{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","code":4,"error_subcode":2446079,"fbtrace_id":"AbCdEf"}}"#;
        let error = GraphError::from_response("POST /1/subscriptions", 400, body);
        assert_eq!(error.code(), Some(4));
        assert_eq!(error.meta.as_ref().and_then(|m| m.subcode), Some(2446079));
        assert_eq!(error.fbtrace_id(), Some("AbCdEf"));
        assert!(error.is_rate_limit() && error.is_transient());
        assert_eq!(
            error.to_string(),
            "POST /1/subscriptions: HTTP 400: (#4) Application request limit reached (type OAuthException, code 4, subcode 2446079, fbtrace_id AbCdEf)"
        );
        let bad_token = GraphError::from_response(
            "GET /1/subscriptions",
            400,
            br#"{"error":{"message":"Invalid OAuth access token.","type":"OAuthException","code":190}}"#,
        );
        assert!(!bad_token.is_transient());
        let html = GraphError::from_response("GET /x", 502, b"<html>bad gateway</html>");
        assert!(html.is_transient());
        assert!(html.message.contains("not a Graph API error object"));
    }
}
