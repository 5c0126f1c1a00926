//! `recsys`: the front door. `demo` builds a synthetic bundle and serves it on a
//! local cluster, `serve` does the same for an existing bundle, `bundle` builds
//! bundles, `query` asks a gateway, `health` asks any server whether it is serving,
//! `train` trains a retrieval model or the DCN-V2 ranker on MovieLens.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

mod bundle_cmd;
mod demo;
mod health;
mod query;
mod train;
mod train_ranking;

use clap::{Parser, Subcommand};

/// Two-stage recommendations over a sharded embedding index.
#[derive(Debug, Parser)]
#[command(name = "recsys", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a synthetic bundle (cached), start a local cluster, print sample recommendations, serve.
    Demo(demo::DemoArgs),
    /// Serve an existing bundle on a local cluster (every shard and a gateway in this process).
    Serve(demo::ServeArgs),
    /// Build a bundle from item embeddings (raw f32 or .npy) or a synthetic catalog.
    Bundle(bundle_cmd::BundleArgs),
    /// Ask a gateway for recommendations and print them as a table.
    Query(query::QueryArgs),
    /// Ask a server's grpc.health.v1 whether it is SERVING (exit 0) or not (exit 1).
    Health(health::HealthArgs),
    /// Train the two-tower retrieval model (top-k accuracies) or, with --task ranking, the DCN-V2 ranker (RMSE) on MovieLens.
    Train(train::TrainArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    recsys_server::telemetry::init();
    match Cli::parse().command {
        Command::Demo(args) => demo::demo(args).await,
        Command::Serve(args) => demo::serve(args).await,
        Command::Bundle(args) => {
            tokio::task::spawn_blocking(move || bundle_cmd::run(args)).await??;
            Ok(())
        }
        Command::Query(args) => query::run(args).await,
        Command::Health(args) => {
            // One line a probe log can show, never a backtrace.
            if let Err(error) = health::run(args).await {
                eprintln!("{error:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Train(args) => tokio::task::spawn_blocking(move || train::run(args)).await?,
    }
}
