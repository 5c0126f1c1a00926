//! `recsys`: the front door. `demo` builds a synthetic bundle and serves it on a
//! local cluster, `serve` does the same for an existing bundle, `bundle` builds
//! bundles, `query` asks a gateway, `health` asks any server whether it is serving,
//! `train` trains a retrieval model or the DCN-V2 ranker on MovieLens.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

mod bundle_admin;
mod bundle_cmd;
mod bundle_publish;
mod certs;
mod compact;
mod demo;
mod demo_items;
mod epoch_bar;
mod etcd_auth_cmd;
mod gateway_client;
mod health;
mod items;
mod query;
mod rollout;
mod train;
mod train_export;
mod train_heads;
mod train_ranking;

use clap::{Parser, Subcommand};

/// Two-stage recommendations over a sharded embedding index.
#[derive(Debug, Parser)]
#[command(name = "recsys", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    runtime: recsys_server::runtime::RuntimeFlags,
    /// Parse and validate the command line and environment, print what would be
    /// done and exit without doing it: the deploy files' check.
    #[arg(long, env = "RECSYS_CHECK_CONFIG", global = true)]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a synthetic bundle (cached), start a local cluster, print sample recommendations, serve.
    Demo(demo::DemoArgs),
    /// Serve an existing bundle on a local cluster (every shard and a gateway in this process).
    Serve(demo::ServeArgs),
    /// Build a bundle from item embeddings (raw f32 or .npy) or a synthetic catalog
    /// (into --out DIR, or as a new version of --root ROOT); `bundle verify` checks one.
    Bundle(bundle_cmd::BundleCommand),
    /// Ask a gateway for recommendations and print them as a table.
    Query(query::QueryArgs),
    /// Change items on a live cluster through the gateway (needs etcd):
    /// `items upsert --vectors FILE`, `items delete --ids 1,2`; prints the revision.
    /// `items truncate --up-to REV` deletes the log a compacted version contains.
    #[command(subcommand)]
    Items(items::ItemsCommand),
    /// Roll a bundle version out to a cluster through etcd (`--version V`), roll
    /// back to the previous one (`--rollback`), or show per node what it serves (`--status`).
    Rollout(rollout::RolloutArgs),
    /// Ask a server's grpc.health.v1 whether it is SERVING (exit 0) or not (exit 1).
    Health(health::HealthArgs),
    /// Write a development CA and the certificates of every role (PEM) into a directory.
    Certs(certs::CertsArgs),
    /// Set up etcd's users and roles for a cluster and turn its auth on.
    #[command(subcommand)]
    EtcdAuth(etcd_auth_cmd::EtcdAuthCommand),
    /// Make a gateway API key: the key on stdout, its `NAME SHA256` line for --api-keys on stderr or appended to a file.
    ApiKey(certs::ApiKeyArgs),
    /// Train a model on MovieLens: `train retrieval` (the two-tower model, top-k accuracies) or `train ranking` (the DCN-V2 ranker, RMSE).
    #[command(subcommand)]
    Train(train::TrainCommand),
}

fn main() {
    let cli = Cli::parse();
    // A cluster in this process scores like a ranking node: one thread per
    // matrix product (`kernel_threads`), set before anything starts a thread.
    // Not for `demo`, which may train first, where the products are large.
    if matches!(cli.command, Command::Serve(_)) {
        recsys_server::kernel_threads::one_per_product_by_default();
    }
    let _telemetry = recsys_server::telemetry::init("recsys");
    if cli.check_config {
        match check(&cli.command) {
            Ok(what) => println!("recsys: configuration ok: {what}"),
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    // A command-line error is one readable line (with its causes), never a
    // backtrace, whatever RUST_BACKTRACE says.
    // `demo` and `serve` hold every node's search and ranking pools.
    let outcome = cli
        .runtime
        .build(recsys_server::runtime::IoRole::WithComputePools)
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    if let Err(error) = outcome {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// `--check-config`: the command line parsed (clap has checked every value by
/// now); `bundle` is also validated as far as it can be without files.
fn check(command: &Command) -> anyhow::Result<String> {
    Ok(match command {
        Command::Bundle(args) => bundle_cmd::check_command(args)?,
        other => format!("{other:?}"),
    })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::demo(args).await,
        Command::Serve(args) => demo::serve(args).await,
        Command::Bundle(bundle_cmd::BundleCommand {
            action: Some(bundle_cmd::BundleAction::Compact(args)),
            ..
        }) => compact::compact(*args).await,
        Command::Bundle(args) => {
            tokio::task::spawn_blocking(move || bundle_cmd::run_command(args)).await??;
            Ok(())
        }
        Command::Query(args) => query::run(args).await,
        Command::Items(args) => items::run(args).await,
        Command::Rollout(args) => rollout::run(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Certs(args) => certs::run(&args),
        Command::ApiKey(args) => certs::api_key(&args),
        Command::EtcdAuth(args) => etcd_auth_cmd::run(args).await,
        Command::Train(args) => tokio::task::spawn_blocking(move || train::run(args)).await?,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (two flags with one id, defaults that do not
    /// parse, …) run only in debug builds and only when a command is built: build
    /// them all here rather than at a user's first run.
    #[test]
    fn every_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
