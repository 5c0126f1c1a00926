//! One bundle version as a node holds it: loading, serving, or failed with the
//! reason. Nodes register the list of these (`NodeRecord::versions`) so that a
//! gateway can tell when every shard has a serving replica of a version, and
//! `recsys rollout --status` can say per node what it serves and why not.

use serde::{Deserialize, Serialize};

/// Where a node stands with one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPhase {
    /// Being read and verified beside what the node serves.
    Loading,
    /// Loaded; requests naming it are answered from it.
    Serving,
    /// Its load failed; `error` says why (the file and what is wrong).
    Failed,
}

impl VersionPhase {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Serving => "serving",
            Self::Failed => "failed",
        }
    }
}

/// One version of a node: what it is, where it stands, why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionState {
    /// The bundle version's name.
    pub version: String,
    /// Loading, serving or failed.
    pub state: VersionPhase,
    /// Why the load failed; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Shards the version is cut into (retrieval nodes): two versions of one
    /// cluster may be cut differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<u32>,
}

impl VersionState {
    /// Whether this is `version`, serving.
    pub fn serves(&self, version: &str) -> bool {
        self.state == VersionPhase::Serving && self.version == version
    }
}
