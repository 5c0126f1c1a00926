//! Bundle roots in an S3-compatible object store.
//!
//! A root in a store has the layout of a local one (`recsys_bundle::root`):
//!
//! ```text
//! s3://bucket/prefix/
//!   CURRENT                       the version to serve
//!   v1/manifest.json              uploaded last: a version without it is unfinished
//!   v1/shards/shard-0.usearch
//!   ...
//! ```
//!
//! `recsys bundle publish` ([`publish`]) uploads a built, verified version: every
//! file, then the manifest, so a half upload is never a version anyone loads, and
//! optionally `CURRENT`. A server given `--bundle-root s3://...` gets a
//! [`StoreRoot`] (a [`recsys_bundle::RemoteRoot`]): when it loads a version, the
//! files its role reads (one shard, the ranker, the gateway's catalog and query
//! model) are fetched into a bounded local cache ([`cache`]), each checked against
//! the manifest's size and checksum while it streams, and only then is the local
//! directory handed to the loader. The cache evicts whole versions, least
//! recently used first, never one a server still holds.
//!
//! The store is reached through `object_store` on a small runtime of its own
//! ([`store`]), so that the blocking calls servers make from their loaders can
//! never stall, or be stalled by, the server's runtime.

pub mod cache;
pub mod error;
#[cfg(feature = "flags")]
pub mod flags;
pub mod location;
pub mod publish;
pub mod remote_root;
pub mod store;

pub use cache::BundleCache;
pub use error::StoreError;
pub use location::StoreUrl;
pub use publish::{PublishReport, publish};
pub use remote_root::StoreRoot;
pub use store::{AccessKey, Store, StoreOptions};
