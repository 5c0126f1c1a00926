//! Finding the workspace's own binaries for a harness that starts them as
//! processes (the integration tests, `recsys-bench --processes`), and refusing one
//! that is older than the sources it was built from.
//!
//! They are looked up in the caller's own cargo profile directory
//! (`target/<profile>/`): a test executable lives in `target/<profile>/deps/`, a
//! binary such as `recsys-bench` in `target/<profile>/` itself. `CARGO_BIN_EXE_*`
//! would be exact, but cargo sets it only for binaries of the test's own package,
//! and the servers are other packages'. Nothing here builds: a nested
//! `cargo build` from inside `cargo test` waits on the lock of the build directory
//! the outer cargo may hold, builds with flags of its own choosing, and spends
//! the test's time budget compiling; `make test` builds `--workspace --bins`
//! first, and by hand `cargo build --workspace --bins` does the same.
//!
//! A binary is stale when a source file listed in the dep-info file cargo writes
//! next to it (`target/<profile>/<name>.d`, every workspace source the binary was
//! compiled from, by absolute path) is newer than the binary, or gone: exactly
//! what would make cargo rebuild it. Comparing with the test executable's own
//! modification time instead would refuse good binaries: cargo relinks only what
//! changed, so after a change to a test alone the test executable is newer than
//! every up-to-date server.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::ClusterError;

/// The directory of the running executable's cargo profile (`target/<profile>/`),
/// where the workspace's binaries are.
pub fn binaries_dir() -> Result<PathBuf, ClusterError> {
    let exe = std::env::current_exe().map_err(|source| ClusterError::OwnPath { source })?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| ClusterError::OwnPath {
            source: std::io::Error::other("the executable has no directory"),
        })?
        .to_path_buf();
    // Test executables and examples sit one level below the profile directory.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of the workspace binary `name` in `dir` (from [`binaries_dir`]),
/// refused when it is missing or older than a source it was built from.
pub fn workspace_binary(dir: &Path, name: &str) -> Result<PathBuf, ClusterError> {
    let path = dir.join(name);
    let rebuild = rebuild_command(dir);
    let built = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(built) => built,
        Err(_) => return Err(ClusterError::BinaryMissing { path, rebuild }),
    };
    let dep_info = dir.join(format!("{name}.d"));
    let text = match std::fs::read_to_string(&dep_info) {
        Ok(text) => text,
        // Not built by cargo (copied in by hand, say): nothing to compare with.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(path),
        Err(source) => {
            return Err(ClusterError::DepInfo {
                path: dep_info,
                source,
            });
        }
    };
    match newer_source(built, &dep_info_sources(&text)) {
        Some(newer) => Err(ClusterError::StaleBinary {
            binary: path,
            newer,
            rebuild,
        }),
        None => Ok(path),
    }
}

/// What to run to build the binaries of the profile in `dir`.
fn rebuild_command(dir: &Path) -> String {
    if dir.ends_with("release") {
        "cargo build --release --workspace --bins".into()
    } else {
        "cargo build --workspace --bins".into()
    }
}

/// The first of `sources` modified after `built` or no longer there.
fn newer_source(built: SystemTime, sources: &[PathBuf]) -> Option<PathBuf> {
    sources
        .iter()
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                .map_or(true, |modified| modified > built)
        })
        .cloned()
}

/// The prerequisites of a make-style dep-info file (`target: a.rs b\ c.rs`, one
/// rule a line; a space in a path is escaped with a backslash).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let Some((_, prerequisites)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = prerequisites.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ' ' => {
                    if !current.is_empty() {
                        sources.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                other => current.push(other),
            }
        }
        if !current.is_empty() {
            sources.push(PathBuf::from(current));
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn dep_info_lists_every_prerequisite_with_escaped_spaces() {
        let text = "/t/debug/gateway: /w/a.rs /w/my\\ dir/b.rs\n\n/w/a.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            [PathBuf::from("/w/a.rs"), PathBuf::from("/w/my dir/b.rs")]
        );
    }

    /// A profile directory with a binary `server` built from `main.rs`.
    fn built(dir: &Path) -> SystemTime {
        let source = dir.join("main.rs");
        std::fs::write(&source, "fn main() {}").unwrap();
        let binary = dir.join("server");
        std::fs::write(&binary, "").unwrap();
        let dep_info = format!("{}: {}\n", binary.display(), source.display());
        std::fs::write(dir.join("server.d"), dep_info).unwrap();
        let when = SystemTime::now() - Duration::from_secs(60);
        let set = |path: &Path| {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(when).unwrap();
        };
        set(&source);
        set(&binary);
        when
    }

    #[test]
    fn a_binary_as_new_as_its_sources_is_used() {
        let dir = tempfile::tempdir().unwrap();
        built(dir.path());
        let path = workspace_binary(dir.path(), "server").unwrap();
        assert_eq!(path, dir.path().join("server"));
    }

    #[test]
    fn a_binary_older_than_a_source_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        built(dir.path());
        // The source edited after the build.
        std::fs::write(dir.path().join("main.rs"), "fn main() { }").unwrap();
        let error = workspace_binary(dir.path(), "server").unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ClusterError::StaleBinary { .. }),
            "{message}"
        );
        assert!(message.contains("server is older than"), "{message}");
        assert!(message.contains("main.rs"), "{message}");
        assert!(
            message.contains("cargo build --workspace --bins"),
            "{message}"
        );
    }

    #[test]
    fn a_binary_whose_source_is_gone_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        built(dir.path());
        std::fs::remove_file(dir.path().join("main.rs")).unwrap();
        let error = workspace_binary(dir.path(), "server").unwrap_err();
        assert!(matches!(error, ClusterError::StaleBinary { .. }), "{error}");
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let message = workspace_binary(dir.path(), "gateway")
            .unwrap_err()
            .to_string();
        assert!(message.contains("gateway"), "{message}");
        assert!(
            message.contains("cargo build --workspace --bins"),
            "{message}"
        );
    }
}
