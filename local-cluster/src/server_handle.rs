//! One server of this process: its `run` future spawned as a task, with its
//! shutdown token and its result, so a server that fails says so by name.

use std::net::SocketAddr;
use std::time::Duration;

use recsys_gateway::GatewayError;
use recsys_ranking_node::RankingError;
use recsys_retrieval_node::NodeError;
use recsys_server::tls::ClientTls;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{ClusterError, wait_until_serving_with};

/// What an in-process server's `run` failed with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A retrieval node's.
    #[error(transparent)]
    Retrieval(#[from] NodeError),
    /// A ranking node's.
    #[error(transparent)]
    Ranking(#[from] RankingError),
    /// A gateway's.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// One server running as a task of this process, with its shutdown token and the
/// task's result: a server that fails says so, by name, when it is waited for
/// ([`Self::wait_serving`] fails as soon as the task ends), checked
/// ([`Self::check`]) or stopped ([`Self::stop`]), instead of leaving its caller to
/// time out on a port nobody serves.
#[derive(Debug)]
pub struct ServerHandle<E> {
    /// Where it listens.
    pub addr: SocketAddr,
    name: String,
    token: CancellationToken,
    /// `None` once its result has been taken.
    task: Option<JoinHandle<Result<(), E>>>,
    /// How to reach it for health checks when it serves TLS.
    pub probe: Option<ClientTls>,
}

impl<E> ServerHandle<E>
where
    E: Into<ServerError> + Send + 'static,
{
    /// Spawns `server` (a `run` future, listening on `addr` and ending when
    /// `token` is cancelled) on the current runtime, called `name` in errors.
    pub fn spawn<Fut>(
        name: impl Into<String>,
        addr: SocketAddr,
        token: CancellationToken,
        server: Fut,
    ) -> Self
    where
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    {
        Self {
            addr,
            name: name.into(),
            token,
            task: Some(tokio::spawn(server)),
            probe: None,
        }
    }

    /// Its name in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the server reports SERVING, at most `timeout`; fails at once,
    /// with the server's own error, when its task ends first.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let Some(task) = self.task.as_mut() else {
            return Err(ClusterError::NotRunning {
                name: self.name.clone(),
            });
        };
        let ended = tokio::select! {
            ready = wait_until_serving_with(self.addr, self.probe.as_ref(), timeout) => {
                return ready.map_err(|(waited, detail)| ClusterError::NotServing {
                    what: self.name.clone(),
                    addr: self.addr,
                    waited,
                    detail,
                });
            }
            ended = task => ended,
        };
        self.task = None;
        Err(self.ended(ended))
    }

    /// Fails when the server's task has ended (with its error, if any).
    pub async fn check(&mut self) -> Result<(), ClusterError> {
        match self.task.as_mut() {
            Some(task) if task.is_finished() => {
                let ended = task.await;
                self.task = None;
                Err(self.ended(ended))
            }
            Some(_) => Ok(()),
            None => Err(ClusterError::NotRunning {
                name: self.name.clone(),
            }),
        }
    }

    /// Stops the server gracefully and waits for it to end: its error if it
    /// failed (before or while stopping) or panicked.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        self.token.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(Ok(())) => Ok(()),
            ended => Err(self.ended(ended)),
        }
    }

    /// What a task's result says about the server.
    fn ended(&self, outcome: Result<Result<(), E>, tokio::task::JoinError>) -> ClusterError {
        let name = self.name.clone();
        match outcome {
            Ok(Ok(())) => ClusterError::ServerEnded { name },
            Ok(Err(error)) => ClusterError::ServerFailed {
                name,
                source: error.into(),
            },
            Err(source) => ClusterError::ServerPanicked { name, source },
        }
    }
}
