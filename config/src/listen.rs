//! Listen addresses: `IP:PORT`, `HOST:PORT` (resolved when the file is read) or `:PORT`.

use std::net::SocketAddr;

use serde::Deserialize;

/// A listen address as written in the configuration: `IP:PORT` (`127.0.0.1:8080`,
/// `[::1]:8080`), `HOST:PORT` (`localhost:8080`, resolved now; its first IPv4 address when it
/// has one, since that is what `localhost` users curl) or `:PORT` (every IPv4 interface,
/// `0.0.0.0:PORT`).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let expected = || format!("expected HOST:PORT, :PORT or IP:PORT, got `{text}`");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let hostname = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !hostname {
        return Err(expected());
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|err| format!("cannot resolve `{host}` (from `{text}`): {err}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` (from `{text}`) resolves to no address"))
}

/// An address key's value, whatever YAML type it has (`listen: 18080` is an integer to the
/// parser, and deserves the same message as any other wrong address).
fn address(key: &str, value: &serde_json::Value) -> Result<SocketAddr, String> {
    let text = match value {
        serde_json::Value::String(text) => text.trim().to_owned(),
        other => other.to_string(),
    };
    parse_listen(&text).map_err(|message| format!("{key}: {message}"))
}

pub(crate) fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    address("listen", &value).map_err(serde::de::Error::custom)
}

pub(crate) fn metrics_listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => address("metrics_listen", &value)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}
