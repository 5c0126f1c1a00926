//! Servers as real processes, through the harness `recsys-bench` uses too
//! ([`recsys_local_cluster::ServerProcess`]): exactly the flags given, none of the
//! shell's `RECSYS_*` variables, killed when dropped.
//!
//! The binaries are this tree's (`retrieval-node`, `ranking-node`, `gateway`,
//! `recsys`, `recsys-bench`), next to the test executable in cargo's target
//! directory, built beforehand (`make test` does; by hand,
//! `cargo build --workspace --bins`). Tests never build them: a missing binary,
//! or one older than a source it is built from, fails the test with the command
//! to run ([`recsys_local_cluster::workspace_binary`] says why).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use recsys_local_cluster::{ServerCommand, ServerProcess};

/// The path of this tree's binary `name`; panics when it is missing or stale.
pub fn binary(name: &str) -> PathBuf {
    recsys_local_cluster::binaries_dir()
        .and_then(|dir| recsys_local_cluster::workspace_binary(&dir, name))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// A free loopback port ([`recsys_local_cluster::free_loopback_addr`]).
pub fn free_addr() -> SocketAddr {
    recsys_local_cluster::free_loopback_addr().expect("bind 127.0.0.1:0")
}

/// Starts `binary_name` with `args` (which must make it listen on `addr`), logging
/// errors only, under `name` in messages; not serving yet.
pub fn spawn(name: &str, binary_name: &str, addr: SocketAddr, args: &[String]) -> ServerProcess {
    ServerCommand::new(binary(binary_name), name, addr)
        .args(args)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap_or_else(|error| panic!("{error}"))
}

/// How to start a `retrieval-node` process that registers in etcd.
#[derive(Debug, Clone)]
pub struct RetrievalProcess<'a> {
    /// The bundle it serves.
    pub bundle: &'a Path,
    /// etcd's client URL.
    pub etcd: String,
    /// The cluster it registers in.
    pub cluster: &'a str,
    /// The shard it serves.
    pub shard: u32,
    /// Its node id.
    pub name: &'a str,
    /// Where it serves `/metrics`.
    pub metrics: SocketAddr,
    /// Its lease TTL in seconds (short leases keep kill -9 tests short).
    pub lease_ttl_s: u64,
}

/// A `retrieval-node` process on a free port, one search thread, a 300 ms drain
/// grace; not serving yet.
pub fn retrieval(node: &RetrievalProcess<'_>) -> ServerProcess {
    let addr = free_addr();
    let args: Vec<String> = [
        "--metrics-listen",
        &node.metrics.to_string(),
        "--bundle",
        &node.bundle.display().to_string(),
        "--shard",
        &node.shard.to_string(),
        "--listen",
        &addr.to_string(),
        "--search-threads",
        "1",
        // One I/O thread, as small hosts run them: also keeps the flag tested.
        "--io-threads",
        "1",
        "--etcd",
        &node.etcd,
        "--cluster",
        node.cluster,
        "--node-id",
        node.name,
        "--lease-ttl",
        &node.lease_ttl_s.to_string(),
        "--drain-grace-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn(node.name, "retrieval-node", addr, &args)
}
