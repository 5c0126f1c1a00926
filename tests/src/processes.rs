//! Nodes as real processes, for the tests that need what only a process can
//! suffer: `kill -9` (no goodbye, no lease revoke, sockets reset by the kernel) and
//! `SIGTERM` (the binary's own drain).
//!
//! The binaries are the workspace's own (`retrieval-node`, `ranking-node`,
//! `gateway`, `recsys`, `recsys-bench`), next to the test executable in cargo's target directory;
//! when they are missing (a plain `cargo test -p recsys-tests`), they are built
//! first. A binary that exists is used as it is, even if older than the tree:
//! `make test` builds them all before testing; by hand, run
//! `cargo build --workspace --bins` after changing a node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The path of a workspace binary, built if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    if !path.exists() {
        let package = match name {
            "retrieval-node" => "recsys-retrieval-node",
            "ranking-node" => "recsys-ranking-node",
            "gateway" => "recsys-gateway",
            "recsys" => "recsys-cli",
            "recsys-bench" => "recsys-bench",
            other => panic!("unknown binary {other}"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", package, "--bin", name]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
    }
    path
}

/// A free loopback port ([`recsys_local_cluster::free_loopback_addr`]).
pub fn free_addr() -> SocketAddr {
    recsys_local_cluster::free_loopback_addr().expect("bind 127.0.0.1:0")
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

/// A node process, killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// A name for messages.
    pub name: String,
    child: Option<Child>,
}

impl NodeProcess {
    /// A `retrieval-node` process on a free port, one search thread, a 300 ms drain grace.
    pub fn retrieval(node: &RetrievalProcess<'_>) -> Self {
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
        Self::spawn(node.name, "retrieval-node", addr, &args)
    }

    /// Starts `binary` with `args` (which must make it listen on `addr`), logs to
    /// stderr of the test with the node's name in front only when it fails.
    pub fn spawn(name: &str, binary_name: &str, addr: SocketAddr, args: &[String]) -> Self {
        let child = Command::new(binary(binary_name))
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary_name}: {e}"));
        Self {
            addr,
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// `kill -9`: the process vanishes without a word.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -TERM` and wait (at most `timeout`) for the process to exit by itself;
    /// returns whether it did.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        self.child.is_none() || self.terminate_with_status(timeout).await.is_some()
    }

    /// `kill -TERM` and wait (at most `timeout`) for the process to exit by itself;
    /// its exit status, or `None` when it had to be killed (or was not running).
    pub async fn terminate_with_status(
        &mut self,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
