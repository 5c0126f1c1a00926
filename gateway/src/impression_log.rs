//! The impression log (issue 20, part 4): what every answer showed to whom,
//! written to files that analytics tools and `recsys train` read, so that
//! "shown and not clicked" can become a training negative.
//!
//! Format: JSON lines (one [`Impression`] per line), which DuckDB, pandas,
//! Spark and `jq` read as they are. Parquet was the preference; its
//! crate would add arrow and half a dozen codecs to the gateway's build for a
//! file a reader converts in one line (`COPY (SELECT * FROM
//! read_json_auto('*.jsonl')) TO 'x.parquet'`), so the lean format won.
//!
//! Off the request path and bounded: a request only clones what it showed into
//! a bounded queue with `try_send`; a full queue drops the record (counted),
//! never waits. One thread serializes and writes. Files rotate by size and by
//! age: the current one is `impressions-{seq}.jsonl.partial`, renamed to
//! `.jsonl` once flushed and synced, so a reader that takes `*.jsonl` never
//! sees half a file. After a `kill -9` the leftover `.partial` is cut back to
//! its last whole line and renamed when the next gateway starts in the
//! directory: at most the records not yet written are lost, never a file a
//! reader chokes on. A write that fails (a full disk) stops the log with an
//! error line and `recsys_gateway_impression_log_stopped 1`; serving goes on.
//!
//! One directory per gateway: two writing the same one would share sequence
//! numbers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::{RecommendRequest, RecommendResponse, recommend_request::Query};
use serde::Serialize;

/// Where and how the log writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpressionLogOptions {
    /// The directory of the files (created if missing).
    pub dir: PathBuf,
    /// A file is closed once it holds this many bytes.
    pub max_file_bytes: u64,
    /// ... or once its first record is this old.
    pub max_file_age: Duration,
    /// Records waiting for the writer at most; more are dropped.
    pub queue: usize,
}

impl ImpressionLogOptions {
    /// 64 MiB or one minute a file, 10,000 records queued.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: 64 << 20,
            max_file_age: Duration::from_secs(60),
            queue: 10_000,
        }
    }
}

/// One answer, as logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Impression {
    /// Unique per answer: the gateway's random id and a counter.
    pub request_id: String,
    /// Milliseconds since the Unix epoch when the answer was given.
    pub time_ms: u64,
    /// Who it was for (empty for an embedding query).
    pub user_id: String,
    /// The request's user features (lists as arrays).
    pub user_features: BTreeMap<String, serde_json::Value>,
    /// The bundle version that answered.
    pub bundle_version: String,
    /// The ranker's model version (empty when unranked).
    pub model_version: String,
    /// The ranker variant (A/B arm) that ranked.
    pub ranker_variant: String,
    /// Whether the order is the ranker's.
    pub ranked: bool,
    /// A multi-objective ranker's heads, the order of each item's head scores.
    pub heads: Vec<String>,
    /// What was shown, in order.
    pub items: Vec<Shown>,
}

/// One item of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown {
    /// The item.
    pub item_id: u64,
    /// 0-based position in the answer.
    pub position: u32,
    /// Its retrieval score.
    pub retrieval_score: f32,
    /// Its ranking score, when ranked.
    pub ranking_score: Option<f32>,
    /// Each head's score (multi-objective rankers).
    pub head_scores: Vec<f32>,
}

impl Impression {
    /// The record of `response` to `request`.
    pub fn of(
        request: &RecommendRequest,
        response: &RecommendResponse,
        request_id: String,
    ) -> Self {
        let user_id = match &request.query {
            Some(Query::UserId(user)) => user.clone(),
            _ => String::new(),
        };
        let user_features = request
            .user_features
            .iter()
            .filter_map(|(name, value)| {
                let value = match value.kind.as_ref()? {
                    Kind::StringValue(s) => serde_json::Value::from(s.clone()),
                    Kind::IntValue(i) => serde_json::Value::from(*i),
                    Kind::FloatValue(f) => serde_json::Value::from(f64::from(*f)),
                    Kind::StringList(list) => serde_json::Value::from(list.values.clone()),
                };
                Some((name.clone(), value))
            })
            .collect();
        Self {
            request_id,
            time_ms: now_ms(),
            user_id,
            user_features,
            bundle_version: response.bundle_version.clone(),
            model_version: response.model_version.clone(),
            ranker_variant: response.ranker_variant.clone(),
            ranked: response.ranked,
            heads: response.heads.clone(),
            items: response
                .items
                .iter()
                .enumerate()
                .map(|(position, item)| Shown {
                    item_id: item.item_id,
                    position: position as u32,
                    retrieval_score: item.retrieval_score,
                    ranking_score: item.ranking_score,
                    head_scores: item.head_scores.clone(),
                })
                .collect(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The request side of the log: hands records to the writer thread.
#[derive(Debug)]
pub struct ImpressionLog {
    sender: SyncSender<Impression>,
    stopped: Arc<AtomicBool>,
    /// This gateway's random id, the first half of every request id.
    gateway_id: u64,
    next: AtomicU64,
}

impl ImpressionLog {
    /// Recovers what a killed gateway left in `options.dir` and starts the
    /// writer thread. Fails when the directory cannot be made or read.
    pub fn start(options: ImpressionLogOptions) -> std::io::Result<Self> {
        std::fs::create_dir_all(&options.dir)?;
        let next_seq = recover(&options.dir)? + 1;
        let (sender, receiver) = sync_channel(options.queue.max(1));
        let stopped = Arc::new(AtomicBool::new(false));
        crate::metrics::impression_log_stopped(false);
        let writer = Writer {
            options,
            seq: next_seq,
            file: None,
            stopped: stopped.clone(),
        };
        std::thread::Builder::new()
            .name("impression-log".into())
            .spawn(move || writer.run(&receiver))?;
        use std::hash::{BuildHasher, Hasher};
        let gateway_id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(Self {
            sender,
            stopped,
            gateway_id,
            next: AtomicU64::new(0),
        })
    }

    /// A request id unique to this gateway's answers.
    pub fn request_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.gateway_id)
    }

    /// Queues `impression`, or drops it (counted) when the queue is full or
    /// the log has stopped. Never waits.
    pub fn record(&self, impression: Impression) {
        if self.stopped.load(Ordering::Relaxed) {
            crate::metrics::impression("dropped_stopped");
            return;
        }
        match self.sender.try_send(impression) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::impression("dropped_queue_full"),
            Err(TrySendError::Disconnected(_)) => crate::metrics::impression("dropped_stopped"),
        }
    }
}

/// The current file.
struct Open {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    opened: Instant,
}

/// The writer thread's state.
struct Writer {
    options: ImpressionLogOptions,
    seq: u64,
    file: Option<Open>,
    stopped: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Impression>) {
        loop {
            let wait = match &self.file {
                Some(open) => self
                    .options
                    .max_file_age
                    .saturating_sub(open.opened.elapsed()),
                None => Duration::from_secs(3600),
            };
            let result = match receiver.recv_timeout(wait) {
                Ok(first) => {
                    // Everything queued now, then one flush.
                    let mut result = self.write(&first);
                    while result.is_ok() {
                        match receiver.try_recv() {
                            Ok(next) => result = self.write(&next),
                            Err(_) => break,
                        }
                    }
                    result.and_then(|()| self.flush_or_rotate())
                }
                Err(RecvTimeoutError::Timeout) => self.rotate(),
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = self.rotate() {
                        tracing::error!(%error, "impression log: the last file could not be closed");
                    }
                    return;
                }
            };
            if let Err(error) = result {
                self.stop(&error);
                return;
            }
        }
    }

    fn write(&mut self, impression: &Impression) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(impression).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.file.is_none() {
            let path = self
                .options
                .dir
                .join(format!("impressions-{:08}.jsonl.partial", self.seq));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.file = Some(Open {
                path,
                out: BufWriter::new(file),
                bytes: 0,
                opened: Instant::now(),
            });
        }
        let mut full = false;
        if let Some(open) = &mut self.file {
            open.out.write_all(&line)?;
            open.bytes += line.len() as u64;
            full = open.bytes >= self.options.max_file_bytes;
        }
        crate::metrics::impression("logged");
        if full {
            self.rotate()?;
        }
        Ok(())
    }

    /// Flushes the current file to the kernel (a full disk shows here, not
    /// at the next rotation), and closes it when it is old enough.
    fn flush_or_rotate(&mut self) -> std::io::Result<()> {
        let Some(open) = &mut self.file else {
            return Ok(());
        };
        open.out.flush()?;
        if open.opened.elapsed() >= self.options.max_file_age {
            self.rotate()?;
        }
        Ok(())
    }

    /// Closes the current file: flushed, synced, renamed to `.jsonl`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(mut open) = self.file.take() else {
            return Ok(());
        };
        open.out.flush()?;
        open.out.get_ref().sync_all()?;
        let done = complete_name(&open.path);
        std::fs::rename(&open.path, &done)?;
        self.seq += 1;
        Ok(())
    }

    fn stop(&mut self, error: &std::io::Error) {
        self.stopped.store(true, Ordering::Relaxed);
        crate::metrics::impression_log_stopped(true);
        tracing::error!(
            dir = %self.options.dir.display(),
            %error,
            "impression log stopped (a full disk?): answers are no longer logged; serving goes on"
        );
    }
}

/// `x.jsonl.partial` → `x.jsonl`.
fn complete_name(partial: &Path) -> PathBuf {
    partial.with_extension("")
}

/// The sequence number of an `impressions-{seq}.jsonl[.partial]` name.
fn seq_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("impressions-")?;
    let digits = rest
        .strip_suffix(".jsonl.partial")
        .or_else(|| rest.strip_suffix(".jsonl"))?;
    digits.parse().ok()
}

/// Completes the `.partial` files a killed gateway left (cut back to their
/// last whole line; removed when they hold none) and returns the highest
/// sequence number in `dir` (0 for none). Only regular files are touched.
fn recover(dir: &Path) -> std::io::Result<u64> {
    let mut highest = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A symlink or a directory is not ours to complete or count.
        let Some(seq) = seq_of(&name).filter(|_| entry.file_type().is_ok_and(|t| t.is_file()))
        else {
            continue;
        };
        if name.ends_with(".partial") {
            let path = entry.path();
            let bytes = std::fs::read(&path)?;
            match bytes.iter().rposition(|&b| b == b'\n') {
                Some(end) => {
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(end as u64 + 1)?;
                    file.sync_all()?;
                    std::fs::rename(&path, complete_name(&path))?;
                    tracing::warn!(file = %path.display(), kept = end + 1, of = bytes.len(), "impression log: completed a file a stopped gateway left");
                }
                None => std::fs::remove_file(&path)?,
            }
        }
        highest = highest.max(seq);
    }
    Ok(highest)
}

#[cfg(test)]
mod tests;
