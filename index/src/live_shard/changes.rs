//! What a live shard takes: item changes, why a batch is refused, what
//! applying one did, and how a batch reaches a mutable usearch index.

use rustc_hash::FxHashMap;
use usearch::Index;

/// One change to a shard's items.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemChange {
    /// Adds the item, or replaces its vector if the shard has it.
    Upsert {
        /// Item id; must hash to this shard.
        id: u64,
        /// The item's embedding, of the shard's dimensions.
        vector: Vec<f32>,
    },
    /// Removes the item; deleting an item the shard does not have is a no-op, so
    /// a replayed delete is harmless.
    Delete {
        /// Item id; must hash to this shard.
        id: u64,
    },
}

impl ItemChange {
    /// The item the change is about.
    pub fn id(&self) -> u64 {
        match self {
            Self::Upsert { id, .. } | Self::Delete { id } => *id,
        }
    }
}

/// Why a batch of changes was refused. A refused batch changes nothing: the
/// checks run before the first change is applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChangeError {
    /// The item belongs to another shard.
    #[error("item {id} hashes to shard {actual}, not to this shard {expected}")]
    ForeignItem {
        /// The item.
        id: u64,
        /// This shard.
        expected: u32,
        /// The shard the item hashes to.
        actual: u32,
    },
    /// An upsert's vector has the wrong length.
    #[error("item {id} has {actual} dimensions, the shard has {expected}")]
    Dimensions {
        /// The item.
        id: u64,
        /// The shard's dimensions.
        expected: usize,
        /// The vector's.
        actual: usize,
    },
    /// An upsert's vector holds NaN or an infinity.
    #[error("item {id} has a non-finite value in its vector")]
    NonFinite {
        /// The item.
        id: u64,
    },
    /// usearch refused to grow or change the mutable index.
    #[error("mutable index: {0}")]
    Usearch(String),
}

/// What [`LiveShard::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The batch was applied; the shard is now at its revision.
    Changed,
    /// The shard had already applied this revision: nothing changed.
    Replayed,
}

/// Counts describing a live shard, for `Info` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStats {
    /// Items a search can return.
    pub items: u64,
    /// Items in the base that changes have hidden (deleted or replaced).
    pub hidden: u64,
    /// Items in the mutable part.
    pub delta: u64,
    /// The last applied revision of the change log.
    pub revision: u64,
}

/// Applies each item's last change of a batch to a mutable usearch index: an
/// existing copy is removed, an upsert added. The removals run first, then the
/// insertions, on one thread: with usearch 2.26's concurrent insertion into an
/// index whose removed slots get reused, the model test found an upserted item
/// unreachable by its own vector in about one run of ten; sequential insertion
/// never did.
pub(crate) fn replace_items(
    index: &Index,
    last: &FxHashMap<u64, &ItemChange>,
) -> Result<(), ChangeError> {
    let mut additions = Vec::with_capacity(last.len());
    for (id, change) in last {
        if index.contains(*id) {
            index.remove(*id).map_err(usearch_error)?;
        }
        if let ItemChange::Upsert { vector, .. } = change {
            additions.push((*id, vector.as_slice()));
        }
    }
    let needed = index.size() + additions.len();
    if needed > index.capacity() {
        // Doubling keeps the cost of growing amortized over many batches.
        let capacity = needed.max(index.capacity().saturating_mul(2)).max(1024);
        index.reserve(capacity).map_err(usearch_error)?;
    }
    for (id, vector) in additions {
        index.add(id, vector).map_err(usearch_error)?;
    }
    Ok(())
}

/// usearch's complaint about a change.
pub(crate) fn usearch_error(error: impl std::fmt::Display) -> ChangeError {
    ChangeError::Usearch(error.to_string())
}
