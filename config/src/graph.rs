//! The Graph API version both programs call: the operator's registration
//! (`--graph-api-version`, chart value `operator.graph.apiVersion`) and the receiver's Lead
//! Ads enrichment (`enrichment.lead_ads.api_version`) default to this one constant, so they
//! cannot drift apart (Meta's versions differ in fields and errors). v26.0 is the newest as
//! of 2026-07-29; Meta serves each version about two years.

/// The Graph API version called unless configured otherwise.
pub const GRAPH_API_VERSION: &str = "v26.0";
