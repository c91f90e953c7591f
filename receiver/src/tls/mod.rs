//! HTTPS on the webhook listener (rustls, ring, TLS 1.3 and 1.2), the mTLS handshake
//! check, and reloading of the certificate, key and client CA files without a restart.
//!
//! # Reloading
//!
//! The live [`ServerConfig`] sits in an [`ArcSwap`]; each accepted connection takes the
//! current one for its handshake and keeps it, so swapping it changes new connections only
//! and never disturbs established ones. A background task ([`watch_files`]) reads the files
//! every `tls.reload_interval` and compares a SHA-256 of their content with what is in
//! force (content, not mtime: Kubernetes swaps Secret volumes by symlink, and a copy may
//! keep the mtime). A changed file that cannot be used (unreadable, not PEM, key not matching
//! the certificate) keeps the previous material in force, is logged as an error and counted
//! once in `metahook_tls_reload_errors_total{file}`; the certificate pair and the CA bundle
//! are tracked apart, so a bad CA file does not hold back a good new certificate.
//!
//! # Client certificates (`tls.mode: mutual`)
//!
//! rustls' WebPKI verifier checks the chain against `tls.client_ca_file` during the
//! handshake. A certificate that does not chain (`untrusted`) or is outside its validity
//! (`expired`) fails the handshake with a TLS alert; the failure is classified here, where
//! the peer address is known, counted in `metahook_tls_client_rejections_total` and logged.
//! Client authentication is offered but not required, and the names are checked per request
//! by [`crate::client_auth`]: see there for why.

mod material;
pub mod names;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use metahook_config::{TlsConfig, TlsMode};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ServerConfig};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use self::material::TlsError;
use self::material::{CA_KEY, CERT_KEY, KEY_KEY};
use crate::client_auth::{Peer, Rejection};
use crate::metrics::Metrics;
use crate::metrics::events::{CertificateInForce, ClientRefused, TlsReloadFailed};

/// SHA-256 of the bytes a piece of material was built from.
type Digest = [u8; 32];

/// Reads of changing files per check before giving up until the next one (see
/// `TlsServer::refresh`).
const MAX_READS: usize = 3;

/// One piece of material in force, with the content it came from and the content (or read
/// error) last refused, so a bad file is reported once rather than at every check.
#[derive(Debug)]
struct Tracked<T> {
    value: T,
    digest: Digest,
    refused: Option<String>,
}

/// What the live configuration was built from.
#[derive(Debug)]
struct Material {
    certificate: Tracked<Arc<CertifiedKey>>,
    client_ca: Option<Tracked<Arc<dyn ClientCertVerifier>>>,
}

/// The TLS side of the webhook listener: handshakes with the current configuration, and
/// reloads of the files behind it.
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<ServerConfig>,
    material: Mutex<Material>,
    metrics: Arc<Metrics>,
}

/// The ring provider: the one crypto backend the workspace builds (no aws-lc toolchain).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn digest(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(digest: &Digest) -> String {
    hex::encode(digest)
}

/// Reads and parses the certificate pair.
fn load_certificate(
    settings: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<Tracked<Arc<CertifiedKey>>, TlsError> {
    let cert = material::read(CERT_KEY, &settings.cert_file)?;
    let key = material::read(KEY_KEY, &settings.key_file)?;
    let certified = material::certified_key(
        (&settings.cert_file, &cert),
        (&settings.key_file, &key),
        provider,
    )?;
    Ok(Tracked {
        value: Arc::new(certified),
        digest: digest(&[&cert, &key]),
        refused: None,
    })
}

/// Reads and parses the client CA bundle at `path`.
fn load_client_ca(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Tracked<Arc<dyn ClientCertVerifier>>, TlsError> {
    let pem = material::read(CA_KEY, path)?;
    let verifier = material::client_verifier(path, &pem, provider)?;
    Ok(Tracked {
        value: verifier,
        digest: digest(&[&pem]),
        refused: None,
    })
}

/// The client CA file of `settings`, when client certificates are asked for.
fn client_ca_file(settings: &TlsConfig) -> Result<Option<&Path>, TlsError> {
    match (settings.mode, &settings.client_ca_file) {
        (TlsMode::Server, _) => Ok(None),
        (TlsMode::Mutual, Some(path)) => Ok(Some(path)),
        (TlsMode::Mutual, None) => Err(TlsError::Missing {
            key: CA_KEY,
            message: "tls.mode: mutual needs the CA bundle client certificates chain to",
        }),
    }
}

fn load_material(
    settings: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<(Material, ServerConfig), TlsError> {
    let certificate = load_certificate(settings, provider)?;
    let client_ca = client_ca_file(settings)?
        .map(|path| load_client_ca(path, provider))
        .transpose()?;
    let config = material::server_config(
        Arc::clone(&certificate.value),
        client_ca.as_ref().map(|ca| Arc::clone(&ca.value)),
        provider,
    )?;
    Ok((
        Material {
            certificate,
            client_ca,
        },
        config,
    ))
}

/// Reads every file of `settings` as a start would (for `check-config`).
pub fn check(settings: &TlsConfig) -> Result<(), TlsError> {
    load_material(settings, &provider()).map(|_| ())
}

/// How a handshake failure counts: the client's certificate was refused (`Some`), or the
/// failure is something else (a scanner, plain HTTP on the TLS port, a client that does not
/// trust our certificate): `None`, logged at debug only.
pub fn rejection(err: &std::io::Error) -> Option<Rejection> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => Some(Rejection::Expired),
        rustls::Error::InvalidCertificate(_) => Some(Rejection::Untrusted),
        _ => None,
    }
}

impl TlsServer {
    /// Loads the files of `settings`; any problem is an error naming the key and the file.
    pub fn load(settings: &TlsConfig, metrics: Arc<Metrics>) -> Result<TlsServer, TlsError> {
        let provider = provider();
        let (material, config) = load_material(settings, &provider)?;
        if let Err(err) = metrics.register_tls() {
            tracing::warn!(error = %err, "cannot register the TLS certificate expiry gauge");
        }
        let server = TlsServer {
            settings: settings.clone(),
            provider,
            current: ArcSwap::from_pointee(config),
            material: Mutex::new(material),
            metrics,
        };
        if let Ok(material) = server.material.lock() {
            server.note_certificate(&material.certificate.value, "serving certificate loaded");
        }
        Ok(server)
    }

    /// The TLS handshake on `stream` from `addr`, bounded by `timeout`. `None` when it
    /// failed (a refused client certificate is counted and logged here).
    pub async fn accept(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Option<(TlsStream<TcpStream>, Peer)> {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                match rejection(&err) {
                    Some(reason) => self.metrics.emit(ClientRefused {
                        reason,
                        peer: addr,
                        detail: &err,
                    }),
                    None => {
                        tracing::debug!(peer = %addr, error = %err, "TLS handshake failed");
                    }
                }
                return None;
            }
            Err(_) => {
                tracing::debug!(peer = %addr, timeout_ms = timeout.as_millis(), "TLS handshake timed out");
                return None;
            }
        };
        let client_names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(names::client_names);
        Some((stream, Peer { addr, client_names }))
    }

    /// Re-reads the files; swaps in a new configuration when something usable changed.
    /// Returns whether it did.
    pub fn reload(&self) -> bool {
        let mut guard = self.material.lock().unwrap_or_else(PoisonError::into_inner);
        let material = &mut *guard;
        let settings = &self.settings;
        let provider = &self.provider;
        let mut changed = self.refresh(
            &mut material.certificate,
            "certificate",
            || {
                let cert = material::read(CERT_KEY, &settings.cert_file)?;
                let key = material::read(KEY_KEY, &settings.key_file)?;
                Ok((digest(&[&cert, &key]), (cert, key)))
            },
            |(cert, key)| {
                material::certified_key(
                    (&settings.cert_file, cert),
                    (&settings.key_file, key),
                    provider,
                )
                .map(Arc::new)
            },
        );
        if changed {
            self.note_certificate(
                &material.certificate.value,
                "serving certificate changed on disk: new connections get it",
            );
        }
        if let (Some(tracked), Some(path)) = (
            material.client_ca.as_mut(),
            settings.client_ca_file.as_deref(),
        ) {
            let ca_changed = self.refresh(
                tracked,
                "client_ca",
                || {
                    let pem = material::read(CA_KEY, path)?;
                    Ok((digest(&[&pem]), pem))
                },
                |pem| material::client_verifier(path, pem, provider),
            );
            if ca_changed {
                tracing::info!(file = %path.display(), "client CA bundle changed on disk: new connections are verified against it");
            }
            changed |= ca_changed;
        }
        if !changed {
            return false;
        }
        match material::server_config(
            Arc::clone(&material.certificate.value),
            material.client_ca.as_ref().map(|ca| Arc::clone(&ca.value)),
            provider,
        ) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                true
            }
            Err(err) => {
                self.metrics.emit(TlsReloadFailed {
                    file: "certificate",
                    error: &err,
                    building: true,
                });
                false
            }
        }
    }

    /// Re-reads one piece of material: `read` gives the content's digest and bytes, `parse`
    /// turns them into the value. True when a new value is now in `tracked`.
    ///
    /// Content that does not parse is read once more before it is refused: the files may be
    /// in the middle of a replacement (a certificate read just before its key was swapped),
    /// and only content that stays the same across two reads counts as an error.
    fn refresh<T, B>(
        &self,
        tracked: &mut Tracked<T>,
        file: &'static str,
        read: impl Fn() -> Result<(Digest, B), TlsError>,
        parse: impl Fn(&B) -> Result<T, TlsError>,
    ) -> bool {
        let mut current = read();
        for _ in 0..MAX_READS {
            let (digest, bytes) = match current {
                Ok(read) => read,
                Err(err) => {
                    self.refuse(tracked, file, err.to_string(), &err);
                    return false;
                }
            };
            if digest == tracked.digest {
                tracked.refused = None;
                return false;
            }
            let seen = hex(&digest);
            if tracked.refused.as_deref() == Some(seen.as_str()) {
                return false;
            }
            match parse(&bytes) {
                Ok(value) => {
                    *tracked = Tracked {
                        value,
                        digest,
                        refused: None,
                    };
                    return true;
                }
                Err(err) => match read() {
                    Ok(again) if again.0 != digest => current = Ok(again),
                    _ => {
                        self.refuse(tracked, file, seen, &err);
                        return false;
                    }
                },
            }
        }
        false
    }

    /// Counts and logs a reload that failed, once per distinct content or read error.
    fn refuse<T>(
        &self,
        tracked: &mut Tracked<T>,
        file: &'static str,
        seen: String,
        err: &TlsError,
    ) {
        if tracked.refused.as_deref() == Some(seen.as_str()) {
            return;
        }
        tracked.refused = Some(seen);
        self.metrics.emit(TlsReloadFailed {
            file,
            error: err,
            building: false,
        });
    }

    /// Logs the serving certificate in force and sets its expiry gauge.
    fn note_certificate(&self, certified: &CertifiedKey, message: &str) {
        let Some(summary) = certified.cert.first().and_then(names::summary) else {
            return;
        };
        self.metrics.emit(CertificateInForce {
            not_after: summary.not_after,
        });
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if summary.not_after <= now {
            tracing::warn!(subject = %summary.subject, serial = %summary.serial, not_after = summary.not_after, "the serving certificate has expired");
        }
        tracing::info!(subject = %summary.subject, serial = %summary.serial, not_after = summary.not_after, mode = ?self.settings.mode, "{message}");
    }
}

/// Checks the TLS files every `every` until `stop` changes (see the module documentation).
pub async fn watch_files(server: Arc<TlsServer>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate: the files were just loaded
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let server = Arc::clone(&server);
        if tokio::task::spawn_blocking(move || server.reload())
            .await
            .is_err()
        {
            tracing::error!("the TLS reload task panicked; the previous material stays in force");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A server over a self-signed certificate, for exercising the reload bookkeeping.
    fn server(dir: &Path) -> (TlsServer, Arc<Metrics>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
        let settings = TlsConfig {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            mode: TlsMode::Server,
            client_ca_file: None,
            allowed_client_names: Vec::new(),
            reload_interval: Duration::from_secs(1),
        };
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let server = TlsServer::load(&settings, Arc::clone(&metrics)).expect("load");
        (server, metrics)
    }

    /// Reads that return `contents` in turn (the last one repeats); "good" parses.
    fn reads<'a>(
        contents: &'a [(u8, &'a str)],
        count: &'a Cell<usize>,
    ) -> impl Fn() -> Result<(Digest, &'a str), TlsError> + 'a {
        move || {
            let n = count.get();
            count.set(n + 1);
            let (tag, text) = contents[n.min(contents.len() - 1)];
            Ok(([tag; 32], text))
        }
    }

    fn parse(text: &&str) -> Result<u32, TlsError> {
        if *text == "good" {
            Ok(7)
        } else {
            Err(TlsError::Missing {
                key: CERT_KEY,
                message: "bad",
            })
        }
    }

    #[test]
    fn a_pair_read_mid_replacement_is_read_again_not_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (server, metrics) = server(dir.path());
        let errors = || metrics.tls_reload_errors("certificate");
        let mut tracked = Tracked {
            value: 0u32,
            digest: [0; 32],
            refused: None,
        };
        let count = Cell::new(0);
        let swapping = [(1, "half swapped"), (2, "good")];
        assert!(server.refresh(&mut tracked, "certificate", reads(&swapping, &count), parse));
        assert_eq!((tracked.value, tracked.digest[0], errors()), (7, 2, 0));

        // Bad content that stays the same is refused, and counted once however often seen.
        let count = Cell::new(0);
        let broken = [(3, "broken")];
        for _ in 0..3 {
            assert!(!server.refresh(&mut tracked, "certificate", reads(&broken, &count), parse));
        }
        assert_eq!((tracked.value, errors()), (7, 1));
        // Back to the content in force: nothing to do, and the refusal is forgotten.
        let count = Cell::new(0);
        assert!(!server.refresh(
            &mut tracked,
            "certificate",
            reads(&[(2, "good")], &count),
            parse
        ));
        assert_eq!(tracked.refused, None);
    }

    #[test]
    fn reload_keeps_the_certificate_when_the_new_one_is_unusable() {
        let dir = tempfile::tempdir().expect("dir");
        let (server, metrics) = server(dir.path());
        let before = Arc::clone(&server.current.load());
        assert!(!server.reload(), "unchanged files");
        std::fs::write(dir.path().join("tls.crt"), "garbage").expect("write");
        assert!(!server.reload());
        assert!(Arc::ptr_eq(&before, &server.current.load()));
        assert_eq!(metrics.tls_reload_errors("certificate"), 1);
    }
}
