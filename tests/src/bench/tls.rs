//! The TLS runs: one CA generated with rcgen for the whole bench issues the receiver's
//! serving certificate (for 127.0.0.1) and a client certificate with Meta's name. Each run
//! writes them into its own directory and adds a `tls:` section to the receiver's
//! configuration; the load generator connects with rustls, presenting the client
//! certificate in the mTLS run. Connections are keep-alive, so the handshakes happen in the
//! warm-up and the figures measure the per-request cost of TLS records.

use std::path::Path;

use anyhow::{Context, Result};

use super::client::Transport;
use crate::pki::{self, Ca, Leaf, META_CLIENT_NAME, Validity, Versions};

/// The certificates of the TLS runs.
#[derive(Debug)]
pub struct BenchTls {
    ca: Ca,
    server: Leaf,
    client: Leaf,
}

impl BenchTls {
    /// Generates the CA and its two certificates.
    pub fn new() -> Result<Self> {
        let ca = Ca::new("metahook bench CA")?;
        let server = ca.server("metahook bench receiver")?;
        let client = ca.client(META_CLIENT_NAME, true, Validity::Current)?;
        Ok(Self { ca, server, client })
    }

    /// Writes the files into `dir` and returns the receiver's `tls:` section (mutual TLS
    /// with Meta's name when `mutual`, else server TLS). Paths are double-quoted scalars.
    pub fn config_section(&self, dir: &Path, mutual: bool) -> Result<String> {
        let (cert, key) = self.server.write(dir, "server")?;
        let ca = self.ca.write(&dir.join("client-ca.crt"))?;
        let quoted = |path: &Path| -> Result<String> {
            let text = path
                .to_str()
                .with_context(|| format!("path {} is not UTF-8", path.display()))?;
            Ok(serde_json::Value::from(text).to_string())
        };
        let mut section = format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            quoted(&cert)?,
            quoted(&key)?
        );
        if mutual {
            section.push_str(&format!(
                "  mode: mutual\n  client_ca_file: {}\n",
                quoted(&ca)?
            ));
        }
        Ok(section)
    }

    /// How the load generator connects: trusting the bench CA, with the client certificate
    /// when `with_certificate`.
    pub fn transport(&self, with_certificate: bool) -> Result<Transport> {
        let identity = with_certificate.then_some(&self.client);
        Ok(Transport::Tls(pki::client_config(
            &[self.ca.der()],
            identity,
            Versions::Both,
        )?))
    }
}
