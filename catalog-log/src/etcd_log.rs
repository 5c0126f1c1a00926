//! The log's calls: append an entry, read a shard's entries after a revision,
//! follow them as they come, and delete what a compacted version contains.

use std::time::Duration;

use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use prost::Message;
use recsys_discovery::etcd::{connect, request};
use recsys_discovery::{Backoff, DiscoveryError, EtcdAccess};
use recsys_proto::v1::ShardChangeRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::LogError;
use crate::key::{catalog_prefix, entry_key, shard_prefix};
use crate::limits::{LIST_PAGE, MAX_ENTRY_BYTES, MAX_TXN_OPS};

/// First and largest pause between attempts of a follower that lost etcd.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Entries a follower may hold for its consumer before it waits.
const FOLLOW_BUFFER: usize = 1024;

/// What [`ChangeLog::catch_up`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The shard has no entry in the range: it already holds every change.
    Nothing,
    /// The shard's last entry in the range is at this revision: apply it first.
    Apply(u64),
    /// The revision asked for is past etcd's current one.
    Ahead {
        /// etcd's current revision.
        current: u64,
    },
}

/// One shard's part of one log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The entry's etcd revision: its place in the cluster's order of changes.
    pub revision: u64,
    /// The changes to the shard.
    pub record: ShardChangeRecord,
}

/// The change log of one cluster in etcd.
#[derive(Clone)]
pub struct ChangeLog {
    client: Client,
    endpoints: Vec<String>,
    cluster: String,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("endpoints", &self.endpoints)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// The log of `cluster` on the etcd `etcd` names (URLs, TLS, user). Connecting
    /// is lazy without a user: an etcd that is down shows up as errors of the
    /// calls; with one, the login happens here.
    pub async fn connect(etcd: impl Into<EtcdAccess>, cluster: &str) -> Result<Self, LogError> {
        let etcd = etcd.into();
        Ok(Self {
            client: connect(&etcd).await?,
            endpoints: etcd.endpoints,
            cluster: cluster.to_string(),
        })
    }

    /// Appends one entry made of one record per shard it touches, and answers
    /// with its revision once etcd has committed it. Refused whole, before
    /// anything is written, when it is larger than [`MAX_ENTRY_BYTES`]. An entry
    /// touching more than [`MAX_TXN_OPS`] shards is written as several
    /// transactions, in order, and answers with the last one's revision; a failure
    /// part way leaves the earlier parts in the log, each complete for its shards.
    pub async fn append(&self, records: &[ShardChangeRecord]) -> Result<u64, LogError> {
        let encoded: Vec<(u32, Vec<u8>)> = records
            .iter()
            .map(|record| (record.shard, record.encode_to_vec()))
            .collect();
        let bytes: usize = encoded.iter().map(|(_, value)| value.len()).sum();
        if bytes > MAX_ENTRY_BYTES {
            return Err(LogError::TooLarge {
                bytes,
                limit: MAX_ENTRY_BYTES,
            });
        }
        let mut revision = 0;
        let mut client = self.client.clone();
        for chunk in encoded.chunks(MAX_TXN_OPS) {
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|(shard, value)| {
                    TxnOp::put(entry_key(&self.cluster, *shard), value.clone(), None)
                })
                .collect();
            let response = request("txn", client.txn(Txn::new().and_then(puts))).await?;
            revision = header_revision(response.header(), "txn")?;
        }
        debug!(
            revision,
            shards = records.len(),
            bytes,
            "appended to the change log"
        );
        Ok(revision)
    }

    /// Shard `shard`'s entries after `after`, in revision order, and the etcd
    /// revision the list was read at (watch from one past it).
    pub async fn read_after(
        &self,
        shard: u32,
        after: u64,
    ) -> Result<(Vec<LogEntry>, u64), LogError> {
        self.list(&shard_prefix(&self.cluster, shard), after).await
    }

    /// Every shard's entries after `after`, in revision order (the parts of one
    /// entry in shard order), and the revision the list was read at.
    pub async fn read_all_after(&self, after: u64) -> Result<(Vec<LogEntry>, u64), LogError> {
        self.list(&catalog_prefix(&self.cluster), after).await
    }

    /// Reads `prefix` page by page at one etcd revision, so that the pages are one
    /// consistent snapshot however many entries arrive meanwhile.
    async fn list(&self, prefix: &str, after: u64) -> Result<(Vec<LogEntry>, u64), LogError> {
        let mut client = self.client.clone();
        let mut entries = Vec::new();
        let mut snapshot = 0i64;
        let mut from = i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1);
        // Keys already read at revision `from`, where the next page starts.
        let mut read_at_from: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_min_create_revision(from)
                .with_limit(LIST_PAGE);
            if snapshot > 0 {
                options = options.with_revision(snapshot);
            }
            let page = request("get", client.get(prefix, Some(options))).await?;
            if snapshot == 0 {
                snapshot =
                    i64::try_from(header_revision(page.header(), "get")?).unwrap_or(i64::MAX);
            }
            let kvs = page.kvs();
            // A page boundary can fall inside one revision (an entry's parts for
            // several shards): the next page starts at that revision again and
            // skips the keys already read there. LIST_PAGE > MAX_TXN_OPS, so a
            // page always ends past at least one whole revision.
            let last = kvs.last().map_or(0, KeyValue::create_revision);
            let mut fresh = 0;
            let mut read_at_last = Vec::new();
            for kv in kvs {
                let revision = kv.create_revision();
                if revision == from && read_at_from.iter().any(|key| key == kv.key()) {
                    continue;
                }
                fresh += 1;
                if revision == last {
                    read_at_last.push(kv.key().to_vec());
                }
                if let Some(entry) = decode(kv) {
                    entries.push(entry);
                }
            }
            if !page.more() || kvs.is_empty() {
                break;
            }
            if fresh == 0 {
                // A whole page of one revision already read: more keys in one
                // transaction than etcd's default allows. Skip past it rather
                // than loop; say so, because those keys are not applied.
                warn!(
                    prefix,
                    revision = last,
                    "change log revision wider than a page, skipping the rest of it"
                );
                from = last.saturating_add(1);
                read_at_from.clear();
            } else {
                if last != from {
                    read_at_from.clear();
                }
                read_at_from.extend(read_at_last);
                from = last;
            }
        }
        Ok((entries, u64::try_from(snapshot).unwrap_or(0)))
    }

    /// What a replica of `shard` that has applied `after` still needs before it
    /// holds every change up to revision `up_to` (read your writes), in one
    /// small etcd read.
    pub async fn catch_up(&self, shard: u32, after: u64, up_to: u64) -> Result<CatchUp, LogError> {
        if up_to <= after {
            return Ok(CatchUp::Nothing);
        }
        let mut client = self.client.clone();
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_min_create_revision(i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1))
            .with_max_create_revision(i64::try_from(up_to).unwrap_or(i64::MAX))
            .with_limit(1);
        let prefix = shard_prefix(&self.cluster, shard);
        let page = request("get", client.get(prefix.as_str(), Some(options))).await?;
        let current = header_revision(page.header(), "get")?;
        if current < up_to {
            // No call has answered a revision etcd has not reached yet.
            return Ok(CatchUp::Ahead { current });
        }
        Ok(match page.kvs().first() {
            Some(kv) => CatchUp::Apply(u64::try_from(kv.create_revision()).unwrap_or(0)),
            None => CatchUp::Nothing,
        })
    }

    /// Follows shard `shard`'s entries after `after`: the ones in the log now,
    /// then each new one as etcd commits it, in revision order and each once,
    /// until `cancel` fires or the receiver is dropped. While etcd is away the
    /// follower retries with backoff and resumes after the last entry it sent,
    /// so nothing committed is skipped.
    pub fn follow(
        &self,
        shard: u32,
        after: u64,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<LogEntry> {
        self.follow_prefix(shard_prefix(&self.cluster, shard), after, cancel)
    }

    /// [`Self::follow`] for every shard's entries (ranking nodes and gateways,
    /// which keep item features and names for the whole catalog).
    pub fn follow_all(&self, after: u64, cancel: CancellationToken) -> mpsc::Receiver<LogEntry> {
        self.follow_prefix(catalog_prefix(&self.cluster), after, cancel)
    }

    fn follow_prefix(
        &self,
        prefix: String,
        after: u64,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<LogEntry> {
        let (sender, receiver) = mpsc::channel(FOLLOW_BUFFER);
        let follower = Follower {
            log: self.clone(),
            prefix,
            sent: after,
            sender,
        };
        tokio::spawn(follower.run(cancel));
        receiver
    }

    /// Deletes every entry at or before `revision` (the revision a new bundle
    /// version contains), in transactions of [`MAX_TXN_OPS`] keys; answers how
    /// many keys went.
    pub async fn truncate(&self, revision: u64) -> Result<usize, LogError> {
        let mut client = self.client.clone();
        let prefix = catalog_prefix(&self.cluster);
        let max = i64::try_from(revision).unwrap_or(i64::MAX);
        let mut deleted = 0;
        loop {
            let options = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_max_create_revision(max)
                .with_limit(i64::try_from(MAX_TXN_OPS).unwrap_or(128));
            let page = request("get", client.get(prefix.as_str(), Some(options))).await?;
            if page.kvs().is_empty() {
                return Ok(deleted);
            }
            let deletes: Vec<TxnOp> = page
                .kvs()
                .iter()
                .map(|kv| TxnOp::delete(kv.key().to_vec(), None::<DeleteOptions>))
                .collect();
            deleted += deletes.len();
            request("txn", client.txn(Txn::new().and_then(deletes))).await?;
        }
    }
}

/// The revision in a response header.
fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
    operation: &'static str,
) -> Result<u64, LogError> {
    let header = header.ok_or(DiscoveryError::MissingHeader { operation })?;
    Ok(u64::try_from(header.revision()).unwrap_or(0))
}

/// The entry a key holds, or `None` (with a warning) for a value that is not a
/// shard change record: whoever wrote it bypassed the gateway, and the log must
/// go on.
fn decode(kv: &KeyValue) -> Option<LogEntry> {
    let key = String::from_utf8_lossy(kv.key());
    match ShardChangeRecord::decode(kv.value()) {
        Ok(record) => Some(LogEntry {
            revision: u64::try_from(kv.create_revision()).unwrap_or(0),
            record,
        }),
        Err(error) => {
            let error = LogError::Malformed {
                key: key.into_owned(),
                reason: error.to_string(),
            };
            warn!(%error, "skipping a malformed change log entry");
            None
        }
    }
}

/// The task behind [`ChangeLog::follow`].
struct Follower {
    log: ChangeLog,
    prefix: String,
    /// The revision of the last entry sent (or the starting point).
    sent: u64,
    sender: mpsc::Sender<LogEntry>,
}

/// Why a follower's list-and-watch ended.
enum Stop {
    /// The consumer is gone or the follower was cancelled.
    Done,
    /// etcd failed; list again after a pause.
    Failed(LogError),
}

impl Follower {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        loop {
            let stop = tokio::select! {
                () = cancel.cancelled() => return,
                stop = self.list_and_watch(&mut backoff) => stop,
            };
            let error = match stop {
                Stop::Done => return,
                Stop::Failed(error) => error,
            };
            let delay = backoff.next_delay();
            if backoff.should_warn() {
                warn!(prefix = %self.prefix, %error, after = self.sent, "change log unavailable, retrying");
            } else {
                debug!(prefix = %self.prefix, %error, "change log still unavailable");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends an entry not sent before; false once the consumer is gone. `sent`
    /// moves past a revision only after every part of it was sent (the parts of
    /// one entry arrive together, in one list or one watch response).
    async fn send(&self, entry: LogEntry) -> bool {
        entry.revision <= self.sent || self.sender.send(entry).await.is_ok()
    }

    async fn list_and_watch(&mut self, backoff: &mut Backoff) -> Stop {
        let (entries, revision) = match self.log.list(&self.prefix, self.sent).await {
            Ok(listed) => listed,
            Err(error) => return Stop::Failed(error),
        };
        let mut last = self.sent;
        for entry in entries {
            last = last.max(entry.revision);
            if !self.send(entry).await {
                return Stop::Done;
            }
        }
        self.sent = last.max(revision);
        let mut client = self.log.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(
            i64::try_from(self.sent)
                .unwrap_or(i64::MAX)
                .saturating_add(1),
        );
        let mut stream =
            match request("watch", client.watch(self.prefix.as_str(), Some(options))).await {
                Ok(stream) => stream,
                Err(error) => return Stop::Failed(error.into()),
            };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Stop::Failed(
                        DiscoveryError::StreamClosed { operation: "watch" }.into(),
                    );
                }
                Err(source) => {
                    return Stop::Failed(
                        DiscoveryError::Etcd {
                            operation: "watch",
                            source,
                        }
                        .into(),
                    );
                }
            };
            if response.compact_revision() > 0 || response.canceled() {
                // Listing again from the last entry sent loses nothing: the entries
                // themselves are deleted only by truncation, never by compaction.
                info!(prefix = %self.prefix, after = self.sent, "change log watch canceled, listing again");
                return Stop::Failed(
                    DiscoveryError::WatchCanceled {
                        reason: response.cancel_reason().to_string(),
                    }
                    .into(),
                );
            }
            if response.created() {
                backoff.reset();
            }
            let mut last = self.sent;
            for event in response.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                let Some(entry) = event.kv().and_then(decode) else {
                    continue;
                };
                last = last.max(entry.revision);
                if !self.send(entry).await {
                    return Stop::Done;
                }
            }
            self.sent = last;
        }
    }
}
