//! The tokio runtime every binary serves on, and the flag that sizes it.
//!
//! Why a flag: the runtime's threads only carry gRPC I/O (searches and ranking run
//! on their own pools), and tokio's default, one worker per core, is not always the
//! fastest. When all servers of a local cluster share one process, every loopback
//! hop between them that lands on a sleeping worker wakes it on another core, and
//! on small VMs that wake costs tens of microseconds (docs/benchmarks.md, "Gateway
//! overhead": one I/O thread cut the gateway's median overhead from 124–242 µs to
//! 45–160 µs on 2 vCPUs, at the price of 9–13 % of throughput with 16 requests in
//! flight).

/// `--io-threads N`: the runtime's worker threads.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RuntimeFlags {
    /// Threads for gRPC I/O (0 = one per core). Searches and ranking have their own
    /// pools; 1 gives the lowest latency at low load on small machines, more give
    /// more throughput under load.
    #[arg(long, env = "RECSYS_IO_THREADS", default_value_t = 0, global = true)]
    pub io_threads: usize,
}

impl RuntimeFlags {
    /// A multi-threaded runtime with I/O and timers, `io_threads` workers (0: one
    /// per core, or `TOKIO_WORKER_THREADS` when set).
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if self.io_threads > 0 {
            builder.worker_threads(self.io_threads);
        }
        builder.build()
    }
}
