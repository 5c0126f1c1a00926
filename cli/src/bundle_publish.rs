//! `recsys bundle publish`: uploads a built version to a bundle root in an
//! S3-compatible object store (`recsys_bundle_store::publish`), whose servers
//! (`--bundle-root s3://...`) fetch it from there.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use recsys_bundle_store::flags::S3Flags;

/// Options of `recsys bundle publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The version to publish: a bundle version directory (holds manifest.json),
    /// verified before anything is uploaded.
    #[arg(long, env = "RECSYS_BUNDLE")]
    pub bundle: PathBuf,
    /// The root in the store: s3://bucket/prefix.
    #[arg(long)]
    pub to: String,
    /// Point the root's CURRENT at the version once it is uploaded.
    #[arg(long)]
    pub set_current: bool,
    #[command(flatten)]
    pub s3: S3Flags,
}

/// Publishes the version; prints what was uploaded.
pub fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    let store = args.s3.open(&args.to)?;
    let report = recsys_bundle_store::publish(&store, &args.bundle, args.set_current)
        .with_context(|| format!("publishing {} to {}", args.bundle.display(), args.to))?;
    if report.files == 0 {
        println!(
            "{}/{}: already published with the same manifest",
            args.to, report.version
        );
    } else {
        println!(
            "published {} to {}/{}: {} files, {} bytes in {:.1} s",
            args.bundle.display(),
            args.to,
            report.version,
            report.files,
            report.bytes,
            report.elapsed.as_secs_f64()
        );
    }
    if report.current {
        println!("{}/CURRENT names {}", args.to, report.version);
    }
    Ok(())
}
