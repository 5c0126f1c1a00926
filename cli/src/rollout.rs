//! `recsys rollout`: set the cluster's desired bundle version in etcd, go back
//! to the previous one, or show per node what it serves and why not.
//!
//! Nodes watch `/recsys/{cluster}/desired_version`, load the version beside what
//! they serve and register every version they hold; gateways switch once every
//! shard has a serving replica of it (`recsys_discovery::desired_version`,
//! `recsys_discovery::versions`). `--wait` follows the registrations until the
//! cluster serves the version everywhere it should, or a node says it cannot.

use std::time::{Duration, Instant};

use recsys_discovery::desired_version::{self, Desired};
use recsys_discovery::{NodeRecord, Role, VersionPhase, nodes_prefix};

/// `recsys rollout --etcd URL --cluster C (--version V | --rollback | --status)`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["version", "rollback", "status"])))]
pub struct RolloutArgs {
    /// etcd (`--etcd` client URLs, TLS and the rollout user toward it).
    #[command(flatten)]
    etcd: recsys_discovery::flags::EtcdAccessFlags,
    /// Cluster name in etcd.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    cluster: String,
    /// The bundle version to roll out (a directory name in the bundle root).
    #[arg(long)]
    version: Option<String>,
    /// Go back to the version desired before the current one.
    #[arg(long)]
    rollback: bool,
    /// Show the desired version, the history, and per node what it serves.
    #[arg(long)]
    status: bool,
    /// After a rollout or rollback, wait up to this many seconds until every
    /// shard and the ranking pool serve the version (0: do not wait).
    #[arg(long, default_value_t = 0)]
    wait_secs: u64,
}

pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let etcd = args
        .etcd
        .access()?
        .ok_or_else(|| anyhow::anyhow!("recsys rollout needs --etcd URL"))?;
    let mut client = recsys_discovery::etcd::connect(&etcd).await?;
    let cluster = args.cluster.as_str();
    let desired = if let Some(version) = &args.version {
        recsys_bundle::root::check_version_name(version)?;
        let desired = desired_version::rollout(&mut client, cluster, version).await?;
        println!("desired version of cluster {cluster} is now {version}");
        Some(desired)
    } else if args.rollback {
        let desired = desired_version::rollback(&mut client, cluster).await?;
        println!(
            "rolled cluster {cluster} back to {}",
            desired.version.as_deref().unwrap_or("?")
        );
        Some(desired)
    } else {
        None
    };
    if let Some(Desired {
        version: Some(version),
        ..
    }) = &desired
        && args.wait_secs > 0
    {
        return wait(
            &mut client,
            cluster,
            version,
            Duration::from_secs(args.wait_secs),
        )
        .await;
    }
    if args.status {
        status(&mut client, cluster).await?;
    }
    Ok(())
}

/// Every node registration of `cluster`, draining ones included.
async fn nodes(client: &mut etcd_client::Client, cluster: &str) -> anyhow::Result<Vec<NodeRecord>> {
    let prefix = nodes_prefix(cluster);
    let listed = recsys_discovery::etcd::request(
        "get",
        client.get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let mut nodes: Vec<NodeRecord> = listed
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    nodes.sort_by(|a, b| {
        (a.role.as_str(), a.shard, &a.node_id).cmp(&(b.role.as_str(), b.shard, &b.node_id))
    });
    Ok(nodes)
}

/// What a node serves, one line.
fn describe(node: &NodeRecord, desired: Option<&str>) -> String {
    let role = match (node.role, node.shard) {
        (Role::Retrieval, Some(shard)) => format!("retrieval shard {shard}"),
        (role, _) => role.to_string(),
    };
    let versions = if node.versions.is_empty() {
        format!("{} (serving)", node.bundle_version)
    } else {
        node.versions
            .iter()
            .map(|state| {
                let primary = if state.version == node.bundle_version {
                    "*"
                } else {
                    ""
                };
                match state.state {
                    VersionPhase::Failed => {
                        format!("{}{primary} (failed: {})", state.version, state.error)
                    }
                    phase => format!("{}{primary} ({})", state.version, phase.as_str()),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let why_not = match desired {
        Some(desired) if !node.serves_version(desired) => {
            match node.versions.iter().find(|s| s.version == desired) {
                Some(state) if state.state == VersionPhase::Loading => {
                    "  <- loading the desired version".to_string()
                }
                Some(state) if state.state == VersionPhase::Failed => {
                    "  <- cannot load the desired version".to_string()
                }
                _ => "  <- does not serve the desired version".to_string(),
            }
        }
        _ => String::new(),
    };
    format!(
        "  {:<24} {:<20} {:?}  {versions}{why_not}",
        node.node_id, role, node.state
    )
}

async fn status(client: &mut etcd_client::Client, cluster: &str) -> anyhow::Result<()> {
    let desired = desired_version::read(client, cluster).await?;
    let wanted = desired.version.as_deref();
    println!(
        "cluster {cluster}: desired version {}",
        wanted.unwrap_or("(none set: nodes serve their bundle root's CURRENT)")
    );
    let stack = desired.stack();
    if !stack.is_empty() {
        println!("rollout stack (a rollback pops): {}", stack.join(" -> "));
    }
    for entry in desired.history.iter().rev().take(5) {
        println!(
            "  {:?} {} at {} ms",
            entry.action, entry.version, entry.unix_ms
        );
    }
    let nodes = nodes(client, cluster).await?;
    println!(
        "nodes ({}; * marks the version each answers with by default):",
        nodes.len()
    );
    for node in &nodes {
        println!("{}", describe(node, wanted));
    }
    if let Some(version) = wanted {
        let view = recsys_discovery::ClusterView::from_nodes(nodes.iter().cloned());
        let shard_count = nodes
            .iter()
            .find_map(|node| {
                node.versions
                    .iter()
                    .find(|s| s.version == version)
                    .and_then(|s| s.shard_count)
            })
            .or(Some(view.shard_count).filter(|&n| n > 0));
        match shard_count {
            Some(count) if view.can_serve(version, count, !view.ranking.is_empty()) => {
                println!("every shard and the ranking pool serve {version}: gateways switch to it");
            }
            _ => println!("{version} is not served everywhere yet: gateways keep their version"),
        }
    }
    Ok(())
}

/// Follows the registrations until the cluster serves `version` everywhere,
/// or a node failed to load it, or `limit` passes.
async fn wait(
    client: &mut etcd_client::Client,
    cluster: &str,
    version: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let nodes = nodes(client, cluster).await?;
        let failed: Vec<String> = nodes
            .iter()
            .filter_map(|node| {
                node.versions
                    .iter()
                    .find(|s| s.version == version && s.state == VersionPhase::Failed)
                    .map(|s| format!("{}: {}", node.node_id, s.error))
            })
            .collect();
        if !failed.is_empty() {
            status(client, cluster).await?;
            anyhow::bail!("{version} failed to load on {}", failed.join("; "));
        }
        let view = recsys_discovery::ClusterView::from_nodes(nodes.iter().cloned());
        let shard_count = nodes.iter().find_map(|node| {
            node.versions
                .iter()
                .find(|s| s.version == version)
                .and_then(|s| s.shard_count)
        });
        if let Some(count) = shard_count
            && view.can_serve(version, count, !view.ranking.is_empty())
        {
            println!(
                "every shard{} serves {version} after {:.1} s",
                if view.ranking.is_empty() {
                    ""
                } else {
                    " and the ranking pool"
                },
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= limit {
            status(client, cluster).await?;
            anyhow::bail!("{version} is not served everywhere after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
