//! `recsys bundle verify | activate | versions`: checking built bundles and
//! choosing which version of a root is served.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use recsys_bundle::root::{CURRENT_FILE, check_version_name};
use recsys_bundle::{BundleRoot, MANIFEST_FILE, verify_bundle};

/// Options of `recsys bundle verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// A bundle version directory (holds manifest.json), or a root (every version
    /// in it, and its CURRENT pointer).
    pub dir: PathBuf,
    /// Print only the summary line per version, not every file.
    #[arg(long)]
    pub quiet: bool,
}

/// Options of `recsys bundle activate`.
#[derive(Debug, Clone, Args)]
pub struct ActivateArgs {
    /// The bundle root.
    pub root: PathBuf,
    /// The version CURRENT should name; it must be complete.
    pub version: String,
}

/// Options of `recsys bundle versions`.
#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    /// The bundle root.
    pub root: PathBuf,
}

/// Verifies a version, or every version of a root; fails naming the first bad file.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    if args.dir.join(MANIFEST_FILE).exists() {
        return verify_version(&args.dir, args.quiet);
    }
    let root = BundleRoot::new(&args.dir);
    let mut versions = Vec::new();
    let entries =
        std::fs::read_dir(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden entries are builds in progress or killed: never served, not checked.
        if entry.path().is_dir() && !name.starts_with('.') {
            versions.push(name);
        }
    }
    versions.sort();
    anyhow::ensure!(
        !versions.is_empty(),
        "{}: neither a bundle version (no {MANIFEST_FILE}) nor a root with versions",
        args.dir.display()
    );
    for version in &versions {
        check_version_name(version)?;
        verify_version(&args.dir.join(version), args.quiet)?;
    }
    match root.resolve_current() {
        Ok(current) => println!(
            "{} names {}, verified above",
            args.dir.join(CURRENT_FILE).display(),
            current.version
        ),
        Err(error) if !args.dir.join(CURRENT_FILE).exists() => {
            println!(
                "no {CURRENT_FILE} pointer in {}: {error}",
                args.dir.display()
            );
        }
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

fn verify_version(dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let (manifest, report) = verify_bundle(dir)?;
    if !quiet {
        for file in &report.files {
            println!("  ok  {:>14} bytes  {}", file.bytes, file.path);
        }
    }
    println!(
        "verified bundle {} in {}: {} files, {:.1} MB, sizes and xxh3-128 checksums match, manifest consistent ({} shards, {} items) in {:.2} s",
        manifest.version,
        dir.display(),
        report.files.len(),
        report.bytes as f64 / 1e6,
        manifest.shard_count,
        manifest.items,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Points the root's CURRENT at a complete version.
pub fn activate(args: &ActivateArgs) -> anyhow::Result<()> {
    let root = BundleRoot::new(&args.root);
    let before = root.current().ok();
    root.set_current(&args.version)?;
    println!(
        "{} now names {} (was {})",
        args.root.join(CURRENT_FILE).display(),
        args.version,
        before.as_deref().unwrap_or("unset")
    );
    Ok(())
}

/// Lists the root's complete versions.
pub fn versions(args: &VersionsArgs) -> anyhow::Result<()> {
    let root = BundleRoot::new(&args.root);
    let current = root.current().ok();
    for version in root.versions()? {
        let mark = if current.as_deref() == Some(version.as_str()) {
            "*"
        } else {
            " "
        };
        println!("{mark} {version}");
    }
    Ok(())
}
