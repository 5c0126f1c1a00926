//! `recsys health`: one `grpc.health.v1.Health/Check`, for container
//! healthchecks and Kubernetes exec probes where no `grpc_health_probe` can be
//! installed. Exits 0 only when the answer is `SERVING`; anything else (cannot
//! connect, timed out, unknown service, `NOT_SERVING`) is an error whose message
//! says which, so `docker inspect` and `kubectl describe` show why.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Options of `recsys health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Server address, `host:port` (a name is resolved, as in containers).
    #[arg(long, env = "RECSYS_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Deadline for connecting and answering together, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub tls: recsys_server::tls::ClientTlsFlags,
}

/// Checks once; `Ok` only for `SERVING`.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let what = if args.service.is_empty() {
        "server".to_string()
    } else {
        format!("service {}", args.service)
    };
    let status = tokio::time::timeout(timeout, check(&args, &args.service))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} at {}: no answer within {} ms",
                what,
                args.addr,
                args.timeout_ms
            )
        })??;
    match status {
        ServingStatus::Serving => {
            println!("{what} at {}: SERVING", args.addr);
            Ok(())
        }
        other => anyhow::bail!("{what} at {}: {}", args.addr, other.as_str_name()),
    }
}

async fn check(args: &HealthArgs, service: &str) -> anyhow::Result<ServingStatus> {
    let addr = &args.addr;
    let channel = args
        .tls
        .endpoint(addr)
        .with_context(|| format!("bad address or tls files for {addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "health check of {addr} failed: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(response.into_inner().status())
}
