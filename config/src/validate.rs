//! What serde cannot check: uniqueness, one source per secret, path syntax, limits that
//! contradict each other. Pure: no file is read here (files are read when used).

use std::collections::HashSet;

use crate::delivery::DeliveryMode;
use crate::document::Config;
use crate::endpoint::RESERVED_PATHS;
use crate::error::{ConfigError, invalid};
use crate::objects;
use crate::tls::TlsMode;

impl Config {
    /// Checks what serde cannot: uniqueness, one source per secret, path syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid("endpoints", "at least one endpoint is required"));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |k: &str| format!("endpoints[{i}].{k}");
            if endpoint.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(endpoint.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used by another endpoint", endpoint.name),
                ));
            }
            let path = endpoint.path.as_str();
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(invalid(
                    key("path"),
                    format!("{path:?} must start with '/' and hold no '?', '#' or spaces"),
                ));
            }
            if RESERVED_PATHS.contains(&path) {
                return Err(invalid(
                    key("path"),
                    format!("{path} is served by the receiver itself"),
                ));
            }
            if !paths.insert(path) {
                return Err(invalid(
                    key("path"),
                    format!("{path} is used by another endpoint"),
                ));
            }
            exactly_one(
                &key("app_secret_file"),
                &key("app_secret_env"),
                &endpoint.app_secret_file,
                &endpoint.app_secret_env,
                true,
            )?;
            exactly_one(
                &key("previous_app_secret_file"),
                &key("previous_app_secret_env"),
                &endpoint.previous_app_secret_file,
                &endpoint.previous_app_secret_env,
                false,
            )?;
            exactly_one(
                &key("verify_token_file"),
                &key("verify_token_env"),
                &endpoint.verify_token_file,
                &endpoint.verify_token_env,
                true,
            )?;
            if let Some(objects) = &endpoint.objects {
                if objects.is_empty() {
                    return Err(invalid(
                        key("objects"),
                        "an empty list accepts nothing; omit it to accept every object",
                    ));
                }
                for object in objects {
                    check_object(&key("objects"), object)?;
                }
            }
        }
        let mut sink_names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.name.trim().is_empty() || sink.name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    "must be non-empty, without '/' or spaces",
                ));
            }
            if !sink_names.insert(sink.name.as_str()) {
                return Err(invalid(
                    format!("sinks[{i}].name"),
                    format!("{:?} is used by another sink", sink.name),
                ));
            }
            sink.kind.validate(i)?;
            sink.retry
                .backoff()
                .map_err(|err| invalid(format!("sinks[{i}].retry.max_backoff"), err.to_string()))?;
        }
        if self.delivery.mode == DeliveryMode::Direct && self.sinks.is_empty() {
            return Err(invalid(
                "delivery.mode",
                "direct delivery needs at least one sink",
            ));
        }
        if self.spool.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if let Some(retention) = &self.spool.retention {
            if let Some((key, why)) = retention.problem(self.spool.segment_bytes) {
                return Err(invalid(format!("spool.retention{key}"), why));
            }
            if self.delivery.mode == DeliveryMode::Direct {
                return Err(invalid(
                    "spool.retention",
                    "needs delivery.mode: spool (direct delivery keeps no event log to replay)",
                ));
            }
        }
        if self.admin.is_some() && self.metrics_listen.is_none() {
            return Err(invalid(
                "admin",
                "the admin endpoints are served on metrics_listen only; set metrics_listen",
            ));
        }
        if self.spool.max_group_requests == 0 {
            return Err(invalid("spool.max_group_requests", "must be at least 1"));
        }
        if self.limits.max_in_flight == 0 {
            return Err(invalid("limits.max_in_flight", "must be at least 1"));
        }
        if self.limits.max_json_depth < 16 {
            return Err(invalid(
                "limits.max_json_depth",
                "must be at least 16 (Meta's payloads nest about 10 levels deep)",
            ));
        }
        self.validate_limits()?;
        self.validate_tls()?;
        if let Some(enrichment) = &self.enrichment {
            enrichment.validate()?;
            if self.delivery.mode == DeliveryMode::Direct {
                return Err(invalid(
                    "enrichment",
                    "needs delivery.mode: spool (direct mode delivers before the 200, and enrichment must never delay Meta's request)",
                ));
            }
        }
        // Port 0 picks a free port for each listener, so both may say 127.0.0.1:0.
        if self.metrics_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "metrics_listen",
                "must differ from listen (it is a second listener)",
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1"));
        }
        if limits.max_in_flight_per_peer == 0 {
            return Err(invalid(
                "limits.max_in_flight_per_peer",
                "must be at least 1",
            ));
        }
        if let Some(budget) = limits.max_buffered_body_bytes
            && budget < limits.max_body_bytes
        {
            return Err(invalid(
                "limits.max_buffered_body_bytes",
                format!(
                    "{budget} is less than limits.max_body_bytes ({}): a body of the largest \
                     size could never be read",
                    limits.max_body_bytes
                ),
            ));
        }
        if limits.max_queued_requests == Some(0) {
            return Err(invalid("limits.max_queued_requests", "must be at least 1"));
        }
        if limits.max_queued_bytes == Some(0) {
            return Err(invalid("limits.max_queued_bytes", "must be at least 1"));
        }
        if limits.body_timeout.is_zero() {
            return Err(invalid("limits.body_timeout", "must be more than 0"));
        }
        if limits.min_body_bytes_per_second == 0 {
            return Err(invalid(
                "limits.min_body_bytes_per_second",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls {
            if tls.mode == TlsMode::Mutual {
                if tls.client_ca_file.is_none() {
                    return Err(invalid(
                        "tls.client_ca_file",
                        "tls.mode: mutual needs the CA bundle client certificates chain to",
                    ));
                }
                if tls.allowed_client_names.is_empty() {
                    return Err(invalid(
                        "tls.allowed_client_names",
                        "tls.mode: mutual needs at least one accepted name",
                    ));
                }
                if self.trusted_proxy.is_some() {
                    return Err(invalid(
                        "trusted_proxy",
                        "choose one: tls.mode: mutual checks the certificate itself, \
                         trusted_proxy believes an ingress that checked it",
                    ));
                }
            }
            if tls.reload_interval.is_zero() {
                return Err(invalid("tls.reload_interval", "must be more than 0"));
            }
        }
        if let Some(proxy) = &self.trusted_proxy {
            if proxy.cidrs.is_empty() {
                return Err(invalid(
                    "trusted_proxy.cidrs",
                    "at least one address range is required",
                ));
            }
            if proxy.allowed_client_names.is_empty() {
                return Err(invalid(
                    "trusted_proxy.allowed_client_names",
                    "at least one accepted name is required",
                ));
            }
            for (key, header) in [
                ("trusted_proxy.verify_header", &proxy.verify_header),
                ("trusted_proxy.subject_header", &proxy.subject_header),
            ] {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(invalid(key, format!("{header:?} is not a header name")));
                }
            }
        }
        Ok(())
    }
}

/// An endpoint's `objects` item must be a Meta object name: a platform name there
/// (`whatsapp`) would make every item of that platform an `unknown` event.
fn check_object(key: &str, object: &str) -> Result<(), ConfigError> {
    if objects::is_documented_object(object) {
        return Ok(());
    }
    let suggestion = match object.to_ascii_lowercase().as_str() {
        "whatsapp" | "wa" | "waba" | "whatsapp_business" | "whatsapp_business_api" => {
            Some("whatsapp_business_account")
        }
        "facebook" | "fb" | "messenger" | "pages" | "facebook_page" | "facebook_pages" => {
            Some("page")
        }
        "ig" | "insta" | "instagram_messaging" | "instagram_direct" => Some("instagram"),
        "users" => Some("user"),
        "permission" => Some("permissions"),
        "app" | "applications" => Some("application"),
        lower if objects::is_documented_object(lower) => {
            // Meta's names are lowercase.
            objects::documented_objects()
                .into_iter()
                .find(|known| *known == lower)
        }
        _ => None,
    };
    let hint = match suggestion {
        Some(name) => format!("; did you mean `{name}`?"),
        None => String::new(),
    };
    Err(invalid(
        key,
        format!(
            "`{object}` is not a Meta webhook object{hint} (Meta's objects: {})",
            objects::documented_objects().join(", ")
        ),
    ))
}

fn exactly_one<A, B>(
    key_a: &str,
    key_b: &str,
    a: &Option<A>,
    b: &Option<B>,
    required: bool,
) -> Result<(), ConfigError> {
    match (a.is_some(), b.is_some()) {
        (true, true) => Err(invalid(
            key_a,
            format!("set either {key_a} or {key_b}, not both"),
        )),
        (false, false) if required => Err(invalid(
            key_a,
            format!("one of {key_a} or {key_b} is required"),
        )),
        _ => Ok(()),
    }
}
