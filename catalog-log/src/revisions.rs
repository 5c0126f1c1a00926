//! Taking a follower's entries whole revisions at a time.
//!
//! One log entry touching several shards is several keys, each sent by the
//! follower as its own [`LogEntry`], back to back. A consumer that publishes
//! "revision R applied" after the first part would let a reader waiting for R
//! look before the other parts are in; [`recv_ready`] hands over every entry
//! already waiting, so the consumer applies a batch and publishes its last
//! revision once. The follower sends the parts of one revision from one list or
//! one watch response without waiting on etcd in between, so they are in the
//! channel together but for the scheduler's interleaving, which one yield covers.

use tokio::sync::mpsc::Receiver;

use crate::LogEntry;

/// The next entry and every one already waiting behind it (`None` once the
/// follower has stopped).
pub async fn recv_ready(entries: &mut Receiver<LogEntry>) -> Option<Vec<LogEntry>> {
    let first = entries.recv().await?;
    let mut batch = vec![first];
    loop {
        while let Ok(entry) = entries.try_recv() {
            batch.push(entry);
        }
        // The parts of the batch's last revision may still be on their way.
        tokio::task::yield_now().await;
        match entries.try_recv() {
            Ok(entry) => batch.push(entry),
            Err(_) => return Some(batch),
        }
    }
}
