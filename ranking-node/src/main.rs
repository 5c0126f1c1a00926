//! `ranking-node`: scores retrieval candidates (the model arrives with the ranking stage).

use std::net::SocketAddr;

use clap::Parser;

/// Scores retrieval candidates for a user over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "RECSYS_LISTEN", default_value = "127.0.0.1:50071")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    recsys_server::telemetry::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    recsys_ranking_node::run(listener, recsys_server::shutdown::on_signal()).await?;
    Ok(())
}
