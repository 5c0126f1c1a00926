//! The tokio runtime every binary serves on, and the flag that sizes it.
//!
//! Why a flag, and why the default depends on the process: the runtime's threads
//! only carry gRPC I/O. A retrieval or ranking node does its real work (searches,
//! scoring) on pools of its own sized to the cores, and a single-process cluster
//! (`recsys demo`/`serve`, the benchmarks) holds those pools too; one I/O worker
//! per core on top of them puts two runnable threads on every core under load, and
//! at low load a loopback hop that lands on a sleeping worker wakes it on another
//! core, which on small VMs costs tens of microseconds. Measured on 2 vCPUs
//! (docs/benchmarks-history.md, "Gateway overhead"): half the cores (one thread) gave
//! 7–21 % more QPS at one request in flight, in a single-process cluster and with
//! one process per server; the same at 4–16 in flight; at 32, between 11 % less
//! and 2 % more in one process, and 2 % less to 7 % more with processes. The
//! gateway's work is almost all I/O (its query encoding and merge are small), so
//! it keeps one worker per core: a gateway with fewer could not use a bigger
//! host, although one thread was faster on the 2-vCPU VM.

/// `--io-threads N`: the runtime's worker threads.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RuntimeFlags {
    /// Threads for gRPC I/O (0 = the process's default: one per core for the
    /// gateway, half the cores for nodes and single-process clusters, whose
    /// searches and ranking have pools of their own).
    #[arg(long, env = "RECSYS_IO_THREADS", default_value_t = 0, global = true)]
    pub io_threads: usize,
}

/// What a process does besides gRPC I/O, which decides its default I/O threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRole {
    /// Only I/O (the gateway): one worker per core.
    IoOnly,
    /// Compute on pools of its own (nodes, single-process clusters): half the
    /// cores, at least one.
    WithComputePools,
}

impl RuntimeFlags {
    /// The worker threads a runtime gets: `io_threads` when set, else
    /// `tokio_worker_threads` (the `TOKIO_WORKER_THREADS` variable) when it is a
    /// positive number, else the role's default for `cores`.
    pub fn worker_threads(
        &self,
        role: IoRole,
        cores: usize,
        tokio_worker_threads: Option<&str>,
    ) -> usize {
        if self.io_threads > 0 {
            return self.io_threads;
        }
        if let Some(n) = tokio_worker_threads.and_then(positive) {
            return n;
        }
        let cores = cores.max(1);
        match role {
            IoRole::IoOnly => cores,
            IoRole::WithComputePools => cores.div_ceil(2),
        }
    }

    /// A multi-threaded runtime with I/O and timers, sized by
    /// [`worker_threads`](Self::worker_threads) for the cores this process may use
    /// (cgroup quotas included).
    pub fn build(&self, role: IoRole) -> std::io::Result<tokio::runtime::Runtime> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let env = std::env::var("TOKIO_WORKER_THREADS").ok();
        if let Some(value) = &env
            && self.io_threads == 0
            && positive(value).is_none()
        {
            tracing::warn!(%value, "TOKIO_WORKER_THREADS is not a positive number: ignored");
        }
        let threads = self.worker_threads(role, cores, env.as_deref());
        tracing::debug!(io_threads = threads, ?role, "starting the runtime");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(threads)
            .build()
    }
}

/// `value` as a positive thread count, if it is one.
fn positive(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_role_and_an_explicit_count_wins() {
        let default = RuntimeFlags { io_threads: 0 };
        let threads = |role, cores| default.worker_threads(role, cores, None);
        assert_eq!(threads(IoRole::IoOnly, 8), 8);
        assert_eq!(threads(IoRole::WithComputePools, 8), 4);
        assert_eq!(threads(IoRole::WithComputePools, 2), 1);
        assert_eq!(threads(IoRole::WithComputePools, 3), 2);
        assert_eq!(threads(IoRole::WithComputePools, 1), 1);
        assert_eq!(threads(IoRole::IoOnly, 0), 1);
        let explicit = RuntimeFlags { io_threads: 3 };
        assert_eq!(
            explicit.worker_threads(IoRole::WithComputePools, 8, None),
            3
        );
        assert_eq!(explicit.worker_threads(IoRole::IoOnly, 1, Some("5")), 3);
    }

    #[test]
    fn tokio_worker_threads_sizes_the_default_when_it_is_a_positive_number() {
        let default = RuntimeFlags { io_threads: 0 };
        let role = IoRole::WithComputePools;
        assert_eq!(default.worker_threads(role, 8, Some("6")), 6);
        assert_eq!(default.worker_threads(role, 8, Some(" 2 ")), 2);
        // Not a positive number: the role's default, as if it were unset.
        assert_eq!(default.worker_threads(role, 8, Some("0")), 4);
        assert_eq!(default.worker_threads(role, 8, Some("many")), 4);
    }
}
