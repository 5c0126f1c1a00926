//! Sessions without server state: what a session was shown travels with the
//! client as a signed token, and the next request's answer is merged with it.
//!
//! A feed that refreshes as the user scrolls wants new recommendations merged
//! with what it already showed, replacing a shown item only with a better one:
//! TFRS's `Streaming` top-k keeps a running top-k as batches of candidates
//! arrive (`tf.data` reduce: the state's k best and the batch's, concatenated,
//! top k again). Here the state is the token: the ids and scores of what was
//! shown, the bundle version that scored them, the query they were for, when
//! it was issued, signed with HMAC-SHA256 under a server-side key. Any gateway
//! holding the key answers any session; nothing is stored.
//!
//! Two modes. **Merge** (the default): the shown items and the new answer
//! compete in one top-k, each id once at its best score, so a shown item stays
//! unless a better one arrives (an item kept from the session says so:
//! `from_session`). **Next page**: the shown items are excluded from the search,
//! and the token remembers every page (the newest [`MAX_SESSION_ITEMS`]).
//!
//! A token is refused (`INVALID_ARGUMENT` naming `session.token`) when its
//! signature does not verify, it is cut short or malformed, it comes from
//! another bundle version or another query; an expired one (older than
//! `--session-ttl-secs`) is ignored, and the answer says so in `session_note`.
//!
//! Keys: `--session-keys FILE`, lines `ID SECRET-HEX` (the first line signs,
//! every line verifies), re-read while the gateway runs (`crate::watched_file`)
//! so a key rotates without a restart: add the new key first, keep the old one
//! until its tokens have expired, then remove it. Without the file a gateway
//! signs with a random key of its own, so a session stays with that gateway.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use recsys_bundle::varint::{Cursor, VarintError, put_varint};
use recsys_proto::limits::{MAX_SESSION_ITEMS, MAX_SESSION_TOKEN_BYTES};
use recsys_proto::v1::{RecommendRequest, recommend_request::Query};
use ring::hmac;

use crate::GatewayError;

/// How long a session token stays good by default: a browsing session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// The token's first byte: its format.
const FORMAT: u8 = 1;
/// An HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;
/// The shortest secret a key file may hold.
const MIN_SECRET_BYTES: usize = 16;
/// The request field every refusal names.
const FIELD: &str = "session.token";

/// The keys a gateway signs and verifies session tokens with.
pub struct SessionKeys {
    /// The key new tokens are signed with: its id and key.
    signing: (u32, hmac::Key),
    /// Every key a token may be signed with, by id (the signing key too).
    verifying: Vec<(u32, hmac::Key)>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.verifying.iter().map(|(id, _)| *id).collect();
        f.debug_struct("SessionKeys")
            .field("signing", &self.signing.0)
            .field("verifying", &ids)
            .finish()
    }
}

impl SessionKeys {
    /// A random key of this process's own (id 0): sessions stay with this gateway.
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        Self {
            signing: (0, key.clone()),
            verifying: vec![(0, key)],
        }
    }

    /// Parses a key file: `ID SECRET-HEX` per line (blank lines and `#`
    /// comments ignored), the first signing; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<(u32, hmac::Key)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let mut fields = line.split_whitespace();
            let (Some(id), Some(secret), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {number}: expected `ID SECRET-HEX`"));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| format!("line {number}: the id {id:?} is not a number below 2^32"))?;
            let secret = crate::hex::decode(secret).ok_or_else(|| {
                format!("line {number}: the secret is not an even number of hexadecimal digits")
            })?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "line {number}: the secret is {} bytes, at least {MIN_SECRET_BYTES} are needed",
                    secret.len()
                ));
            }
            if keys.iter().any(|(seen, _)| *seen == id) {
                return Err(format!("line {number}: key id {id} is listed twice"));
            }
            keys.push((id, hmac::Key::new(hmac::HMAC_SHA256, &secret)));
        }
        let signing = keys
            .first()
            .cloned()
            .ok_or_else(|| "no key: add a line `ID SECRET-HEX`".to_string())?;
        Ok(Self {
            signing,
            verifying: keys,
        })
    }

    fn key(&self, id: u32) -> Option<&hmac::Key> {
        self.verifying
            .iter()
            .find_map(|(key_id, key)| (*key_id == id).then_some(key))
    }
}

/// The keys in force, swapped whole when the key file changes.
#[derive(Debug, Clone)]
pub struct SessionKeyring {
    keys: Arc<ArcSwap<SessionKeys>>,
    /// How long a token stays good.
    ttl: Duration,
}

impl SessionKeyring {
    /// `keys`, and tokens good for `ttl`.
    pub fn new(keys: Arc<ArcSwap<SessionKeys>>, ttl: Duration) -> Self {
        Self { keys, ttl }
    }

    /// A random key of this process's own ([`SessionKeys::random`]).
    pub fn random(ttl: Duration) -> Self {
        Self::new(Arc::new(ArcSwap::from_pointee(SessionKeys::random())), ttl)
    }
}

/// What a session was shown: each item and the score it was shown with.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// `(id, score)`, in the order shown.
    pub items: Vec<(u64, f32)>,
    /// Whether the scores are the ranker's (else retrieval's).
    pub ranked: bool,
}

/// What a token says, once verified.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    key_id: u32,
    issued_at: u64,
    query: u64,
    bundle_version: String,
    shown: Shown,
}

impl Token {
    fn encode(&self, key: &hmac::Key) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.bundle_version.len() + self.shown.items.len() * 8);
        out.push(FORMAT);
        out.extend_from_slice(&self.key_id.to_le_bytes());
        out.extend_from_slice(&self.issued_at.to_le_bytes());
        out.extend_from_slice(&self.query.to_le_bytes());
        out.push(u8::from(self.shown.ranked));
        put_varint(&mut out, self.bundle_version.len() as u64);
        out.extend_from_slice(self.bundle_version.as_bytes());
        put_varint(&mut out, self.shown.items.len() as u64);
        for (id, score) in &self.shown.items {
            put_varint(&mut out, *id);
            out.extend_from_slice(&score.to_le_bytes());
        }
        let tag = hmac::sign(key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Verifies the signature first, then parses; every refusal says why.
    fn decode(bytes: &[u8], keys: &SessionKeys) -> Result<Self, String> {
        if bytes.len() > MAX_SESSION_TOKEN_BYTES {
            return Err(format!(
                "is {} bytes, the limit is {MAX_SESSION_TOKEN_BYTES}",
                bytes.len()
            ));
        }
        if bytes.len() < 1 + 4 + TAG_BYTES {
            return Err(format!("is {} bytes: cut short", bytes.len()));
        }
        if bytes[0] != FORMAT {
            return Err(format!(
                "has format {}, this gateway reads {FORMAT}",
                bytes[0]
            ));
        }
        let key_id = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let key = keys.key(key_id).ok_or_else(|| {
            format!("is signed with key {key_id}, which this gateway does not hold")
        })?;
        let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        hmac::verify(key, body, tag)
            .map_err(|_| "has a bad signature (forged, altered or cut short)".to_string())?;
        // Signed by this gateway's key, so only a bug makes these fail; still
        // nothing is trusted.
        let malformed = |error: VarintError| format!("is malformed: {error}");
        let mut reader = Cursor::new(body, 5);
        let issued_at = u64::from_le_bytes(reader.array().map_err(malformed)?);
        let query = u64::from_le_bytes(reader.array().map_err(malformed)?);
        let ranked = match reader.array::<1>().map_err(malformed)? {
            [0] => false,
            [1] => true,
            [other] => return Err(format!("has flags {other}")),
        };
        let length = reader.count(1).map_err(malformed)?;
        let bundle_version = std::str::from_utf8(reader.take(length).map_err(malformed)?)
            .map_err(|_| "names a bundle version that is not UTF-8".to_string())?
            .to_string();
        // Each item takes at least a 1-byte id and a 4-byte score.
        let count = reader.count(5).map_err(malformed)?;
        if count > MAX_SESSION_ITEMS {
            return Err(format!(
                "holds {count} items, the limit is {MAX_SESSION_ITEMS}"
            ));
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let id = reader.varint().map_err(malformed)?;
            let score = f32::from_le_bytes(reader.array().map_err(malformed)?);
            if !score.is_finite() {
                return Err(format!("holds item {id} with a non-finite score"));
            }
            items.push((id, score));
        }
        if !reader.is_done() {
            return Err("has bytes after its items".to_string());
        }
        Ok(Self {
            key_id,
            issued_at,
            query,
            bundle_version,
            shown: Shown { items, ranked },
        })
    }
}

/// Which query a token is for: the user, the item of a similar-items request,
/// or the embedding (xxh3 of its bytes), so a token cannot carry one user's
/// scores into another user's answer.
pub fn query_fingerprint(request: &RecommendRequest) -> u64 {
    let mut bytes = Vec::new();
    match &request.query {
        Some(Query::UserId(user)) => {
            bytes.push(b'u');
            bytes.extend_from_slice(user.as_bytes());
        }
        Some(Query::QueryEmbedding(embedding)) => {
            bytes.push(b'e');
            for value in &embedding.values {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        None => bytes.push(b'-'),
    }
    if let Some(item) = request.similar_to_item_id {
        bytes.push(b's');
        bytes.extend_from_slice(&item.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// How a request continues its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shown items and new candidates compete in one top-k.
    Merge,
    /// No shown item again.
    NextPage,
}

/// A request's session, from its token: what it was shown (`None` for a new
/// session, or one whose token expired), and what the answer must say.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    keyring: SessionKeyring,
    /// How the answer continues the session.
    pub mode: Mode,
    /// What the session was shown, if it goes on.
    pub shown: Option<Shown>,
    /// Said in the answer's `session_note`.
    pub note: String,
    query: u64,
    bundle_version: String,
    /// Ids the request excludes (sorted): never kept from the session.
    excluded: Vec<u64>,
}

impl SessionPlan {
    /// Opens the session `request` continues (its `session` message), for an
    /// answer from `bundle_version`: `None` when the request asks for no session.
    pub fn open(
        request: &RecommendRequest,
        keyring: &SessionKeyring,
        bundle_version: &str,
    ) -> Result<Option<Self>, GatewayError> {
        let Some(session) = &request.session else {
            return Ok(None);
        };
        let mode = match session.mode() {
            recsys_proto::v1::SessionMode::Merge => Mode::Merge,
            recsys_proto::v1::SessionMode::NextPage => Mode::NextPage,
        };
        let query = query_fingerprint(request);
        let mut excluded = request.exclude_item_ids.clone();
        excluded.sort_unstable();
        let mut plan = Self {
            keyring: keyring.clone(),
            mode,
            shown: None,
            note: String::new(),
            query,
            bundle_version: bundle_version.to_string(),
            excluded,
        };
        if session.token.is_empty() {
            plan.note = "a new session".to_string();
            return Ok(Some(plan));
        }
        let token = Token::decode(&session.token, &keyring.keys.load())
            .map_err(|reason| GatewayError::invalid(FIELD, reason))?;
        if token.bundle_version != bundle_version {
            return Err(GatewayError::invalid(
                FIELD,
                format!(
                    "is from bundle version {:?}, this answer is from {bundle_version:?}: start a new session",
                    token.bundle_version
                ),
            ));
        }
        if token.query != query {
            return Err(GatewayError::invalid(
                FIELD,
                "belongs to another query (user, embedding or similar item)",
            ));
        }
        let age = now_secs().saturating_sub(token.issued_at);
        if age > keyring.ttl.as_secs() {
            plan.note = format!(
                "the session token expired ({age} s old, tokens last {} s): a new session",
                keyring.ttl.as_secs()
            );
            return Ok(Some(plan));
        }
        plan.shown = Some(token.shown);
        Ok(Some(plan))
    }

    /// Ids the search must leave out for this session: the shown ones on a
    /// next page.
    pub fn excluded_ids(&self) -> &[(u64, f32)] {
        match (&self.shown, self.mode) {
            (Some(shown), Mode::NextPage) => &shown.items,
            _ => &[],
        }
    }

    /// Continues the session with `answer` (`(id, score)` best first, scores
    /// ranking scores when `ranked`), for an answer of `k`: the items to show,
    /// each with whether it was kept from the session, and the next token.
    /// `deleted` says which shown ids were deleted since.
    pub fn finish(
        mut self,
        answer: &[(u64, f32)],
        ranked: bool,
        k: usize,
        deleted: impl Fn(u64) -> bool,
    ) -> (Vec<(u64, f32, bool)>, Vec<u8>, String) {
        let shown = self.shown.take().filter(|shown| {
            if shown.ranked != ranked {
                self.note = format!(
                    "the session was shown {} scores and this answer has {}: not merged, a new session",
                    if shown.ranked { "ranking" } else { "retrieval" },
                    if ranked { "ranking" } else { "retrieval" },
                );
                return false;
            }
            true
        });
        let (items, remembered) = match (self.mode, shown) {
            (Mode::Merge, Some(shown)) => {
                let keep: Vec<(u64, f32)> = shown
                    .items
                    .into_iter()
                    .filter(|(id, _)| !deleted(*id) && self.excluded.binary_search(id).is_err())
                    .collect();
                let merged = merge_top_k(&keep, answer, k);
                let remembered: Vec<(u64, f32)> =
                    merged.iter().map(|(id, score, _)| (*id, *score)).collect();
                (merged, remembered)
            }
            (Mode::NextPage, Some(shown)) => {
                let items: Vec<(u64, f32, bool)> = answer
                    .iter()
                    .map(|(id, score)| (*id, *score, false))
                    .collect();
                let mut remembered = shown.items;
                remembered.extend_from_slice(answer);
                let over = remembered.len().saturating_sub(MAX_SESSION_ITEMS);
                remembered.drain(..over);
                (items, remembered)
            }
            (_, None) => (
                answer
                    .iter()
                    .map(|(id, score)| (*id, *score, false))
                    .collect(),
                answer.to_vec(),
            ),
        };
        let keys = self.keyring.keys.load();
        let token = Token {
            key_id: keys.signing.0,
            issued_at: now_secs(),
            query: self.query,
            bundle_version: std::mem::take(&mut self.bundle_version),
            shown: Shown {
                items: remembered,
                ranked,
            },
        }
        .encode(&keys.signing.1);
        (items, token, self.note)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One step of TFRS's `Streaming` reduce: the `k` best of the session's
/// `shown` items and the `new` ones, each id once at its best score, best
/// first (ties: the smaller id, so the order of the batches never matters;
/// an id shown and new at the same score counts as new); the flag says the
/// item came from `shown` alone.
pub fn merge_top_k(shown: &[(u64, f32)], new: &[(u64, f32)], k: usize) -> Vec<(u64, f32, bool)> {
    let mut all: Vec<(u64, f32, bool)> = new
        .iter()
        .map(|(id, score)| (*id, *score, false))
        .chain(shown.iter().map(|(id, score)| (*id, *score, true)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)).then(a.2.cmp(&b.2)));
    let mut seen = HashSet::with_capacity(all.len());
    all.retain(|(id, _, _)| seen.insert(*id));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests;
