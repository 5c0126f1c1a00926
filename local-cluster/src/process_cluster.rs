//! A cluster of real processes on loopback: one `retrieval-node` per shard, a
//! `ranking-node` when the bundle has a ranker, and a `gateway` with static
//! membership, each on a runtime of its own, as deployments run them.
//!
//! Why beside the in-process [`crate::LocalCluster`]: there, a client, the
//! gateway and the shards share one tokio runtime, so what `recsys-bench
//! --processes` measures and what the trace test follows across processes
//! (`tests/tests/traces.rs`) need this shape. Each server is a
//! [`ServerProcess`]: exactly the flags below and the variables of
//! [`ProcessOptions::env`], none of the shell's `RECSYS_*` or `OTEL_*`
//! variables, the binaries next to the running executable and refused when
//! older than their sources.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use recsys_bundle::Manifest;
use recsys_server::admission::AdmissionMode;

use crate::{ClusterError, ServerCommand, ServerProcess, binaries_dir, workspace_binary};

/// The running processes; killed when dropped.
#[derive(Debug)]
pub struct ProcessCluster {
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    /// Each shard's node address, by shard.
    pub shard_addrs: Vec<SocketAddr>,
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// Every server, in start order (nodes, then the gateway).
    servers: Vec<ServerProcess>,
    static_file: PathBuf,
}

/// How [`ProcessCluster::start`] runs the servers.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// The nodes' I/O threads (0: each binary's own default).
    pub io_threads: usize,
    /// The gateway's I/O threads (0: its default).
    pub gateway_io_threads: usize,
    /// The gateway's admission limit (0: its default).
    pub gateway_max_in_flight: usize,
    /// The gateway's admission mode.
    pub gateway_admission: AdmissionMode,
    /// CPUs the servers run on (`taskset -c`), when pinned.
    pub server_cpus: Option<String>,
    /// CPUs the gateway runs on, when not those of the other servers.
    pub gateway_cpus: Option<String>,
    /// The gateway's `--recall-target`, when not its default.
    pub gateway_recall_target: Option<f32>,
    /// Variables every server gets (`OTEL_EXPORTER_OTLP_ENDPOINT` to trace it).
    pub env: Vec<(String, String)>,
}

impl ProcessOptions {
    /// The command that starts `binary`: under `taskset` when pinned.
    fn command(&self, binary: &Path, name: &str, addr: SocketAddr) -> ServerCommand {
        let cpus = match name {
            "gateway" => self.gateway_cpus.as_ref().or(self.server_cpus.as_ref()),
            _ => self.server_cpus.as_ref(),
        };
        match cpus {
            None => ServerCommand::new(binary, name, addr),
            Some(cpus) => ServerCommand::new("taskset", name, addr).args([
                "-c".into(),
                cpus.clone(),
                binary.display().to_string(),
            ]),
        }
    }
}

impl ProcessCluster {
    /// Starts the nodes and the gateway on `bundle` as `options` says, and
    /// waits until all report SERVING.
    pub async fn start(bundle: &Path, options: &ProcessOptions) -> Result<Self, ClusterError> {
        let manifest = Manifest::load(bundle)?;
        // One file per cluster: a benchmark may run several side by side.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let static_file = std::env::temp_dir().join(format!(
            "recsys-bench-static-{}-{nth}.json",
            std::process::id()
        ));
        let binaries = binaries_dir()?;
        // Every binary checked before any starts: a stale one fails at once.
        let [retrieval, ranking_node, gateway] = ["retrieval-node", "ranking-node", "gateway"]
            .map(|name| workspace_binary(&binaries, name));
        let (retrieval, ranking_node, gateway) = (retrieval?, ranking_node?, gateway?);
        let mut cluster = Self {
            gateway_addr: free_addr()?,
            shard_addrs: Vec::new(),
            manifest,
            servers: Vec::new(),
            static_file,
        };
        let bundle_arg = bundle.display().to_string();
        let io_arg = options.io_threads.to_string();
        for shard in 0..cluster.manifest.shard_count {
            let addr = free_addr()?;
            let shard_arg = shard.to_string();
            let listen = addr.to_string();
            let args = [
                "--bundle",
                &bundle_arg,
                "--shard",
                &shard_arg,
                "--listen",
                &listen,
                "--io-threads",
                &io_arg,
            ];
            cluster.spawn(
                options
                    .command(&retrieval, "retrieval-node", addr)
                    .args(args),
                options,
            )?;
            cluster.shard_addrs.push(addr);
        }
        let mut ranking = Vec::new();
        if cluster.manifest.ranker.is_some() {
            let addr = free_addr()?;
            let listen = addr.to_string();
            let args = [
                "--bundle",
                &bundle_arg,
                "--listen",
                &listen,
                "--io-threads",
                &io_arg,
            ];
            cluster.spawn(
                options
                    .command(&ranking_node, "ranking-node", addr)
                    .args(args),
                options,
            )?;
            ranking.push(addr);
        }
        // The gateway last, once the nodes serve: it would otherwise mark them
        // down at its first health check and log it.
        cluster.wait_serving().await?;
        let spec = serde_json::json!({
            "shards": cluster.shard_addrs.iter().map(|a| vec![a.to_string()]).collect::<Vec<_>>(),
            "ranking": ranking.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        });
        std::fs::write(&cluster.static_file, spec.to_string()).map_err(|source| {
            ClusterError::StaticFile {
                path: cluster.static_file.clone(),
                source,
            }
        })?;
        let static_arg = cluster.static_file.display().to_string();
        let listen = cluster.gateway_addr.to_string();
        let io_arg = options.gateway_io_threads.to_string();
        let limit_arg = options.gateway_max_in_flight.to_string();
        let admission_arg = match options.gateway_admission {
            AdmissionMode::Fixed => "fixed",
            AdmissionMode::Adaptive => "adaptive",
        };
        let args = [
            "--bundle",
            &bundle_arg,
            "--static",
            &static_arg,
            "--listen",
            &listen,
            "--io-threads",
            &io_arg,
            "--max-in-flight",
            &limit_arg,
            "--admission",
            admission_arg,
        ];
        let addr = cluster.gateway_addr;
        let mut command = options.command(&gateway, "gateway", addr).args(args);
        if let Some(target) = options.gateway_recall_target {
            command = command.args(["--recall-target".to_string(), target.to_string()]);
        }
        cluster.spawn(command, options)?;
        cluster.wait_serving().await?;
        // A server that could not bind its port exits; its port may then answer
        // for another server, so check that none has gone.
        for server in &mut cluster.servers {
            server.check_running()?;
        }
        Ok(cluster)
    }

    /// The children's process ids, in start order (nodes, then the gateway).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(ServerProcess::pid).collect()
    }

    /// Waits until every server started so far reports SERVING, failing at once
    /// when one has exited instead.
    async fn wait_serving(&mut self) -> Result<(), ClusterError> {
        const TIMEOUT: Duration = Duration::from_secs(60);
        for server in &mut self.servers {
            // Polls often: what the benchmark measures starts once all serve.
            server
                .wait_serving_polling(TIMEOUT, Duration::from_millis(5))
                .await?;
        }
        Ok(())
    }

    /// Starts a server with the log level of this process (`warn` by default)
    /// and the variables of `options`.
    fn spawn(
        &mut self,
        command: ServerCommand,
        options: &ProcessOptions,
    ) -> Result<(), ClusterError> {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let mut command = command.env("RUST_LOG", log);
        for (key, value) in &options.env {
            command = command.env(key, value);
        }
        self.servers.push(command.spawn()?);
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // The gateway first, so that it does not log the nodes going away.
        while let Some(mut server) = self.servers.pop() {
            server.kill9();
        }
        let _ = std::fs::remove_file(&self.static_file);
    }
}

/// A free loopback port for a server process.
fn free_addr() -> Result<SocketAddr, ClusterError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    crate::free_loopback_addr().map_err(|source| ClusterError::Bind { addr: any, source })
}
