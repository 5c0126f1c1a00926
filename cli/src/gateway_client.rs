//! Connecting to a gateway from the CLI: the address, TLS files and API key that
//! `recsys query` and `recsys items` share.

use anyhow::Context;
use clap::Args;
use tonic::transport::Channel;

/// Where the gateway is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct GatewayFlags {
    /// Gateway address (`host:port`, or a URL).
    #[arg(long, env = "RECSYS_GATEWAY", default_value = "127.0.0.1:50051")]
    pub gateway: String,
    /// API key, when the gateway checks them (`--api-keys` on the gateway).
    #[arg(long, env = "RECSYS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub tls: recsys_server::tls::ClientTlsFlags,
}

impl GatewayFlags {
    /// A channel to the gateway, with TLS when the flags give it.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let addr = self
            .gateway
            .split_once("://")
            .map_or(self.gateway.as_str(), |(_, addr)| addr);
        self.tls
            .endpoint(addr)
            .with_context(|| format!("bad address or tls files for {addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {addr}"))
    }

    /// `message` as a request carrying the API key, if any.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .context("--api-key holds characters a header cannot")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A refused call as the CLI prints it: the code and the server's message.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
