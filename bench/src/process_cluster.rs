//! A local cluster of real processes: one `retrieval-node` per shard, a
//! `ranking-node` when the bundle has a ranker, and a `gateway` with static
//! membership, on loopback.
//!
//! Why next to the in-process [`recsys_local_cluster::LocalCluster`]: there, the
//! benchmark's client, the gateway and the shards share one tokio runtime, so a
//! hop between two of them can land on a worker that sleeps on the other core,
//! and what is measured mixes their scheduling. Deployments (docker-compose,
//! Kubernetes) run each server in its own process with its own runtime; this is
//! that shape on one machine.
//!
//! Each server is a [`ServerProcess`], the harness the integration tests use
//! too: exactly the flags below, none of the shell's `RECSYS_*` variables (they
//! would change what is measured), the binaries next to this one and refused when
//! older than their sources, so a measurement is never of an old build.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use recsys_bundle::Manifest;
use recsys_local_cluster::{
    ClusterTls, LocalCluster, LocalClusterOptions, ServerCommand, ServerProcess, binaries_dir,
    workspace_binary,
};
use recsys_server::admission::AdmissionMode;
use recsys_server::tls::ClientTls;
use tonic::transport::{Channel, Endpoint};

/// How `overhead` and `load` run the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterShape {
    /// Run the gateway and each node as its own process (the `gateway`,
    /// `retrieval-node` and `ranking-node` binaries next to this one), as
    /// deployments do, instead of all in this process on one shared runtime.
    #[arg(long)]
    pub processes: bool,
    /// With `--processes`: the gateway's I/O threads (default: `--io-threads`; 0:
    /// the gateway's own default, one per core).
    #[arg(long, requires = "processes")]
    pub gateway_io_threads: Option<usize>,
    /// TLS everywhere with the certificates of this `recsys certs` directory:
    /// mutual TLS between the gateway and the nodes and from this client to the
    /// gateway (in this process only).
    #[arg(long, conflicts_with = "processes")]
    pub tls: Option<PathBuf>,
    /// With `--processes`: the gateway's admission limit, `--max-in-flight` (0:
    /// its default per core; a huge number turns admission control off, the
    /// overload benchmark's baseline).
    #[arg(long, requires = "processes", default_value_t = 0)]
    pub gateway_max_in_flight: usize,
    /// With `--processes`: the gateway's `--admission` (fixed or adaptive).
    #[arg(long, requires = "processes", value_enum, default_value_t = AdmissionMode::Fixed)]
    pub gateway_admission: AdmissionMode,
    /// With `--processes`: run the servers on these CPUs only (`taskset -c`
    /// list, e.g. `0`), so that a client pinned to the others (`taskset -c 1
    /// recsys-bench ...`) does not take the servers' cores: on a small host the
    /// load generator otherwise competes with what it measures.
    #[arg(long, requires = "processes")]
    pub server_cpus: Option<String>,
    /// With `--processes`: run the gateway on these CPUs instead of
    /// `--server-cpus`, as on a host of its own in front of the nodes (the
    /// usual layout: Vespa's container nodes, Milvus' proxies), so that the
    /// requests it refuses under overload cost the nodes' cores nothing.
    #[arg(long, requires = "processes")]
    pub gateway_cpus: Option<String>,
}

/// The cluster a benchmark drives: in its own process, or as processes of their own.
#[derive(Debug)]
pub enum BenchCluster {
    /// Every server on the benchmark's runtime.
    InProcess(LocalCluster),
    /// Every server a process.
    Processes(ProcessCluster),
}

impl BenchCluster {
    /// Starts a cluster on `bundle`: as processes when `shape.processes`, else in
    /// this process on its runtime.
    pub async fn start(
        bundle: &Path,
        shape: &ClusterShape,
        io_threads: usize,
    ) -> anyhow::Result<Self> {
        Ok(if shape.processes {
            let options = ProcessOptions {
                io_threads,
                gateway_io_threads: shape.gateway_io_threads.unwrap_or(io_threads),
                gateway_max_in_flight: shape.gateway_max_in_flight,
                gateway_admission: shape.gateway_admission,
                server_cpus: shape.server_cpus.clone(),
                gateway_cpus: shape.gateway_cpus.clone(),
                gateway_recall_target: None,
            };
            Self::Processes(ProcessCluster::start(bundle, &options).await?)
        } else {
            let mut options = LocalClusterOptions::new(bundle);
            options.tls = shape.tls.clone().map(|dir| ClusterTls { dir });
            Self::InProcess(LocalCluster::start(options).await?)
        })
    }

    /// The cluster's TLS, if on.
    fn tls(&self) -> Option<&ClusterTls> {
        match self {
            Self::InProcess(c) => c.tls.as_ref(),
            Self::Processes(_) => None,
        }
    }

    /// A channel to the gateway as a client would open one (TLS with a client
    /// certificate when the cluster has TLS), connected.
    pub async fn gateway_channel(&self) -> anyhow::Result<Channel> {
        channel(self.gateway_addr(), self.tls().map(|t| t.client("client"))).await
    }

    /// A channel to a node as the gateway opens one, connected.
    pub async fn node_channel(&self, addr: SocketAddr) -> anyhow::Result<Channel> {
        channel(addr, self.tls().map(|t| t.client("gateway-client"))).await
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        match self {
            Self::InProcess(c) => c.manifest(),
            Self::Processes(c) => &c.manifest,
        }
    }

    /// Where the gateway listens.
    pub fn gateway_addr(&self) -> SocketAddr {
        match self {
            Self::InProcess(c) => c.gateway_addr,
            Self::Processes(c) => c.gateway_addr,
        }
    }

    /// One node address per shard.
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Self::InProcess(c) => (0..c.manifest().shard_count as usize)
                .filter_map(|s| c.node_addr(s, 0))
                .collect(),
            Self::Processes(c) => c.shard_addrs.clone(),
        }
    }

    /// The server processes' ids (none when in this process).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::InProcess(_) => Vec::new(),
            Self::Processes(c) => c.pids(),
        }
    }

    /// Stops every server; an in-process one that failed says so.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(c) => c.shutdown().await?,
            Self::Processes(c) => drop(c),
        }
        Ok(())
    }
}

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
    pub async fn start(bundle: &Path, options: &ProcessOptions) -> anyhow::Result<Self> {
        let manifest = Manifest::load(bundle)
            .with_context(|| format!("reading the bundle at {}", bundle.display()))?;
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
        std::fs::write(&cluster.static_file, spec.to_string())
            .with_context(|| format!("writing {}", cluster.static_file.display()))?;
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
        cluster.spawn(command)?;
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
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        const TIMEOUT: Duration = Duration::from_secs(60);
        for server in &mut self.servers {
            // Polls often: what the benchmark measures starts once all serve.
            server
                .wait_serving_polling(TIMEOUT, Duration::from_millis(5))
                .await?;
        }
        Ok(())
    }

    /// Starts a server with the log level of this process (`warn` by default).
    fn spawn(&mut self, command: ServerCommand) -> anyhow::Result<()> {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        self.servers.push(command.env("RUST_LOG", log).spawn()?);
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
fn free_addr() -> anyhow::Result<SocketAddr> {
    recsys_local_cluster::free_loopback_addr().context("binding 127.0.0.1:0")
}

/// A connected channel to `addr`, over TLS with `tls` when given, without Nagle.
pub(crate) async fn channel(addr: SocketAddr, tls: Option<ClientTls>) -> anyhow::Result<Channel> {
    let (scheme, tls) = match tls {
        Some(tls) => ("https", Some(tls.load()?)),
        None => ("http", None),
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?.tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}
