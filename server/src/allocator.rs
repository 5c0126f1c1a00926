//! The allocator every recsys binary installs:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;
//! ```
//!
//! candle allocates a fresh buffer for every tensor op; a ranking forward pass over
//! 1000 candidates of the TFRS tutorial model makes a dozen buffers of 768 KB.
//! glibc serves blocks that large with `mmap` and returns them with `munmap`, so
//! every pass paid page faults on fresh pages: measured on the ranking benchmark,
//! 2.8–3.0 ms a call instead of 1.6 ms, depending on where glibc's adaptive
//! threshold happened to sit. mimalloc keeps freed segments for reuse.

/// The global allocator of the binaries.
pub use mimalloc::MiMalloc as Allocator;
