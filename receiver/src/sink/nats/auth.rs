//! How the `nats` sink authenticates: user and password, token, NKey seed or `.creds`
//! file, each read (with tokio::fs, off the runtime's workers) when the server sends its
//! nonce, so a rotated Secret is used at the next connection.

use std::path::PathBuf;

use crate::sink::secret::read_secret;

/// A credential: a file's content, or what the URL carried.
#[derive(Clone)]
pub(super) enum Value {
    File(PathBuf),
    Inline(String),
}

impl Value {
    async fn read(&self, key: &str) -> Result<String, String> {
        match self {
            Value::File(path) => read_secret(key, path).await,
            Value::Inline(value) => Ok(value.clone()),
        }
    }
}

/// How the sink authenticates; each file is read when the server asks (its nonce).
#[derive(Clone)]
pub(super) enum Auth {
    UserPassword { user: Value, password: Value },
    Token(Value),
    NkeySeed(PathBuf),
    Credentials(PathBuf),
}

impl Auth {
    /// The CONNECT's credentials for the server's `nonce`. Errors name the key and file,
    /// never a value.
    pub(super) async fn answer(&self, nonce: &[u8]) -> Result<async_nats::Auth, String> {
        let mut auth = async_nats::Auth::new();
        match self {
            Auth::UserPassword { user, password } => {
                auth.username = Some(user.read("nats.user_file").await?);
                auth.password = Some(password.read("nats.password_file").await?);
            }
            Auth::Token(token) => auth.token = Some(token.read("nats.token_file").await?),
            Auth::NkeySeed(path) => {
                let seed = read_secret("nats.nkey_seed_file", path).await?;
                let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                    format!(
                        "nats.nkey_seed_file {} holds no NKey seed: {e}",
                        path.display()
                    )
                })?;
                auth.signature = Some(sign(&pair, nonce, "nats.nkey_seed_file")?);
                auth.nkey = Some(pair.public_key());
            }
            Auth::Credentials(path) => {
                let creds = read_secret("nats.credentials_file", path).await?;
                let (jwt, seed) = parse_creds(&creds).ok_or_else(|| {
                    format!(
                        "nats.credentials_file {} is not a .creds file (a user JWT and an NKey seed)",
                        path.display()
                    )
                })?;
                let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| {
                    format!(
                        "nats.credentials_file {} holds no valid NKey seed: {e}",
                        path.display()
                    )
                })?;
                auth.signature = Some(sign(&pair, nonce, "nats.credentials_file")?);
                auth.jwt = Some(jwt.to_owned());
            }
        }
        Ok(auth)
    }
}

fn sign(pair: &nkeys::KeyPair, nonce: &[u8], key: &str) -> Result<Vec<u8>, String> {
    pair.sign(nonce)
        .map_err(|e| format!("cannot sign the server's nonce with {key}: {e}"))
}

/// The user JWT and the NKey seed of a `.creds` file: the first line after each
/// `-----BEGIN ...-----` marker.
pub(super) fn parse_creds(text: &str) -> Option<(&str, &str)> {
    let after = |marker: &str| {
        let start = text.find(marker)?;
        text[start..]
            .lines()
            .skip(1)
            .map(str::trim)
            .find(|line| !line.is_empty())
    };
    let jwt = after("BEGIN NATS USER JWT")?;
    let seed = after("BEGIN USER NKEY SEED")?;
    (!jwt.starts_with('-') && !seed.starts_with('-')).then_some((jwt, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_files_are_parsed() {
        let creds = "-----BEGIN NATS USER JWT-----\neyJhbGc.jwt\n------END NATS USER JWT------\n\n\
                     ** IMPORTANT **\n\n-----BEGIN USER NKEY SEED-----\nSUAEXAMPLE\n------END USER NKEY SEED------\n";
        assert_eq!(parse_creds(creds), Some(("eyJhbGc.jwt", "SUAEXAMPLE")));
        assert_eq!(parse_creds("just a token"), None);
    }
}
