//! What a subscription may reach, decided by the operator's settings and not by whoever
//! may create a WebhookSubscription: the receiver images it may run, the annotations it
//! may put on its Ingress, the hosts it may point a Meta app at, and the Secrets it may
//! reference. Pure checks, no I/O: the controller's policy step calls them before a pass
//! writes anything, and each refusal names what is wrong and who can change it.
//!
//! A list entry ending in `*` matches by prefix (`registry.example.com/metahook-receiver:*`,
//! `cert-manager.io/*`); a callback host entry starting with `*.` matches any subdomain.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::status::Refusal;

/// The label a namespace admin puts on a Secret a subscription may reference; the
/// operator reads the values of no other Secret (`kubectl label secret NAME
/// metahook.io/referenceable=true`). The operator's own Secrets carry it too, so its
/// metadata-only Secret watch (selected by this label) sees them.
pub const REFERENCEABLE_LABEL: &str = "metahook.io/referenceable";

/// `Ready` reason: `spec.receiver.image` is outside `--allowed-receiver-image`.
pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
/// `Ready` reason: a key of `spec.ingress.annotations` is not allowed.
pub const ANNOTATION_NOT_ALLOWED: &str = "AnnotationNotAllowed";
/// `Ready` reason: `spec.registration.callbackURL` is not https or its host is outside
/// `--allowed-callback-host`.
pub const CALLBACK_NOT_ALLOWED: &str = "CallbackNotAllowed";
/// `Ready` reason: another object is in the subscription's way (here: an Ingress of the
/// namespace that serves the same host).
pub const CONFLICT: &str = "Conflict";

/// The ingress annotations a spec may set unless the operator is told otherwise: each
/// only tunes or restricts the route to the receiver. cert-manager's two obtain the
/// publicly trusted certificate Meta needs for `tlsSecretName`; `proxy-body-size` lets
/// Meta's batches (up to the receiver's 4 MiB) past ingress-nginx's 1 MiB default;
/// `proxy-read-timeout` covers a slow durable write; `limit-connections` and `limit-rps`
/// only refuse clients (docs/security.md recommends them). None of them can route another
/// host, run configuration, authenticate on the receiver's behalf or reach another
/// namespace.
pub const DEFAULT_INGRESS_ANNOTATIONS: &[&str] = &[
    "cert-manager.io/cluster-issuer",
    "cert-manager.io/issuer",
    "nginx.ingress.kubernetes.io/proxy-body-size",
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/limit-connections",
    "nginx.ingress.kubernetes.io/limit-rps",
];

/// The operator's allowlists (its flags; see the chart's `operator.*` values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `--allowed-receiver-image`: images a spec may name besides the operator's own
    /// `--receiver-image`, which is always allowed.
    pub receiver_images: Vec<String>,
    /// `--allowed-ingress-annotation`: annotation keys `spec.ingress.annotations` may set
    /// (never a `*snippet` key nor one the operator sets itself).
    pub ingress_annotations: Vec<String>,
    /// `--allowed-callback-host`: the hosts a registration's callback may name (empty:
    /// only the subscription's own `spec.ingress.host`).
    pub callback_hosts: Vec<String>,
}

impl Default for Policy {
    /// Only the operator's receiver image, the default annotations, and each
    /// subscription's own ingress host.
    fn default() -> Policy {
        Policy {
            receiver_images: Vec::new(),
            ingress_annotations: DEFAULT_INGRESS_ANNOTATIONS
                .iter()
                .map(|key| (*key).to_owned())
                .collect(),
            callback_hosts: Vec::new(),
        }
    }
}

impl Policy {
    /// The policy of these flag values: entries trimmed, empty ones dropped (so an empty
    /// flag or variable means an empty list).
    pub fn new(
        receiver_images: &[String],
        ingress_annotations: &[String],
        callback_hosts: &[String],
    ) -> Policy {
        let clean = |entries: &[String]| -> Vec<String> {
            entries
                .iter()
                .map(|entry| entry.trim().to_owned())
                .filter(|entry| !entry.is_empty())
                .collect()
        };
        Policy {
            receiver_images: clean(receiver_images),
            ingress_annotations: clean(ingress_annotations),
            callback_hosts: clean(callback_hosts)
                .into_iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Refuses a `spec.receiver.image` that is neither `default_image` (the operator's
    /// `--receiver-image`) nor on the list; no image in the spec means the default.
    pub fn check_image(&self, image: Option<&str>, default_image: &str) -> Result<(), Refusal> {
        let Some(image) = image.filter(|image| !image.is_empty()) else {
            return Ok(());
        };
        if image == default_image || self.receiver_images.iter().any(|p| matches(p, image)) {
            return Ok(());
        }
        let mut allowed = vec![default_image.to_owned()];
        allowed.extend(self.receiver_images.iter().cloned());
        Err(Refusal {
            reason: IMAGE_NOT_ALLOWED,
            message: format!(
                "spec.receiver.image {image} is not allowed: the operator runs only {} \
                 (--allowed-receiver-image, chart value operator.allowedReceiverImages); \
                 remove spec.receiver.image or ask the operator's administrators to allow it",
                allowed.join(", ")
            ),
        })
    }

    /// Refuses the first `spec.ingress.annotations` key (in key order) that is a snippet,
    /// one the operator sets itself (`reserved`: its TLS and client-certificate
    /// annotations), or not on the list.
    pub fn check_ingress_annotations<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a String>,
        reserved: &BTreeSet<&str>,
    ) -> Result<(), Refusal> {
        for key in keys {
            let why = if key.to_ascii_lowercase().ends_with("snippet") {
                "snippet annotations inject ingress configuration and are never allowed".to_owned()
            } else if reserved.contains(key.as_str()) {
                "the operator sets it itself (TLS and client-certificate settings cannot be \
                 overridden)"
                    .to_owned()
            } else if self.ingress_annotations.iter().any(|p| matches(p, key)) {
                continue;
            } else {
                format!(
                    "it is not on the operator's list ({}; --allowed-ingress-annotation, chart \
                     value operator.ingress.allowedAnnotations)",
                    if self.ingress_annotations.is_empty() {
                        "empty".to_owned()
                    } else {
                        self.ingress_annotations.join(", ")
                    }
                )
            };
            return Err(Refusal {
                reason: ANNOTATION_NOT_ALLOWED,
                message: format!("spec.ingress.annotations key {key} is not allowed: {why}"),
            });
        }
        Ok(())
    }

    /// Refuses a `spec.registration.callbackURL` that is not an https URL, or whose host is
    /// not on the list. With no list, the subscription's own `spec.ingress.host` is
    /// allowed (and only it); with a list, that host must be on it too — the spec names
    /// `spec.ingress.host` itself, so it alone proves nothing about who serves the host.
    pub fn check_callback(&self, url: &str, ingress_host: Option<&str>) -> Result<(), Refusal> {
        let refuse = |why: String| Refusal {
            reason: CALLBACK_NOT_ALLOWED,
            message: format!("spec.registration.callbackURL {why}"),
        };
        let parsed =
            reqwest::Url::parse(url).map_err(|err| refuse(format!("is not a URL ({err})")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| refuse("has no host".to_owned()))?
            .to_ascii_lowercase();
        if parsed.scheme() != "https" {
            return Err(refuse(format!(
                "must be https (Meta calls only https callbacks), not {}",
                parsed.scheme()
            )));
        }
        let own = self.callback_hosts.is_empty()
            && ingress_host.is_some_and(|own| own.eq_ignore_ascii_case(&host));
        let listed = |entry: &String| host_matches(entry, &host);
        if own || self.callback_hosts.iter().any(listed) {
            return Ok(());
        }
        let allowed = if self.callback_hosts.is_empty() {
            match ingress_host {
                Some(own) => format!(
                    "the subscription's own spec.ingress.host {own}, as no \
                     --allowed-callback-host is set"
                ),
                None => "the subscription's own spec.ingress.host, and it has none (no \
                         --allowed-callback-host is set)"
                    .to_owned(),
            }
        } else {
            format!(
                "hosts on --allowed-callback-host (chart value \
                 operator.registration.allowedCallbackHosts): {}",
                self.callback_hosts.join(", ")
            )
        };
        Err(refuse(format!(
            "host {host} is not allowed: the operator registers only {allowed}"
        )))
    }
}

/// Does an allowlist entry match `value`: equal, or a prefix when it ends in `*`?
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// Does a callback host entry match `host`: equal, or for `*.example.com` any host
/// below example.com (not example.com itself)?
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern == host,
    }
}

/// Why a Secret named in a spec may not be read for it, if it may not.
///
/// It must carry [`REFERENCEABLE_LABEL`] `"true"`. A Secret the operator made
/// (`app.kubernetes.io/managed-by: metahook-operator`) carries it for the watch's sake,
/// but is referenceable only by the subscription that owns it: the namespace CA (owned by
/// none) and another subscription's verify token or certificate are not.
pub fn not_referenceable(secret: &Secret, subscription_uid: Option<&str>) -> Option<String> {
    let name = secret.name_any();
    let labels = secret.labels();
    if labels.get(REFERENCEABLE_LABEL).map(String::as_str) != Some("true") {
        return Some(format!(
            "it is not marked referenceable: a namespace admin marks it with \
             `kubectl label secret {name} {REFERENCEABLE_LABEL}=true`"
        ));
    }
    let operators = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(crate::FIELD_MANAGER);
    let owned = secret.owner_references().iter().any(|owner| {
        owner.controller == Some(true) && Some(owner.uid.as_str()) == subscription_uid
    });
    if operators && !owned {
        return Some(
            "the operator made it for another subscription or for the namespace (only its \
             owner may reference it)"
                .to_owned(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &[
                "registry.example.com/metahook-receiver:*".to_owned(),
                "other:1".to_owned(),
            ],
            &[
                "cert-manager.io/cluster-issuer".to_owned(),
                "example.com/*".to_owned(),
                "nginx.ingress.kubernetes.io/configuration-snippet".to_owned(),
                "nginx.ingress.kubernetes.io/ssl-redirect".to_owned(),
            ],
            &[
                "hooks.example.com".to_owned(),
                "*.Apps.Example.org".to_owned(),
                " ".to_owned(),
            ],
        )
    }

    #[test]
    fn images_by_name_and_prefix_and_the_default_always() {
        let p = policy();
        assert_eq!(p.check_image(None, "metahook-receiver:1"), Ok(()));
        assert_eq!(p.check_image(Some(""), "metahook-receiver:1"), Ok(()));
        assert_eq!(
            p.check_image(Some("metahook-receiver:1"), "metahook-receiver:1"),
            Ok(())
        );
        assert_eq!(
            p.check_image(Some("registry.example.com/metahook-receiver:2.0"), "d"),
            Ok(())
        );
        assert_eq!(p.check_image(Some("other:1"), "d"), Ok(()));
        let refused = p.check_image(Some("evil/reader:latest"), "metahook-receiver:1");
        assert_eq!(
            refused.map_err(|r| (r.reason, r.message)),
            Err((
                IMAGE_NOT_ALLOWED,
                "spec.receiver.image evil/reader:latest is not allowed: the operator runs only \
                 metahook-receiver:1, registry.example.com/metahook-receiver:*, other:1 \
                 (--allowed-receiver-image, chart value operator.allowedReceiverImages); remove \
                 spec.receiver.image or ask the operator's administrators to allow it"
                    .to_owned()
            ))
        );
        // A prefix is a prefix: another repository with the same start is not allowed.
        assert!(p.check_image(Some("other:10"), "d").is_err());
        assert!(
            p.check_image(Some("registry.example.com/metahook-receiver-evil:1"), "d")
                .is_err()
        );
    }

    #[test]
    fn annotations_snippets_and_the_operators_own_are_never_allowed() {
        let p = policy();
        let reserved = BTreeSet::from(["nginx.ingress.kubernetes.io/ssl-redirect"]);
        let check = |key: &str| {
            p.check_ingress_annotations([&key.to_owned()], &reserved)
                .map_err(|r| (r.reason, r.message))
        };
        assert_eq!(check("cert-manager.io/cluster-issuer"), Ok(()));
        assert_eq!(check("example.com/anything"), Ok(()));
        let snippet = check("nginx.ingress.kubernetes.io/configuration-snippet");
        assert_eq!(
            snippet,
            Err((
                ANNOTATION_NOT_ALLOWED,
                "spec.ingress.annotations key nginx.ingress.kubernetes.io/configuration-snippet \
                 is not allowed: snippet annotations inject ingress configuration and are never \
                 allowed"
                    .to_owned()
            ))
        );
        assert!(check("example.com/server-snippet").is_err());
        assert!(check("example.com/Server-Snippet").is_err());
        let own = check("nginx.ingress.kubernetes.io/ssl-redirect");
        assert!(
            own.as_ref()
                .is_err_and(|(_, m)| m.contains("the operator sets it itself"))
        );
        let other = check("nginx.ingress.kubernetes.io/auth-url");
        assert_eq!(
            other,
            Err((
                ANNOTATION_NOT_ALLOWED,
                "spec.ingress.annotations key nginx.ingress.kubernetes.io/auth-url is not \
                 allowed: it is not on the operator's list (cert-manager.io/cluster-issuer, \
                 example.com/*, nginx.ingress.kubernetes.io/configuration-snippet, \
                 nginx.ingress.kubernetes.io/ssl-redirect; --allowed-ingress-annotation, chart \
                 value operator.ingress.allowedAnnotations)"
                    .to_owned()
            ))
        );
        let none = Policy::new(&[], &[], &[]);
        assert!(
            none.check_ingress_annotations([&"cert-manager.io/issuer".to_owned()], &reserved)
                .is_err_and(|r| r.message.contains("(empty;"))
        );
    }

    #[test]
    fn the_defaults_are_the_documented_set() {
        let p = Policy::default();
        let reserved = BTreeSet::new();
        for key in DEFAULT_INGRESS_ANNOTATIONS {
            assert_eq!(
                p.check_ingress_annotations([&(*key).to_owned()], &reserved),
                Ok(())
            );
        }
        assert!(p.receiver_images.is_empty() && p.callback_hosts.is_empty());
    }

    #[test]
    fn callbacks_by_host_wildcard_and_the_own_ingress_host() {
        let p = policy();
        let check = |url: &str, own: Option<&str>| {
            p.check_callback(url, own)
                .map_err(|r| (r.reason, r.message))
        };
        assert_eq!(
            check("https://hooks.example.com/webhooks/whatsapp", None),
            Ok(())
        );
        assert_eq!(check("https://HOOKS.example.com:8443/x", None), Ok(()));
        assert_eq!(check("https://a.apps.example.org/x", None), Ok(()));
        assert_eq!(check("https://a.b.apps.example.org/x", None), Ok(()));
        // With a list, the spec's own ingress host is not enough: the spec names it.
        assert!(check("https://own.example.net/x", Some("own.example.net")).is_err());
        // The wildcard is for subdomains only; the domain itself and look-alikes are not.
        assert!(check("https://apps.example.org/x", None).is_err());
        assert!(check("https://evilapps.example.org/x", None).is_err());
        // User info does not make a host.
        assert_eq!(
            check(
                "https://hooks.example.com@evil.example.net/x",
                Some("own.example.net")
            ),
            Err((
                CALLBACK_NOT_ALLOWED,
                "spec.registration.callbackURL host evil.example.net is not allowed: the \
                 operator registers only hosts on --allowed-callback-host (chart value \
                 operator.registration.allowedCallbackHosts): hooks.example.com, \
                 *.apps.example.org"
                    .to_owned()
            ))
        );
        assert!(
            check("http://hooks.example.com/x", None).is_err_and(|(reason, m)| reason
                == CALLBACK_NOT_ALLOWED
                && m.contains("must be https"))
        );
        // No list: only the subscription's own ingress host.
        let none = Policy::new(&[], &[], &[]);
        assert!(
            none.check_callback("https://x.example.com/", None)
                .is_err_and(|r| r.message.contains("and it has none"))
        );
        assert_eq!(
            none.check_callback("https://own.example.net/x", Some("own.example.net")),
            Ok(())
        );
        assert_eq!(
            none.check_callback("https://evil.example.net/x", Some("own.example.net"))
                .map_err(|r| r.message),
            Err(
                "spec.registration.callbackURL host evil.example.net is not allowed: the \
                 operator registers only the subscription's own spec.ingress.host \
                 own.example.net, as no --allowed-callback-host is set"
                    .to_owned()
            )
        );
    }

    fn labeled(labels: &[(&str, &str)], owner: Option<&str>) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "db-creds",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
                "ownerReferences": owner.map(|uid| vec![serde_json::json!({
                    "apiVersion": "metahook.io/v1alpha1", "kind": "WebhookSubscription",
                    "name": "wa", "uid": uid, "controller": true,
                })]).unwrap_or_default(),
            }
        }))
        .expect("a Secret")
    }

    #[test]
    fn only_marked_secrets_and_the_operators_own_by_their_owner_are_referenceable() {
        let unmarked = not_referenceable(&labeled(&[], None), Some("u1"));
        assert_eq!(
            unmarked.as_deref(),
            Some(
                "it is not marked referenceable: a namespace admin marks it with `kubectl label \
                 secret db-creds metahook.io/referenceable=true`"
            )
        );
        let wrong_value = labeled(&[(REFERENCEABLE_LABEL, "yes")], None);
        assert!(not_referenceable(&wrong_value, Some("u1")).is_some());
        assert_eq!(
            not_referenceable(&labeled(&[(REFERENCEABLE_LABEL, "true")], None), Some("u1")),
            None
        );
        let operators = [
            (REFERENCEABLE_LABEL, "true"),
            ("app.kubernetes.io/managed-by", "metahook-operator"),
        ];
        assert_eq!(
            not_referenceable(&labeled(&operators, Some("u1")), Some("u1")),
            None
        );
        assert!(not_referenceable(&labeled(&operators, Some("u2")), Some("u1")).is_some());
        assert!(not_referenceable(&labeled(&operators, None), Some("u1")).is_some());
    }
}
