//! Meta's request and response shapes of the registration calls.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// One entry of `GET /{app-id}/subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppSubscription {
    /// The object, e.g. `page`.
    pub object: String,
    /// Where Meta sends the object's fields.
    #[serde(default)]
    pub callback_url: String,
    /// Whether Meta delivers.
    #[serde(default)]
    pub active: bool,
    /// The subscribed fields.
    #[serde(default)]
    pub fields: Vec<AppSubscriptionField>,
}

impl AppSubscription {
    /// The field names.
    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.name.clone()).collect()
    }
}

/// A subscribed field and its Graph API version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppSubscriptionField {
    /// The field.
    pub name: String,
    /// The version Meta formats it with.
    #[serde(default)]
    pub version: Option<String>,
}

/// `POST /{app-id}/subscriptions`: subscribes (or updates) the app to an object's fields.
/// Meta verifies `callback_url` with the verify token before it answers.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSubscribe {
    /// The object.
    pub object: String,
    /// The callback URL.
    pub callback_url: String,
    /// The fields to add.
    pub fields: Vec<String>,
    /// The verify token of Meta's verification GET.
    pub verify_token: String,
}

impl fmt::Debug for AppSubscribe {
    /// Everything but the verify token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSubscribe")
            .field("object", &self.object)
            .field("callback_url", &self.callback_url)
            .field("fields", &self.fields)
            .field("verify_token", &"redacted")
            .finish()
    }
}

/// An app installed on a Page, Instagram account or WhatsApp Business Account
/// (`GET /{id}/subscribed_apps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedApp {
    /// The app's id (`id` on Pages, `whatsapp_business_api_data.id` on WABAs).
    pub app_id: String,
    /// The fields the node delivers to the app (Pages and Instagram).
    pub subscribed_fields: Vec<String>,
    /// The WABA's callback override, when set.
    pub override_callback_uri: Option<String>,
}

impl SubscribedApp {
    /// Reads one entry of `data`, either shape.
    pub fn from_value(entry: &Value) -> Option<SubscribedApp> {
        let app_id = entry
            .get("whatsapp_business_api_data")
            .and_then(|data| data.get("id"))
            .or_else(|| entry.get("id"))
            .and_then(Value::as_str)?
            .to_owned();
        let subscribed_fields = entry
            .get("subscribed_fields")
            .and_then(Value::as_array)
            .map(|fields| {
                fields
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let override_callback_uri = entry
            .get("override_callback_uri")
            .and_then(Value::as_str)
            .filter(|uri| !uri.is_empty())
            .map(str::to_owned);
        Some(SubscribedApp {
            app_id,
            subscribed_fields,
            override_callback_uri,
        })
    }
}

/// `POST /{id}/subscribed_apps`.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeSubscribe {
    /// A Page or Instagram account: `subscribed_fields` (the whole set for this app).
    Fields(Vec<String>),
    /// A WhatsApp Business Account: with a callback override (Meta verifies it), or
    /// without one (which also removes an override that was set).
    Waba {
        /// The override and its verify token.
        override_callback: Option<(String, String)>,
    },
}

impl fmt::Debug for NodeSubscribe {
    /// Everything but an override's verify token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeSubscribe::Fields(fields) => f.debug_tuple("Fields").field(fields).finish(),
            NodeSubscribe::Waba { override_callback } => f
                .debug_struct("Waba")
                .field(
                    "override_callback",
                    &override_callback.as_ref().map(|(uri, _)| (uri, "redacted")),
                )
                .finish(),
        }
    }
}

/// A phone number's `webhook_configuration` (`GET /{phone-number-id}?fields=webhook_configuration`):
/// the callback Meta uses at each level of the override hierarchy, `None` where unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookConfiguration {
    /// The phone number's own override (`phone_number`), tried first.
    pub phone_number: Option<String>,
    /// The WABA's override (`whatsapp_business_account`).
    pub whatsapp_business_account: Option<String>,
    /// The app's callback (`application`).
    pub application: Option<String>,
}

impl WebhookConfiguration {
    /// Reads Meta's answer; an absent `webhook_configuration` or key, or an empty string,
    /// is an unset level.
    pub fn from_value(value: &Value) -> WebhookConfiguration {
        let config = value.get("webhook_configuration");
        let level = |key: &str| {
            config
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .filter(|uri| !uri.is_empty())
                .map(str::to_owned)
        };
        WebhookConfiguration {
            phone_number: level("phone_number"),
            whatsapp_business_account: level("whatsapp_business_account"),
            application: level("application"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_subscribed_apps_shapes_are_read() {
        let page = serde_json::json!({"id": "42", "name": "app", "subscribed_fields": ["feed", "leadgen"]});
        let waba = serde_json::json!({"whatsapp_business_api_data": {"id": "42", "name": "app"}, "override_callback_uri": "https://x/y"});
        assert_eq!(
            SubscribedApp::from_value(&page),
            Some(SubscribedApp {
                app_id: "42".into(),
                subscribed_fields: vec!["feed".into(), "leadgen".into()],
                override_callback_uri: None
            })
        );
        assert_eq!(
            SubscribedApp::from_value(&waba).and_then(|a| a.override_callback_uri),
            Some("https://x/y".into())
        );
    }

    #[test]
    fn a_phone_numbers_webhook_configuration_is_read_level_by_level() {
        let all = serde_json::json!({
            "webhook_configuration": {
                "phone_number": "https://phone.example/hook",
                "whatsapp_business_account": "https://waba.example/hook",
                "application": "https://app.example/hook",
            },
            "id": "106540352242922",
        });
        assert_eq!(
            WebhookConfiguration::from_value(&all),
            WebhookConfiguration {
                phone_number: Some("https://phone.example/hook".into()),
                whatsapp_business_account: Some("https://waba.example/hook".into()),
                application: Some("https://app.example/hook".into()),
            }
        );
        // Meta leaves out the levels that are unset; an empty string is unset too.
        let app_only = serde_json::json!({
            "webhook_configuration": {"application": "https://app.example/hook", "phone_number": ""},
            "id": "106540352242922",
        });
        assert_eq!(
            WebhookConfiguration::from_value(&app_only),
            WebhookConfiguration {
                application: Some("https://app.example/hook".into()),
                ..WebhookConfiguration::default()
            }
        );
        let none = serde_json::json!({"id": "106540352242922"});
        assert_eq!(
            WebhookConfiguration::from_value(&none),
            WebhookConfiguration::default()
        );
    }
}
