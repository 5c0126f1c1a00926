//! Tests that cannot run here say so instead of passing: a `SKIPPED:` line on
//! stderr, a line in the skip log that CI counts, and under `CI=true` a failure
//! unless the run opted out of that tool on purpose.
//!
//! `#[ignore]` is decided at compile time, so a test whose tool (kubectl, Docker)
//! may or may not be installed decides at run time with [`skip`]. `.ci/run` sets
//! [`SKIP_LOG_VAR`] and, only when it found the tool missing itself, the opt-out.

use std::io::Write;

/// File to which every skip appends `test<TAB>reason` (set by `.ci/run`).
pub const SKIP_LOG_VAR: &str = "RECSYS_SKIP_LOG";
/// Opt-out of the tests that need kubectl.
pub const SKIP_KUBECTL_VAR: &str = "RECSYS_SKIP_KUBECTL_TESTS";
/// Opt-out of the tests that need a Docker engine.
pub const SKIP_DOCKER_VAR: &str = "RECSYS_SKIP_DOCKER_TESTS";

/// Records that `test` did not run because of `reason`. Panics instead under
/// `CI=true` (or `1`) unless `opt_out` is `1`: a CI machine that lacks a tool must
/// say it means to.
pub fn skip(test: &str, reason: &str, opt_out: &str) {
    if ci() && std::env::var(opt_out).as_deref() != Ok("1") {
        panic!(
            "{test} cannot run: {reason}; under CI this fails unless {opt_out}=1 says to skip it"
        );
    }
    // Past libtest's capture (which only takes the print macros), so that the
    // line shows although the test passes.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{test}\t{reason}"));
        if let Err(error) = logged {
            panic!(
                "cannot log the skip of {test} to {}: {error}",
                path.display()
            );
        }
    }
}

/// Whether this is a CI run (`CI=true`, as most CI systems set it, or `CI=1`).
pub fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}
