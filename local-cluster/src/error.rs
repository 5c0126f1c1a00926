//! Why a local cluster could not start or stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use recsys_bundle::BundleError;

use crate::ServerError;

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A port could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The membership is unusable.
    #[error(transparent)]
    Discovery(#[from] recsys_discovery::DiscoveryError),
    /// A server did not report SERVING in time.
    #[error("{what} at {addr} did not become SERVING within {waited:?}: {detail}")]
    NotServing {
        /// Which server.
        what: String,
        /// Its address.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The last thing health checks said.
        detail: String,
    },
    /// A server process exited while it was expected to run.
    #[error("{name} exited ({status}); its stderr is above")]
    Exited {
        /// The process's name and id.
        name: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// A server process was already killed or reaped here.
    #[error("{name} is not running")]
    NotRunning {
        /// The process's name and id.
        name: String,
    },
    /// A server process did not exit within its time after `SIGTERM`, and was killed.
    #[error("{name} did not exit within {waited:?} of SIGTERM and was killed")]
    NoExitAfterSigterm {
        /// The process's name and id.
        name: String,
        /// How long it had.
        waited: Duration,
    },
    /// `kill -TERM` could not be run.
    #[error("cannot signal {name}: {source}")]
    Signal {
        /// The process's name and id.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A server process's state could not be read.
    #[error("cannot wait for {name}: {source}")]
    Wait {
        /// The process's name and id.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A process cluster's static membership file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    StaticFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A server binary could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The running executable's own path is unknown, so its binaries cannot be found.
    #[error("cannot find this executable's own path: {source}")]
    OwnPath {
        /// The cause.
        source: std::io::Error,
    },
    /// A workspace binary is not built.
    #[error("{} is missing: run `{rebuild}` first", path.display())]
    BinaryMissing {
        /// Where it should be.
        path: PathBuf,
        /// The command that builds it.
        rebuild: String,
    },
    /// A workspace binary is older than a source it is built from.
    #[error(
        "{} is older than {}, which it is built from: run `{rebuild}` first",
        binary.display(),
        newer.display()
    )]
    StaleBinary {
        /// The binary.
        binary: PathBuf,
        /// A source file changed (or removed) since it was built.
        newer: PathBuf,
        /// The command that rebuilds it.
        rebuild: String,
    },
    /// Cargo's dep-info file of a binary could not be read.
    #[error("cannot read {}: {source}", path.display())]
    DepInfo {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An in-process server's task ended with an error.
    #[error("{name} failed: {source}")]
    ServerFailed {
        /// Which server.
        name: String,
        /// Its error.
        #[source]
        source: ServerError,
    },
    /// An in-process server's task ended before it was asked to stop.
    #[error("{name} stopped by itself before it was asked to")]
    ServerEnded {
        /// Which server.
        name: String,
    },
    /// An in-process server's task panicked (or was aborted).
    #[error("{name} panicked: {source}")]
    ServerPanicked {
        /// Which server.
        name: String,
        /// The panic, as the task's join error.
        source: tokio::task::JoinError,
    },
    /// The etcd membership never showed every node.
    #[error(
        "the etcd membership did not show {shards} shards and {ranking} ranking nodes within {waited:?}"
    )]
    MembershipIncomplete {
        /// Shards expected.
        shards: u32,
        /// Ranking nodes expected.
        ranking: usize,
        /// How long we waited.
        waited: Duration,
    },
}
