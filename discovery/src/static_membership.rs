//! Membership from a fixed list: the embedded default for one machine.
//!
//! The list comes from code (the local cluster), from flags, or from a JSON file:
//!
//! ```json
//! { "shards": [["127.0.0.1:7001", "127.0.0.1:7011"], ["127.0.0.1:7002"]],
//!   "ranking": ["127.0.0.1:7101"] }
//! ```
//!
//! `shards[s]` lists the replicas of shard `s`.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

use crate::{ClusterView, DiscoveryError, Membership, NodeRecord, NodeState, Role};

/// Addresses of every node, grouped like the file format above.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSpec {
    /// Replica addresses of each shard, in shard order.
    pub shards: Vec<Vec<String>>,
    /// Ranking node addresses.
    #[serde(default)]
    pub ranking: Vec<String>,
}

impl StaticSpec {
    /// Reads a JSON membership file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, DiscoveryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| DiscoveryError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses `--shard` flags of the form `N=addr[,addr...]`.
    pub fn from_shard_flags(flags: &[String], ranking: &[String]) -> Result<Self, DiscoveryError> {
        let mut shards: Vec<Option<Vec<String>>> = Vec::new();
        for flag in flags {
            let (shard, addrs) = flag.split_once('=').ok_or_else(|| {
                DiscoveryError::Invalid(format!("shard flag {flag:?} is not N=addr[,addr]"))
            })?;
            let shard: usize = shard.trim().parse().map_err(|_| {
                DiscoveryError::Invalid(format!("shard number {shard:?} is not an integer"))
            })?;
            if shard >= 4096 {
                return Err(DiscoveryError::Invalid(format!(
                    "shard number {shard} is above the limit of 4095"
                )));
            }
            if shards.len() <= shard {
                shards.resize(shard + 1, None);
            }
            let replicas: Vec<String> = addrs
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect();
            shards[shard].get_or_insert_with(Vec::new).extend(replicas);
        }
        let shards = shards
            .into_iter()
            .enumerate()
            .map(|(shard, replicas)| {
                replicas.ok_or_else(|| {
                    DiscoveryError::Invalid(format!("no address given for shard {shard}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = Self {
            shards,
            ranking: ranking.to_vec(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks that every shard has a replica.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.shards.is_empty() {
            return Err(DiscoveryError::Invalid("no shards listed".into()));
        }
        if let Some(shard) = self.shards.iter().position(Vec::is_empty) {
            return Err(DiscoveryError::Invalid(format!(
                "shard {shard} has no replica"
            )));
        }
        Ok(())
    }

    /// The view this list describes, every node taken as serving.
    pub fn view(&self) -> ClusterView {
        let shard_count = self.shards.len() as u32;
        let retrieval = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(shard, replicas)| {
                replicas
                    .iter()
                    .enumerate()
                    .map(move |(replica, addr)| NodeRecord {
                        node_id: format!("shard-{shard}-replica-{replica}"),
                        addr: addr.clone(),
                        role: Role::Retrieval,
                        shard: Some(shard as u32),
                        shard_count: Some(shard_count),
                        bundle_version: String::new(),
                        state: NodeState::Serving,
                        versions: Vec::new(),
                    })
            });
        let ranking = self.ranking.iter().enumerate().map(|(i, addr)| NodeRecord {
            node_id: format!("ranking-{i}"),
            addr: addr.clone(),
            role: Role::Ranking,
            shard: None,
            shard_count: None,
            bundle_version: String::new(),
            state: NodeState::Serving,
            versions: Vec::new(),
        });
        ClusterView::from_nodes(retrieval.chain(ranking))
    }
}

/// A membership that never changes.
#[derive(Debug)]
pub struct StaticMembership {
    sender: watch::Sender<Arc<ClusterView>>,
}

impl StaticMembership {
    /// Membership fixed to `spec`.
    pub fn new(spec: &StaticSpec) -> Result<Self, DiscoveryError> {
        spec.validate()?;
        let (sender, _) = watch::channel(Arc::new(spec.view()));
        Ok(Self { sender })
    }
}

impl Membership for StaticMembership {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shard_flags() {
        let spec =
            StaticSpec::from_shard_flags(&["1=b:1".into(), "0=a:1, a:2".into()], &["r:1".into()])
                .unwrap();
        assert_eq!(spec.shards, vec![vec!["a:1", "a:2"], vec!["b:1"]]);
        let view = spec.view();
        assert_eq!(view.shard_count, 2);
        assert_eq!(view.shards[0].len(), 2);
    }

    #[test]
    fn rejects_gaps_and_garbage() {
        assert!(StaticSpec::from_shard_flags(&["1=b:1".into()], &[]).is_err());
        assert!(StaticSpec::from_shard_flags(&["x=b:1".into()], &[]).is_err());
        assert!(StaticSpec::from_shard_flags(&["0".into()], &[]).is_err());
        assert!(StaticSpec::from_shard_flags(&[], &[]).is_err());
    }
}
