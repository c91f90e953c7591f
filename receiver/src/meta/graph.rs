//! App-level Graph objects: `user`, `permissions`, `application`, `payments`, `ad_account`,
//! ... Their changes are reported as `kind: change`, typed only as far as the envelope.

use serde::{Deserialize, Serialize};

use super::lenient::Id;

/// Objects an app can subscribe to besides WhatsApp, Page and Instagram (app/subscriptions).
pub use metahook_config::objects::GRAPH_OBJECTS as OBJECTS;

/// `permissions` value: a permission was granted or revoked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PermissionValue {
    /// `granted` or `revoked`.
    #[serde(default)]
    pub verb: Option<String>,
    /// Objects the permission is scoped to.
    #[serde(default)]
    pub target_ids: Vec<Id>,
}
