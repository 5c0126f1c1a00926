//! A cap on exact (brute-force) searches running at once.
//!
//! An exact search scans every item of every shard, so `exact: true` lets any
//! caller make the whole cluster do the most expensive thing it can. Qdrant and
//! Milvus allow it too (it is how recall is measured), so it stays allowed by
//! default, but only so many run at once, at the gateway and at each retrieval
//! node (which anyone reaching its port can call): the next one is refused at
//! once with `RESOURCE_EXHAUSTED` rather than queued behind the scans.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why an exact search was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExactRefused {
    /// This server does not run exact searches.
    #[error("exact searches are disabled on this server")]
    Disabled,
    /// As many as allowed are running.
    #[error("{0} exact searches are already running, the limit is {0}")]
    Busy(usize),
}

/// The cap: at most `limit` exact searches at once; 0 refuses all of them.
#[derive(Debug, Clone)]
pub struct ExactSearches {
    running: Arc<Semaphore>,
    limit: usize,
}

impl ExactSearches {
    /// At most `limit` at once (0: none).
    pub fn new(limit: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one exact search, held until the permit drops, or why not.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, ExactRefused> {
        if self.limit == 0 {
            return Err(ExactRefused::Disabled);
        }
        self.running
            .clone()
            .try_acquire_owned()
            .map_err(|error| match error {
                TryAcquireError::NoPermits | TryAcquireError::Closed => {
                    ExactRefused::Busy(self.limit)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_past_the_limit_is_refused_until_one_ends() {
        let exact = ExactSearches::new(2);
        let first = exact.try_start().unwrap();
        let _second = exact.try_start().unwrap();
        assert_eq!(exact.try_start().unwrap_err(), ExactRefused::Busy(2));
        drop(first);
        assert!(exact.try_start().is_ok());
        assert_eq!(
            ExactSearches::new(0).try_start().unwrap_err(),
            ExactRefused::Disabled
        );
    }
}
