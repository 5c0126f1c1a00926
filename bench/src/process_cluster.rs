//! How a benchmark runs its cluster: in this process
//! ([`recsys_local_cluster::LocalCluster`]) or one process per server
//! ([`recsys_local_cluster::ProcessCluster`], with `--processes`).
//!
//! Why both: in one process, the benchmark's client, the gateway and the
//! shards share one tokio runtime, so a hop between two of them can land on a
//! worker that sleeps on the other core, and what is measured mixes their
//! scheduling. Deployments (docker-compose, Kubernetes) run each server in its
//! own process with its own runtime; the process cluster is that shape on one
//! machine, with none of the shell's `RECSYS_*` or `OTEL_*` variables (they
//! would change what is measured) and binaries refused when older than their
//! sources, so a measurement is never of an old build.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use recsys_bundle::Manifest;
use recsys_local_cluster::{
    ClusterTls, LocalCluster, LocalClusterOptions, ProcessCluster, ProcessOptions, TraceCollector,
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
    /// With `--processes`: every server exports its traces over OTLP to a
    /// collector in this process (`OTEL_EXPORTER_OTLP_ENDPOINT`), what tracing
    /// costs when on; the spans received are counted on stderr at the end.
    #[arg(long, requires = "processes")]
    pub trace: bool,
    /// With `--trace`: the share of requests traced (the servers'
    /// `OTEL_TRACES_SAMPLER=parentbased_traceidratio` with this ratio).
    #[arg(long, requires = "trace", default_value_t = 1.0)]
    pub trace_sample: f64,
}

/// The cluster a benchmark drives: in its own process, or as processes of their own.
#[derive(Debug)]
pub enum BenchCluster {
    /// Every server on the benchmark's runtime.
    InProcess(LocalCluster),
    /// Every server a process, and the collector of their traces with `--trace`.
    Processes(ProcessCluster, Option<TraceCollector>),
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
            let collector = if shape.trace {
                Some(TraceCollector::start().await?)
            } else {
                None
            };
            let mut env: Vec<(String, String)> = collector
                .iter()
                .map(|c| ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), c.endpoint()))
                .collect();
            if shape.trace && shape.trace_sample < 1.0 {
                env.push((
                    "OTEL_TRACES_SAMPLER".into(),
                    "parentbased_traceidratio".into(),
                ));
                env.push((
                    "OTEL_TRACES_SAMPLER_ARG".into(),
                    shape.trace_sample.to_string(),
                ));
            }
            let options = ProcessOptions {
                io_threads,
                gateway_io_threads: shape.gateway_io_threads.unwrap_or(io_threads),
                gateway_max_in_flight: shape.gateway_max_in_flight,
                gateway_admission: shape.gateway_admission,
                server_cpus: shape.server_cpus.clone(),
                gateway_cpus: shape.gateway_cpus.clone(),
                gateway_recall_target: None,
                env,
            };
            Self::Processes(ProcessCluster::start(bundle, &options).await?, collector)
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
            Self::Processes(..) => None,
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
            Self::Processes(c, _) => &c.manifest,
        }
    }

    /// Where the gateway listens.
    pub fn gateway_addr(&self) -> SocketAddr {
        match self {
            Self::InProcess(c) => c.gateway_addr,
            Self::Processes(c, _) => c.gateway_addr,
        }
    }

    /// One node address per shard.
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Self::InProcess(c) => (0..c.manifest().shard_count as usize)
                .filter_map(|s| c.node_addr(s, 0))
                .collect(),
            Self::Processes(c, _) => c.shard_addrs.clone(),
        }
    }

    /// The server processes' ids (none when in this process).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::InProcess(_) => Vec::new(),
            Self::Processes(c, _) => c.pids(),
        }
    }

    /// Stops every server; an in-process one that failed says so.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(c) => c.shutdown().await?,
            Self::Processes(c, collector) => {
                drop(c);
                if let Some(collector) = collector {
                    eprintln!("trace collector: {} spans received", collector.count());
                }
            }
        }
        Ok(())
    }
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
