//! One error type for the operator; each variant is a `reason` label of
//! `metahook_operator_reconcile_errors_total`.

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done, e.g. `apply Deployment acme/wa`.
        context: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The receiver configuration built from the spec is not valid.
    #[error("receiver configuration: {0}")]
    Config(#[from] metahook_config::ConfigError),
    /// A certificate could not be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The object lacks what the API server always sets (namespace, uid).
    #[error("object {0}")]
    Incomplete(String),
    /// A Graph API call failed (registration with Meta; see
    /// [`crate::controller::registration`]).
    #[error("Graph API: {0}")]
    Graph(#[from] crate::graph::GraphError),
    /// An object the pass would write, at a name the subscription manages, is not the
    /// subscription's, or a field of it is managed by someone else (see
    /// [`crate::ownership`]). The pass ends as a refusal (`Ready` False, reason
    /// `Conflict`), not as a failure.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Serializing an object failed.
    #[error("serializing {context}: {source}")]
    Serialize {
        /// What.
        context: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The `reason` label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Config(_) => "config",
            Error::Certificate(_) => "certificate",
            Error::Incomplete(_) => "incomplete_object",
            Error::Graph(_) => "graph_api",
            Error::Conflict(_) => "conflict",
            Error::Serialize { .. } => "serialize",
        }
    }

    /// Every `reason` label, so each series exists from the start.
    pub const METRIC_LABELS: [&'static str; 7] = [
        "kube_api",
        "config",
        "certificate",
        "incomplete_object",
        "graph_api",
        "conflict",
        "serialize",
    ];

    /// Wraps a client error with what was being done.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
