//! A throwaway real etcd for integration tests (feature `test-support`).
//!
//! [`EtcdServer::start`] runs the system's etcd binary as a one-member cluster on
//! free loopback ports with a temporary data dir, and returns once a linearizable
//! read succeeds. Tests then stop, restart (same ports and data) or wipe it
//! (same ports, empty data: every lease is gone) to play etcd outages, and compact
//! it to break watches. The process is killed when the value drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::debug;

use crate::etcd::{connect, request};
use crate::{DiscoveryError, EtcdAccess, EtcdCredentials, EtcdTls};

/// PEM files of an etcd with TLS: its server certificate, the CA its clients'
/// certificates must chain to, and a client certificate for the test's own calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdServerTls {
    /// The server certificate (with `127.0.0.1` among its names).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA of server and clients.
    pub ca: PathBuf,
    /// A client certificate and key of that CA.
    pub client: (PathBuf, PathBuf),
}

/// Start attempts, each on fresh ports, before giving up.
const START_ATTEMPTS: u32 = 3;
/// How long one start may take until etcd answers reads; generous for a slow VM.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Member name in `--initial-cluster`.
const MEMBER: &str = "recsys-test";

/// A running single-member etcd with its own data dir.
#[derive(Debug)]
pub struct EtcdServer {
    // Declared before `dir` so the process dies before its data dir is removed.
    child: Option<Child>,
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdServerTls>,
    root: Option<EtcdCredentials>,
    /// `--quota-backend-bytes`, when a test wants etcd to fill up.
    quota_bytes: Option<u64>,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it serves reads.
    pub async fn start() -> Result<Self, DiscoveryError> {
        Self::start_configured(None, None).await
    }

    /// Starts etcd serving `https://` only and requiring client certificates of `tls.ca`.
    pub async fn start_tls(tls: EtcdServerTls) -> Result<Self, DiscoveryError> {
        Self::start_configured(Some(tls), None).await
    }

    /// Starts etcd with a database quota of `bytes` (`--quota-backend-bytes`),
    /// for tests of what happens when it is full.
    pub async fn start_with_quota(bytes: u64) -> Result<Self, DiscoveryError> {
        Self::start_configured(None, Some(bytes)).await
    }

    async fn start_configured(
        tls: Option<EtcdServerTls>,
        quota_bytes: Option<u64>,
    ) -> Result<Self, DiscoveryError> {
        let binary = find_etcd()?;
        let dir = tempfile::Builder::new()
            .prefix("recsys-etcd-")
            .tempdir()
            .map_err(|source| DiscoveryError::EtcdProcess {
                operation: "create temp dir",
                source,
            })?;
        let (client_port, peer_port) = free_ports()?;
        let mut server = Self {
            child: None,
            binary,
            dir,
            client_port,
            peer_port,
            tls,
            root: None,
            quota_bytes,
        };
        let mut reason = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(why) => reason = why,
            }
            debug!(
                attempt,
                reason, "test etcd did not start, trying other ports"
            );
            server.wipe_data()?;
            (server.client_port, server.peer_port) = free_ports()?;
        }
        Err(DiscoveryError::EtcdStart {
            attempts: START_ATTEMPTS,
            log: reason,
        })
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// How to reach this etcd (TLS with the test's client certificate when on),
    /// as no user in particular.
    pub fn access(&self) -> EtcdAccess {
        EtcdAccess {
            endpoints: vec![self.endpoint()],
            tls: self.tls.as_ref().map(|tls| EtcdTls {
                ca: tls.ca.clone(),
                identity: Some(tls.client.clone()),
            }),
            credentials: None,
        }
    }

    /// The root login [`client`](Self::client) uses once auth is on.
    pub fn set_root(&mut self, root: EtcdCredentials) {
        self.root = Some(root);
    }

    fn admin_access(&self) -> EtcdAccess {
        self.access().with_credentials(self.root.clone())
    }

    /// The process id of the running etcd, for tests that pause it
    /// (`kill -STOP`) rather than kill it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// A client connected to this server, as root once [`set_root`](Self::set_root) was called.
    pub async fn client(&self) -> Result<Client, DiscoveryError> {
        connect(&self.admin_access()).await
    }

    /// Kills etcd (SIGKILL, as a crash) and waits for it to exit. The data stays.
    pub async fn stop(&mut self) -> Result<(), DiscoveryError> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .map_err(|source| DiscoveryError::EtcdProcess {
                    operation: "kill",
                    source,
                })?;
        }
        Ok(())
    }

    /// Starts etcd again on the same ports with the same data, stopping it first if
    /// it runs; leases survive.
    pub async fn restart(&mut self) -> Result<(), DiscoveryError> {
        self.stop().await?;
        self.relaunch().await
    }

    /// Starts etcd again on the same ports with an empty data dir: every key and
    /// lease is gone and revisions count from 1 again.
    pub async fn restart_wiped(&mut self) -> Result<(), DiscoveryError> {
        self.stop().await?;
        self.wipe_data()?;
        self.relaunch().await
    }

    /// Compacts the key space up to the current revision and returns it; watches
    /// from an earlier revision are then canceled.
    pub async fn compact_to_latest(&self) -> Result<i64, DiscoveryError> {
        let mut client = self.client().await?;
        let etcd = |operation| move |source| DiscoveryError::Etcd { operation, source };
        let revision = client
            .get("/", None)
            .await
            .map_err(etcd("get"))?
            .header()
            .ok_or(DiscoveryError::MissingHeader { operation: "get" })?
            .revision();
        client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(etcd("compact"))?;
        Ok(revision)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn wipe_data(&self) -> Result<(), DiscoveryError> {
        match std::fs::remove_dir_all(self.data_dir()) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(DiscoveryError::EtcdProcess {
                    operation: "wipe data dir",
                    source,
                })
            }
            _ => Ok(()),
        }
    }

    async fn relaunch(&mut self) -> Result<(), DiscoveryError> {
        self.launch()
            .await
            .map_err(|log| DiscoveryError::EtcdStart { attempts: 1, log })
    }

    /// Spawns etcd and waits until a linearizable read succeeds, which needs the
    /// member to have elected itself leader. On failure, kills it and returns why
    /// with the tail of its log.
    async fn launch(&mut self) -> Result<(), String> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let access = self.admin_access();
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(MEMBER)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{MEMBER}={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", MEMBER])
            // One member has no peers to hear from: a short election timeout only
            // makes it lead sooner (about 0.1 s instead of 1 s).
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "error", "--log-outputs"])
            .arg(self.log_file())
            .args(
                self.quota_bytes
                    .iter()
                    .flat_map(|bytes| ["--quota-backend-bytes".to_string(), bytes.to_string()]),
            )
            .args(self.tls.iter().flat_map(|tls| {
                [
                    "--cert-file".into(),
                    tls.cert.clone().into_os_string(),
                    "--key-file".into(),
                    tls.key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    tls.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.binary.display()))?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + READY_DEADLINE;
        let reason = loop {
            match child.try_wait() {
                Ok(Some(status)) => break format!("etcd exited with {status}"),
                Ok(None) => {}
                Err(e) => break format!("waiting for etcd: {e}"),
            }
            if ready(&access).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break format!("etcd not ready after {READY_DEADLINE:?}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        };
        if let Some(mut child) = self.child.take() {
            // Already exited, or hung: either way it must not hold the ports.
            let _ = child.kill().await;
        }
        Err(format!("{reason}; log: {}", log_tail(&self.log_file())))
    }
}

/// Whether etcd answers a linearizable read within half a second; a refusal for
/// want of a login (auth on, no root login given yet) is an answer too.
async fn ready(access: &EtcdAccess) -> bool {
    let probe = async {
        let mut client = connect(access).await?;
        request("get", client.get("/", None)).await
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Ok(_) | Err(DiscoveryError::Denied { .. }))
    )
}

/// `/usr/bin/etcd`, else the first `etcd` on `PATH`.
fn find_etcd() -> Result<PathBuf, DiscoveryError> {
    let system = PathBuf::from("/usr/bin/etcd");
    if system.is_file() {
        return Ok(system);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or(DiscoveryError::EtcdMissing)
}

/// Two loopback ports free right now. Both listeners are open at once so the ports
/// differ; they are closed before etcd binds them, a race the start retries cover.
fn free_ports() -> Result<(u16, u16), DiscoveryError> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| Ok((listener.local_addr()?.port(), listener)))
            .map_err(|source| DiscoveryError::EtcdProcess {
                operation: "pick a free port",
                source,
            })
    };
    let (client, _client_listener) = bind()?;
    let (peer, _peer_listener) = bind()?;
    Ok((client, peer))
}

/// The last lines of etcd's log, for start failures.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        }
        Err(e) => format!("no log at {}: {e}", path.display()),
    }
}
