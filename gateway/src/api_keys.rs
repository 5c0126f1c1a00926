//! API keys for the public gateway: a file of SHA-256 hashes, re-read while the
//! gateway runs, so keys rotate without a restart.
//!
//! The file holds one key per line, `NAME SHA256-HEX` (blank lines and `#`
//! comments ignored); `recsys certs api-key NAME` prints a new key and its line.
//! Only hashes are stored, so the file leaks no key. A client sends its key as
//! `authorization: Bearer KEY` (or `x-api-key: KEY`); a call to the gateway service
//! without one, or with one whose hash is not in the file, is answered
//! `UNAUTHENTICATED` before any work. Health and reflection stay open: probes and
//! load balancers carry no key.
//!
//! The file is polled ([`POLL_INTERVAL`]) and swapped in whole when its bytes
//! change; a file that has become unreadable or malformed keeps the previous keys
//! (and says so in the log), since locking every client out is the worse failure
//! (`crate::watched_file`).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::GatewayError;

pub use crate::watched_file::POLL_INTERVAL;

/// The accepted keys: SHA-256 of the key → the key's name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    names: FxHashMap<[u8; 32], String>,
}

impl KeySet {
    /// Parses a key file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut names = FxHashMap::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {}: expected `NAME SHA256-HEX`", index + 1));
            };
            let hash = parse_hex(hash).ok_or_else(|| {
                format!("line {}: the hash is not 64 hexadecimal digits", index + 1)
            })?;
            names.insert(hash, name.to_string());
        }
        Ok(Self { names })
    }

    /// The name of `key`, if it is accepted.
    pub fn name_of(&self, key: &str) -> Option<&str> {
        self.names.get(&sha256(key.as_bytes())).map(String::as_str)
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex of a hash, as the key file holds it.
pub fn to_hex(hash: &[u8; 32]) -> String {
    crate::hex::encode(hash)
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    crate::hex::decode(text)?.try_into().ok()
}

/// The keys in force, shared by the interceptor and the task that re-reads the file.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Arc<ArcSwap<KeySet>>,
}

impl ApiKeys {
    /// Reads `path` (which must be valid now) and re-reads it every
    /// [`POLL_INTERVAL`] until `shutdown`.
    pub fn watch(path: &Path, shutdown: CancellationToken) -> Result<Self, GatewayError> {
        let keys = crate::watched_file::watch(path, "api keys", KeySet::parse, shutdown).map_err(
            |reason| GatewayError::ApiKeys {
                path: path.to_path_buf(),
                reason,
            },
        )?;
        Ok(Self { keys })
    }
}

/// The gateway service's interceptor: passes everything without keys, else only
/// calls that carry an accepted key.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyCheck {
    keys: Option<ApiKeys>,
}

impl ApiKeyCheck {
    /// Checks calls against `keys`; `None` lets every call through.
    pub fn new(keys: Option<ApiKeys>) -> Self {
        Self { keys }
    }
}

impl Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(keys) = &self.keys else {
            return Ok(request);
        };
        let metadata = request.metadata();
        let key = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .or_else(|| {
                metadata
                    .get("x-api-key")
                    .and_then(|value| value.to_str().ok())
            });
        let Some(key) = key else {
            recsys_server::metrics::count_refused_caller("missing_api_key");
            return Err(Status::unauthenticated(
                "missing api key: send `authorization: Bearer KEY` or `x-api-key: KEY`",
            ));
        };
        if keys.keys.load().name_of(key.trim()).is_none() {
            recsys_server::metrics::count_refused_caller("unknown_api_key");
            return Err(Status::unauthenticated("api key not accepted"));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_match_by_hash() {
        let hash = to_hex(&sha256(b"secret"));
        let keys = KeySet::parse(&format!("# keys\n\nalice {hash}\n")).unwrap();
        assert_eq!(keys.name_of("secret"), Some("alice"));
        assert_eq!(keys.name_of("Secret"), None);
        assert_eq!(keys.len(), 1);
        assert!(KeySet::parse("alice").unwrap_err().contains("line 1"));
        assert!(
            KeySet::parse("alice zz")
                .unwrap_err()
                .contains("hexadecimal")
        );
        assert!(KeySet::parse(&format!("a {hash} extra")).is_err());
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
