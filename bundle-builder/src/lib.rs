//! Writes bundles (the read-only format of `recsys-bundle`).
//!
//! Every producer of a bundle goes through here: `recsys bundle` with the user's
//! own vectors (`.npy` or raw f32, [`ItemVectors`]), the synthetic catalogs of the
//! demo, the tests and the benchmarks ([`synthetic`]), the trainer's exports, and
//! a ranker trained elsewhere ([`attach_ranker`]). The shards' indexes are built
//! by `recsys-index`, in a locality order ([`locality`]). Every writer ends by
//! sealing the bundle ([`seal`]: files flushed, checksummed in the manifest);
//! [`Staging`] builds into a hidden directory and renames the sealed bundle into
//! a root's version (or a plain directory), so no reader ever sees half of one.
//! Serving processes never link this crate: the gateway reads bundles with
//! `recsys-bundle` alone.

mod attach_ranker;
mod builder;
mod compact;
pub mod locality;
mod seal;
mod staging;
pub mod synthetic;
pub mod vectors;

pub use attach_ranker::{AttachedRanker, attach_ranker, attach_ranker_variant};
pub use builder::{BuildEvent, BuildOptions, build_bundle};
pub use compact::{CompactOptions, Compacted, ItemEdit, compact_bundle};
pub use seal::seal;
pub use staging::Staging;
pub use vectors::ItemVectors;
