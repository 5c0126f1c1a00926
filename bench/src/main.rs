//! `recsys-bench`: the measurements behind docs/benchmarks.md.
//!
//! - `retrieval`: one shard of GloVe-50 (first 390k rows as items, held-out rows as
//!   queries) through the retrieval node's search path, one thread, recall@100 and
//!   queries per second per `ef`; writes the ground truth and queries so that
//!   `bench/hnswlib_glove.py` measures hnswlib on exactly the same task.
//! - `filtered`: the same shard with synthetic attributes of known
//!   selectivity: filtered recall@100 against the exact filtered top-100, and
//!   QPS against the unfiltered search and the exact scan of the matching items.
//! - `cold-start`: time from start to SERVING of a retrieval node on a bundle.
//! - `overhead`: gateway latency beyond the slowest shard, on a local cluster (in
//!   this process, or with `--processes` each server a process of its own).
//! - `load`: closed-loop load through a gateway, QPS and latency percentiles per
//!   number of requests in flight; with `--rate`, open-loop load (overload).
//! - `items`: item upserts through the gateway into etcd's change log, on a
//!   cluster of processes: items per second, and the time from `UpsertItems`
//!   answering to the item being found on every replica.
//! - `ranking`: scoring latency of the TFRS DCN tutorial ranker, against
//!   `bench/tfrs_dcn_timing.py` in the same run.
//! - `shards`, `scale`: GloVe-50 in 1 and N shards; a synthetic 1M-10M catalog.
//! - `two-stage`: a retrieve-and-rank request's CPU through a cluster of
//!   processes against its kernels' in-process sum, and its tail at half the
//!   saturating rate.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

mod filtered;
mod glove;
mod glove_split;
mod items;
mod load;
mod open_loop;
mod overhead;
mod process_cluster;
mod ranking;
mod report;
mod scale;
mod shards;
mod stats;
mod two_stage;

use clap::{Parser, Subcommand};
use recsys_server::runtime::IoRole;

#[derive(Debug, Parser)]
#[command(name = "recsys-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    runtime: recsys_server::runtime::RuntimeFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Retrieval on GloVe-50: recall@100 and single-thread QPS per ef.
    Retrieval(glove::RetrievalArgs),
    /// Attribute-filtered retrieval on GloVe-50: recall against the exact
    /// filtered top-100 and QPS against the unfiltered search and the exact
    /// scan of the matching items, per selectivity.
    Filtered(filtered::FilteredArgs),
    /// Time for a retrieval node to reach SERVING on an existing bundle.
    ColdStart(overhead::ColdStartArgs),
    /// Gateway latency beyond the slowest shard.
    Overhead(overhead::OverheadArgs),
    /// Closed-loop load through a gateway: QPS and latency per concurrency.
    Load(load::LoadArgs),
    /// Item upserts through the gateway and etcd: items/s, and time to visible on every replica.
    Items(items::ItemsArgs),
    /// Ranking latency of the TFRS DCN tutorial ranker (one thread per matrix
    /// product, as a ranking node, unless RAYON_NUM_THREADS is set).
    Ranking(ranking::RankingArgs),
    /// One client through a gateway over GloVe-50 in 1 and N shards (each
    /// server a process): recall@100, rate and where the time goes, per
    /// recall target.
    Shards(shards::ShardsArgs),
    /// A synthetic catalog of 1M-10M items in 1-8 shards, each server a
    /// process: build time, memory per item, cold start, recall, latency,
    /// QPS at saturation; JSON lines and a PNG.
    Scale(scale::ScaleArgs),
    /// A two-stage request (GloVe-50 retrieval, DCN tutorial ranker) through
    /// a cluster of processes: CPU per request at saturation against the sum
    /// of its in-process kernels, and p50/p99 at half the saturating rate.
    TwoStage(two_stage::TwoStageArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The ranking benchmarks score as a ranking node does: one thread per
    // matrix product unless RAYON_NUM_THREADS says otherwise (`kernel_threads`).
    if matches!(cli.command, Command::Ranking(_) | Command::TwoStage(_)) {
        recsys_server::kernel_threads::one_per_product_by_default();
    }
    // Only the commands that start servers need a runtime; they hold the nodes'
    // search pools too.
    let runtime = || cli.runtime.build(IoRole::WithComputePools);
    let io_threads = cli.runtime.io_threads;
    match cli.command {
        Command::Retrieval(args) => glove::run(args),
        Command::Filtered(args) => filtered::run(args),
        Command::ColdStart(args) => runtime()?.block_on(overhead::cold_start(args)),
        Command::Overhead(args) => runtime()?.block_on(overhead::overhead(args, io_threads)),
        Command::Load(args) => runtime()?.block_on(load::load(args, io_threads)),
        Command::Items(args) => runtime()?.block_on(items::items(args)),
        Command::Ranking(args) => ranking::run(args),
        Command::Shards(args) => runtime()?.block_on(shards::run(args)),
        Command::Scale(args) => runtime()?.block_on(scale::run(args)),
        Command::TwoStage(args) => runtime()?.block_on(two_stage::run(args)),
    }
}
