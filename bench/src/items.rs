//! `recsys-bench items`: item upserts through the gateway's `CatalogService`
//! into the change log in etcd, on a cluster of real processes registered in a
//! real etcd (issue 17's figures).
//!
//! - **Throughput**: `--items` upserts in calls of `--batch`, `--concurrency`
//!   calls in flight: items per second from the first call to the last answer
//!   (each call answered once etcd has committed its entry).
//! - **Visibility**: `--probes` single-item upserts, one after the other; for
//!   each, the time from `UpsertItems` answering to every replica of the item's
//!   shard returning it first for its own vector (each replica polled with a
//!   `k = 1` search until it does), once idle and once while a background
//!   stream of `--batch`-item upserts runs.
//!
//! The etcd is a throwaway one started here (the `etcd` binary on `PATH`, or
//! `RECSYS_ETCD_BIN`) with its data in a temporary directory; the nodes are
//! this tree's binaries, `--replicas` retrieval replicas per shard, a ranking
//! node when the bundle has a ranker, and a gateway, each a process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use recsys_bundle::{Manifest, shard_of};
use recsys_discovery::EtcdServer;
use recsys_local_cluster::{ServerCommand, ServerProcess, binaries_dir, workspace_binary};
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{ItemUpsert, SearchRequest, UpsertItemsRequest};
use tonic::transport::{Channel, Endpoint};

use crate::stats::percentile;

/// Options of `recsys-bench items`.
#[derive(Debug, Clone, Args)]
pub struct ItemsArgs {
    /// The bundle the cluster serves.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Retrieval replicas per shard.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Items upserted in the throughput phase.
    #[arg(long, default_value_t = 50_000)]
    pub items: usize,
    /// Items per `UpsertItems` call.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Calls in flight in the throughput phase.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Visibility probes per phase (idle, under load).
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Items per second of the background upserts during the second visibility
    /// phase (in calls of `--batch`).
    #[arg(long, default_value_t = 2_000.0)]
    pub background_rate: f64,
    /// The gateway's `--max-apply-lag-ms` (unset: its default). Writers here
    /// honour its push-back: a refused call waits [`BACK_OFF`] and is sent again.
    #[arg(long)]
    pub max_apply_lag_ms: Option<u64>,
}

/// How long a writer waits after `RESOURCE_EXHAUSTED` (the gateway's push-back
/// while replicas lag) before sending the same call again.
const BACK_OFF: Duration = Duration::from_millis(20);

/// Upserted vectors: random directions far out, so that an item is the best
/// match of its own vector whatever the metric.
struct Vectors {
    state: u64,
    dimensions: usize,
}

impl Vectors {
    fn next(&mut self) -> Vec<f32> {
        let mut raw: Vec<f32> = (0..self.dimensions)
            .map(|_| {
                // xorshift64*
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                (bits >> 11) as f32 / (1u64 << 53) as f32 - 0.5
            })
            .collect();
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        raw.iter_mut().for_each(|v| *v = *v / norm * 1_000.0);
        raw
    }
}

/// The servers; killed when dropped (the gateway first).
struct Servers(Vec<ServerProcess>);

impl Drop for Servers {
    fn drop(&mut self) {
        while let Some(mut server) = self.0.pop() {
            server.kill9();
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    recsys_local_cluster::free_loopback_addr().context("binding 127.0.0.1:0")
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Starts the cluster: replicas, a ranking node when the bundle has a ranker,
/// the gateway; all registered in (and following the log of) `etcd`.
async fn start_cluster(
    bundle: &Path,
    manifest: &Manifest,
    replicas: usize,
    etcd: &str,
    max_apply_lag_ms: Option<u64>,
) -> anyhow::Result<(Servers, Vec<Vec<SocketAddr>>, SocketAddr)> {
    let binaries = binaries_dir()?;
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let bundle_arg = bundle.display().to_string();
    let mut servers = Servers(Vec::new());
    let mut shards = vec![Vec::new(); manifest.shard_count as usize];
    let common = |listen: &str, id: &str| -> Vec<String> {
        [
            "--bundle",
            &bundle_arg,
            "--listen",
            listen,
            "--etcd",
            etcd,
            "--cluster",
            "bench",
            "--node-id",
            id,
            "--io-threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for shard in 0..manifest.shard_count {
        for replica in 0..replicas {
            let addr = free_addr()?;
            let mut args = common(&addr.to_string(), &format!("s{shard}r{replica}"));
            args.extend(["--shard".to_string(), shard.to_string()]);
            let binary = workspace_binary(&binaries, "retrieval-node")?;
            servers.0.push(
                ServerCommand::new(binary, "retrieval-node", addr)
                    .args(args)
                    .env("RUST_LOG", &log)
                    .spawn()?,
            );
            shards[shard as usize].push(addr);
        }
    }
    if manifest.ranker.is_some() {
        let addr = free_addr()?;
        let binary = workspace_binary(&binaries, "ranking-node")?;
        servers.0.push(
            ServerCommand::new(binary, "ranking-node", addr)
                .args(common(&addr.to_string(), "rank"))
                .env("RUST_LOG", &log)
                .spawn()?,
        );
    }
    let gateway = free_addr()?;
    let mut args = common(&gateway.to_string(), "gateway");
    // The gateway does not register: no node id.
    args.truncate(args.len() - 4);
    args.extend(["--io-threads".to_string(), "1".to_string()]);
    if let Some(lag) = max_apply_lag_ms {
        args.extend(["--max-apply-lag-ms".to_string(), lag.to_string()]);
    }
    let binary = workspace_binary(&binaries, "gateway")?;
    servers.0.push(
        ServerCommand::new(binary, "gateway", gateway)
            .args(args)
            .env("RUST_LOG", &log)
            .spawn()?,
    );
    for server in &mut servers.0 {
        server
            .wait_serving_polling(Duration::from_secs(120), Duration::from_millis(10))
            .await?;
    }
    Ok((servers, shards, gateway))
}

/// A stream of upserts.
struct Stream {
    /// The first item's id; the others follow.
    first_id: u64,
    /// Items in all (ignored with `stop`).
    count: usize,
    batch: usize,
    concurrency: usize,
    /// Upsert until this is set instead of `count` items.
    stop: Option<Arc<AtomicBool>>,
    /// Pause after each call (pacing).
    pause: Duration,
}

/// What a stream of upserts did.
struct Streamed {
    elapsed: Duration,
    /// Items accepted.
    sent: u64,
    /// The highest revision answered.
    revision: u64,
    /// Calls refused by the gateway's push-back (each sent again).
    refused: u64,
}

/// One `UpsertItems` call, sent again after [`BACK_OFF`] while the gateway
/// pushes back (each refusal counted in `refused`).
async fn upsert(
    client: &mut CatalogServiceClient<Channel>,
    items: Vec<ItemUpsert>,
    refused: &AtomicU64,
) -> anyhow::Result<recsys_proto::v1::CatalogChangeResponse> {
    loop {
        let request = UpsertItemsRequest {
            items: items.clone(),
        };
        match client.upsert_items(request).await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BACK_OFF).await;
            }
            answer => return Ok(answer.context("UpsertItems")?.into_inner()),
        }
    }
}

/// Upserts the stream's items, each call sent again after [`BACK_OFF`] while
/// the gateway pushes back.
async fn upsert_stream(
    gateway: Channel,
    vectors: Arc<std::sync::Mutex<Vectors>>,
    stream: Stream,
) -> anyhow::Result<Streamed> {
    let Stream {
        first_id,
        count,
        batch,
        concurrency,
        stop,
        pause,
    } = stream;
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (gateway, vectors, next, stop, refused) = (
            gateway.clone(),
            vectors.clone(),
            next.clone(),
            stop.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = CatalogServiceClient::new(gateway);
            let (mut sent, mut revision) = (0u64, 0u64);
            loop {
                if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Ok::<(u64, u64), anyhow::Error>((sent, revision));
                }
                let start = next.fetch_add(batch as u64, Ordering::Relaxed);
                if stop.is_none() && start >= count as u64 {
                    return Ok((sent, revision));
                }
                let items: Vec<ItemUpsert> = {
                    let mut vectors = vectors.lock().unwrap_or_else(|e| e.into_inner());
                    (0..batch as u64)
                        .map(|i| ItemUpsert {
                            item_id: first_id + start + i,
                            embedding: vectors.next(),
                            name: format!("bench item {}", first_id + start + i),
                            ..Default::default()
                        })
                        .collect()
                };
                let answer = upsert(&mut client, items, &refused).await?;
                revision = revision.max(answer.revision);
                sent += batch as u64;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
    }
    let (mut sent, mut revision) = (0, 0);
    for task in tasks {
        let (n, r) = task.await??;
        sent += n;
        revision = revision.max(r);
    }
    Ok(Streamed {
        elapsed: started.elapsed(),
        sent,
        revision,
        refused: refused.load(Ordering::Relaxed),
    })
}

/// Waits until every replica has applied the log up to `revision` (a search
/// carrying it answers once the replica holds it; one behind is refused and
/// asked again); answers how long that took.
async fn caught_up(
    shards: &[Vec<SocketAddr>],
    revision: u64,
    dimensions: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for addr in shards.iter().flatten() {
        let mut client = RetrievalServiceClient::new(channel(*addr).await?);
        loop {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{addr} did not apply revision {revision} within 600 s"
            );
            let search = SearchRequest {
                query: vec![1.0; dimensions],
                k: 1,
                exclude_item_ids: Vec::new(),
                exact: false,
                min_log_revision: revision,
                bundle_version: String::new(),
                ..Default::default()
            };
            if client.search(search).await.is_ok() {
                break;
            }
        }
    }
    Ok(started.elapsed())
}

/// `probes` single upserts; for each, the milliseconds from the answer to every
/// replica of its shard returning the item first for its own vector.
async fn visibility(
    gateway: Channel,
    shards: &[Vec<SocketAddr>],
    vectors: &Arc<std::sync::Mutex<Vectors>>,
    first_id: u64,
    probes: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut catalog = CatalogServiceClient::new(gateway);
    let mut clients: Vec<Vec<RetrievalServiceClient<Channel>>> = Vec::new();
    for replicas in shards {
        let mut row = Vec::new();
        for addr in replicas {
            row.push(RetrievalServiceClient::new(channel(*addr).await?));
        }
        clients.push(row);
    }
    let mut times = Vec::with_capacity(probes);
    for probe in 0..probes as u64 {
        let id = first_id + probe;
        let vector = vectors.lock().unwrap_or_else(|e| e.into_inner()).next();
        let item = ItemUpsert {
            item_id: id,
            embedding: vector.clone(),
            ..Default::default()
        };
        upsert(&mut catalog, vec![item], &AtomicU64::new(0)).await?;
        let answered = Instant::now();
        let shard = shard_of(id, shards.len() as u32) as usize;
        let mut pending: Vec<usize> = (0..clients[shard].len()).collect();
        while !pending.is_empty() {
            anyhow::ensure!(
                answered.elapsed() < Duration::from_secs(30),
                "item {id} not visible on every replica after 30 s"
            );
            let mut still = Vec::new();
            for replica in pending {
                let search = SearchRequest {
                    query: vector.clone(),
                    k: 1,
                    exclude_item_ids: Vec::new(),
                    exact: false,
                    min_log_revision: 0,
                    bundle_version: String::new(),
                    ..Default::default()
                };
                let top = clients[shard][replica].search(search).await?.into_inner();
                if top.item_ids.first() != Some(&id) {
                    still.push(replica);
                }
            }
            pending = still;
        }
        times.push(answered.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn summary(times: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "probes": times.len(),
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
        "max_ms": times.last().copied().unwrap_or(f64::NAN),
    })
}

/// Runs the three phases and prints one JSON line each.
pub async fn items(args: ItemsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=recsys_proto::limits::MAX_CATALOG_ITEMS).contains(&args.batch),
        "--batch must be between 1 and {}",
        recsys_proto::limits::MAX_CATALOG_ITEMS
    );
    anyhow::ensure!(
        args.replicas > 0 && args.concurrency > 0,
        "--replicas and --concurrency must be positive"
    );
    let manifest = Manifest::load(&args.bundle)
        .with_context(|| format!("reading the bundle at {}", args.bundle.display()))?;
    let etcd = EtcdServer::start().await.context("starting etcd")?;
    let (servers, shards, gateway) = start_cluster(
        &args.bundle,
        &manifest,
        args.replicas,
        &etcd.endpoint(),
        args.max_apply_lag_ms,
    )
    .await?;
    let channel = channel(gateway).await?;
    let vectors = Arc::new(std::sync::Mutex::new(Vectors {
        state: 0x1717_2026,
        dimensions: manifest.dimensions,
    }));
    // Ids far above any bundle's.
    let base = 1u64 << 60;

    let Streamed {
        elapsed,
        sent,
        revision,
        refused,
    } = upsert_stream(
        channel.clone(),
        vectors.clone(),
        Stream {
            first_id: base,
            count: args.items,
            batch: args.batch,
            concurrency: args.concurrency,
            stop: None,
            pause: Duration::ZERO,
        },
    )
    .await?;
    // The backlog: from the last call answering to every replica holding it.
    let drained = caught_up(&shards, revision, manifest.dimensions).await?;
    println!(
        "{}",
        serde_json::json!({
            "phase": "throughput",
            "items": sent,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "seconds": elapsed.as_secs_f64(),
            "items_per_s": sent as f64 / elapsed.as_secs_f64(),
            "calls_refused_for_lag": refused,
            "replicas_caught_up_after_s": drained.as_secs_f64(),
        })
    );

    let idle = visibility(
        channel.clone(),
        &shards,
        &vectors,
        base + (1 << 40),
        args.probes,
    )
    .await?;
    let mut line = summary(&idle);
    line["phase"] = "visibility_idle".into();
    println!("{line}");

    let stop = Arc::new(AtomicBool::new(false));
    anyhow::ensure!(
        args.background_rate > 0.0,
        "--background-rate must be positive"
    );
    let pause = Duration::from_secs_f64(args.batch as f64 / args.background_rate);
    let background = tokio::spawn(upsert_stream(
        channel.clone(),
        vectors.clone(),
        Stream {
            first_id: base + (2 << 40),
            count: usize::MAX,
            batch: args.batch,
            concurrency: 1,
            stop: Some(stop.clone()),
            pause,
        },
    ));
    let loaded = visibility(
        channel.clone(),
        &shards,
        &vectors,
        base + (3 << 40),
        args.probes,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let background = background.await??;
    let loaded = loaded?;
    let mut line = summary(&loaded);
    line["phase"] = "visibility_under_load".into();
    line["background_items_per_s"] =
        (background.sent as f64 / background.elapsed.as_secs_f64()).into();
    line["background_calls_refused_for_lag"] = background.refused.into();
    println!("{line}");
    drop(servers);
    Ok(())
}
