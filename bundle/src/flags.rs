//! The bundle flags every server binary takes (feature `flags`, so the library
//! itself needs no clap): `--bundle DIR`, one version served as it is, or
//! `--bundle-root ROOT`, the version its `CURRENT` pointer names (a root in an
//! object store is opened by `recsys-bundle-store`'s flags).

use std::path::PathBuf;

use clap::Args;

use crate::{BundleError, BundleSource, ResolvedBundle};

/// Where a server finds the bundle it serves.
#[derive(Debug, Clone, Args)]
pub struct BundleFlags {
    /// Bundle version directory (holds manifest.json).
    #[arg(
        long,
        env = "RECSYS_BUNDLE",
        conflicts_with = "bundle_root",
        required_unless_present = "bundle_root"
    )]
    pub bundle: Option<PathBuf>,
    /// Bundle root (versions side by side and a CURRENT pointer): serve the
    /// version CURRENT names. A directory, or s3://bucket/prefix in an
    /// S3-compatible object store for the servers (with --bundle-cache and the
    /// --s3-* flags).
    #[arg(long, env = "RECSYS_BUNDLE_ROOT")]
    pub bundle_root: Option<PathBuf>,
}

impl BundleFlags {
    /// The source the flags name.
    pub fn source(&self) -> Result<BundleSource, BundleError> {
        BundleSource::from_flags(self.bundle.clone(), self.bundle_root.clone())
    }

    /// The version to load now: reads the root's pointer, or the directory's manifest.
    pub fn resolve(&self) -> Result<ResolvedBundle, BundleError> {
        self.source()?.resolve()
    }

    /// The path given, for `--check-config` and messages, without reading it.
    pub fn given(&self) -> PathBuf {
        self.bundle
            .clone()
            .or_else(|| self.bundle_root.clone())
            .unwrap_or_default()
    }
}
