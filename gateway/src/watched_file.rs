//! A small file the gateway re-reads while it runs (API keys, session keys),
//! so secrets rotate without a restart.
//!
//! The file is polled ([`POLL_INTERVAL`]) and its parse swapped in whole when
//! its bytes change; a file that has become unreadable or malformed keeps the
//! previous value (and says so in the log), since locking every client out is
//! the worse failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// How often a watched file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Reads `path` with `parse`; errors say why.
fn read<T>(
    path: &Path,
    parse: &impl Fn(&str) -> Result<T, String>,
) -> Result<(Vec<u8>, T), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "not utf-8".to_string())?;
    let value = parse(text)?;
    Ok((bytes, value))
}

/// Reads `path` (which must be valid now) with `parse`, and re-reads it every
/// [`POLL_INTERVAL`] until `shutdown`, storing each new parse; `what` names the
/// file in the log. Spawns on the current runtime.
pub fn watch<T: Send + Sync + 'static>(
    path: &Path,
    what: &'static str,
    parse: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<Arc<ArcSwap<T>>, String> {
    let (mut last, value) = read(path, &parse)?;
    tracing::info!(file = %path.display(), "{what} loaded");
    let value = Arc::new(ArcSwap::from_pointee(value));
    let shared = value.clone();
    let path: PathBuf = path.to_path_buf();
    let parse = Arc::new(parse);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let reread = {
                let (path, parse) = (path.clone(), parse.clone());
                tokio::task::spawn_blocking(move || read(&path, &*parse)).await
            };
            match reread {
                Ok(Ok((bytes, value))) if bytes != last => {
                    tracing::info!(file = %path.display(), "{what} reloaded");
                    shared.store(Arc::new(value));
                    last = bytes;
                }
                Ok(Ok(_)) => {}
                Ok(Err(reason)) => {
                    tracing::warn!(file = %path.display(), %reason, "{what} file unusable, keeping the previous ones");
                }
                Err(error) => {
                    tracing::warn!(%error, "{what} reload failed, keeping the previous ones");
                }
            }
        }
    });
    Ok(value)
}
