//! One thread per matrix product in serving processes, unless the operator says
//! otherwise.
//!
//! Why: candle splits each matrix product over `RAYON_NUM_THREADS` threads
//! (default: one per physical core). A ranking node already scores on several
//! threads of its own (`--threads`, one batch each), and a forward pass over 200
//! candidates is small: splitting it hands each half to another thread and
//! waits, which on a 2-core VM made a pass 2.7× slower (0.23 → 0.62 ms) and cost
//! the ranking node 3.5× the CPU per request at saturation (docs/benchmarks.md,
//! "End-to-end cost"). TF Serving exposes the same choice as its intra-op
//! thread pool.
//!
//! candle reads the variable at every product, so it is set here, at the very
//! start of `main`, before any thread exists: `std::env::set_var` is only sound
//! while no other thread reads or writes the environment.

/// The variable candle and rayon read; `CANDLE_NUM_THREADS` overrides it for candle.
const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";
const CANDLE_NUM_THREADS: &str = "CANDLE_NUM_THREADS";

/// Whether a serving process should set one kernel thread: neither variable is set.
fn wants_default(var: impl Fn(&str) -> Option<String>) -> bool {
    var(RAYON_NUM_THREADS).is_none() && var(CANDLE_NUM_THREADS).is_none()
}

/// Sets `RAYON_NUM_THREADS=1` unless it or `CANDLE_NUM_THREADS` is set.
///
/// Call first thing in `main`, before logging, the runtime or anything else
/// that starts a thread.
#[allow(unsafe_code)]
pub fn one_per_product_by_default() {
    if wants_default(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())) {
        // SAFETY: called at the start of `main`, while this is the process's only
        // thread, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(RAYON_NUM_THREADS, "1") };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_choice_is_kept() {
        assert!(wants_default(|_| None));
        for set in [RAYON_NUM_THREADS, CANDLE_NUM_THREADS] {
            assert!(!wants_default(|name| (name == set).then(|| "4".into())));
        }
    }
}
