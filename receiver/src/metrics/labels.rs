//! Label values the components hand to [`super::events`], as closed enums defined here so
//! the metrics depend on no component: a component names the label, the metrics only count.

/// Why a client was refused; the `reason` label of `metahook_tls_client_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No client certificate (or the proxy says none was presented).
    NoCertificate,
    /// The certificate does not chain to a trusted CA, or its signature is bad.
    Untrusted,
    /// The certificate chains, but neither its CN nor a DNS SAN is an allowed name.
    NameMismatch,
    /// The certificate (or one in its chain) is outside its validity period.
    Expired,
    /// Verdict headers (or a webhook request at all) from a peer outside
    /// `trusted_proxy.cidrs`: the request did not come through the ingress that checks
    /// certificates.
    UntrustedProxy,
}

impl Rejection {
    /// Every reason, so each series exists (at 0) from the start.
    pub const ALL: [Rejection; 5] = [
        Rejection::NoCertificate,
        Rejection::Untrusted,
        Rejection::NameMismatch,
        Rejection::Expired,
        Rejection::UntrustedProxy,
    ];

    /// The metric label value.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::NoCertificate => "no_certificate",
            Rejection::Untrusted => "untrusted",
            Rejection::NameMismatch => "name_mismatch",
            Rejection::Expired => "expired",
            Rejection::UntrustedProxy => "untrusted_proxy",
        }
    }
}
