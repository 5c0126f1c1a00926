//! An adaptive concurrency limit: the admission limit follows the latency the
//! server's own calls see, in the manner of Netflix's concurrency-limits
//! (Vegas and gradient) and Envoy's adaptive concurrency filter.
//!
//! Why: a fixed limit is measured on one host under one load. Past the knee of
//! the throughput curve every extra call in flight only queues, and how many calls
//! that is depends on the host's speed, the request mix and what else runs on the
//! cores. The latency of admitted calls says when the server is past it: at the
//! knee latency starts to grow while throughput does not.
//!
//! How: calls are sampled in windows (at least [`WINDOW`] long and
//! [`MIN_SAMPLES`] calls). The baseline is the smallest window mean seen in the
//! last one to two [`BASELINE_PERIOD`]s (a windowed minimum, as BBR keeps its
//! minimum RTT), so it follows a change in the work itself while a sustained
//! overload cannot raise it: the limit it drives down brings latency back to the
//! baseline. When a window's mean exceeds [`TOLERANCE`] times the baseline the
//! limit shrinks by the ratio (at most halving; multiplicative decrease); when
//! more than [`TAIL_SHARE`] of its calls took over [`TAIL_TOLERANCE`] times the
//! baseline (the tail, which the mean hides) it shrinks by one; and when the
//! window used the whole limit with neither, the limit grows by one (additive
//! increase). Only a window in which calls were refused shrinks it: without
//! refusals the demand fits under the limit, slow calls are not queueing behind
//! it (a replica failing over, a slow shard), and a smaller limit would only
//! refuse calls that are being answered. A window in which the server never
//! reached its limit says nothing about a larger one, and leaves it unchanged; one that stayed
//! under half of it cannot blame slow calls on concurrency, and does not
//! shrink it either (the work itself got slower, or something else did). The limit stays
//! between a floor (never below what one core's worth of calls needs) and the
//! configured ceiling.
//!
//! The algorithm is a plain state machine fed with samples and the clock, so its
//! behaviour is tested without timing anything.

use std::time::{Duration, Instant};

/// Shortest sampling window.
pub const WINDOW: Duration = Duration::from_millis(50);

/// Fewest calls in a window before it is judged; fewer say too little.
pub const MIN_SAMPLES: u32 = 8;

/// How long a window mean counts as the baseline candidate: the baseline is the
/// smallest mean of the current period and the one before it.
pub const BASELINE_PERIOD: Duration = Duration::from_secs(5);

/// A window whose mean latency is within this factor of the baseline is not
/// congested. Two: the admitted tail (p99) stays within about three times the
/// unloaded one, the overload target of docs/benchmarks.md, while a queue of
/// about one call per slot is allowed, which keeps the server busy.
pub const TOLERANCE: f64 = 2.0;

/// A call slower than this many times the baseline (mean) is in the tail. Two
/// and a half: an unloaded server's p99 is about one and a half times its mean,
/// so this is about 1.7 times the unloaded p99, which leaves room inside the
/// overload target of three for what the gateway sees too late (the refusals
/// queued ahead of a call, the wire, the client): with 4 and 3 the client saw
/// 4.1 and 3.2 times at five times the saturating rate (docs/benchmarks.md).
pub const TAIL_TOLERANCE: f64 = 2.5;

/// The share of a window's calls that may be in the tail: one in a hundred, the
/// p99 the overload target is about. Past it the limit shrinks by one. Why a
/// second test beside the mean: at five times the saturating rate the refused
/// calls take turns on the cores with the admitted ones, and with two in flight
/// the mean stayed within [`TOLERANCE`] while the p99 reached four times the
/// unloaded one (docs/benchmarks-history.md, "Overload").
pub const TAIL_SHARE: f64 = 0.01;

/// The limit's state: fed with finished calls, it says when the limit changes.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    floor: usize,
    ceiling: usize,
    limit: usize,
    window_start: Option<Instant>,
    window_sum: Duration,
    window_count: u32,
    /// Calls of the window slower than [`TAIL_TOLERANCE`] times the baseline.
    window_tail: u32,
    /// Whether a call was refused during the window.
    window_refused: bool,
    /// The most calls in flight seen during the window (at admission).
    window_peak: usize,
    period_start: Option<Instant>,
    period_min: Option<Duration>,
    previous_period_min: Option<Duration>,
    /// Windows judged so far.
    windows: u64,
}

impl AdaptiveLimit {
    /// A limit between `floor` and `ceiling` (both at least 1), starting at the
    /// ceiling: an idle server has no latency to judge, and starting low would
    /// shed the first burst of an unloaded server.
    pub fn new(floor: usize, ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        let floor = floor.clamp(1, ceiling);
        Self {
            floor,
            ceiling,
            limit: ceiling,
            window_start: None,
            window_sum: Duration::ZERO,
            window_count: 0,
            window_tail: 0,
            window_refused: false,
            window_peak: 0,
            period_start: None,
            period_min: None,
            previous_period_min: None,
            windows: 0,
        }
    }

    /// How many windows have been judged.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The baseline latency, once a window has been judged.
    pub fn baseline(&self) -> Option<Duration> {
        match (self.period_min, self.previous_period_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One call refused at the limit.
    pub fn refused(&mut self) {
        self.window_refused = true;
    }

    /// One call admitted with `in_flight` calls (itself included) holding slots.
    pub fn admitted(&mut self, in_flight: usize) {
        self.window_peak = self.window_peak.max(in_flight);
    }

    /// One admitted call took `latency`, finishing at `now`. Returns the new
    /// limit when it changed.
    pub fn finished(&mut self, latency: Duration, now: Instant) -> Option<usize> {
        let start = *self.window_start.get_or_insert(now);
        self.window_sum = self.window_sum.saturating_add(latency);
        self.window_count = self.window_count.saturating_add(1);
        if let Some(baseline) = self.baseline()
            && latency.as_secs_f64() > TAIL_TOLERANCE * baseline.as_secs_f64()
        {
            self.window_tail = self.window_tail.saturating_add(1);
        }
        if self.window_count < MIN_SAMPLES || now.saturating_duration_since(start) < WINDOW {
            return None;
        }
        let mean = self.window_sum / self.window_count;
        let tail = f64::from(self.window_tail) / f64::from(self.window_count);
        let peak = self.window_peak;
        let refused = std::mem::take(&mut self.window_refused);
        self.window_start = Some(now);
        self.window_sum = Duration::ZERO;
        self.window_count = 0;
        self.window_tail = 0;
        self.window_peak = 0;
        self.judge(mean, tail, refused, peak, now)
    }

    /// `tail`: the share of the window's calls in the tail; `refused`: whether
    /// the limit refused a call during it.
    fn judge(
        &mut self,
        mean: Duration,
        tail: f64,
        refused: bool,
        peak: usize,
        now: Instant,
    ) -> Option<usize> {
        self.windows += 1;
        let period_start = *self.period_start.get_or_insert(now);
        if now.saturating_duration_since(period_start) >= BASELINE_PERIOD {
            self.previous_period_min = self.period_min.take();
            self.period_start = Some(now);
        }
        self.period_min = Some(self.period_min.map_or(mean, |m| m.min(mean)));
        let baseline = self.baseline().unwrap_or(mean);
        let ratio = mean.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        let before = self.limit;
        if refused && ratio > TOLERANCE && peak.saturating_mul(2) >= before {
            // Shrink toward the limit at which latency would be back within
            // tolerance, by at most half per window so one slow window (a GC
            // pause elsewhere, a page fault) cannot collapse the limit.
            let factor = (TOLERANCE / ratio).max(0.5);
            let shrunk = (before as f64 * factor).floor() as usize;
            self.limit = shrunk.min(before.saturating_sub(1)).max(self.floor);
        } else if refused && tail > TAIL_SHARE && peak.saturating_mul(2) >= before {
            self.limit = before.saturating_sub(1).max(self.floor);
        } else if peak >= before {
            self.limit = before.saturating_add(1).min(self.ceiling);
        }
        (self.limit != before).then_some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds calls of `latency` that kept `in_flight` calls busy until
    /// `windows` more windows were judged, returning the clock after them.
    fn feed(
        limit: &mut AdaptiveLimit,
        mut now: Instant,
        windows: usize,
        latency: Duration,
        in_flight: usize,
    ) -> Instant {
        let until = limit.windows() + windows as u64;
        while limit.windows() < until {
            limit.admitted(in_flight);
            // Demand at the limit: the excess is refused.
            if in_flight >= limit.limit() {
                limit.refused();
            }
            now += WINDOW / MIN_SAMPLES + Duration::from_micros(1);
            limit.finished(latency, now);
        }
        now
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn latency_far_above_the_baseline_shrinks_the_limit_to_the_floor_at_most() {
        let mut limit = AdaptiveLimit::new(2, 32);
        let now = feed(&mut limit, Instant::now(), 4, FAST, 1);
        assert_eq!(limit.limit(), 32, "an idle server keeps its ceiling");
        assert_eq!(limit.baseline(), Some(FAST));
        feed(&mut limit, now, 1, 10 * FAST, 32);
        assert_eq!(limit.limit(), 16, "at most halved by one window");
        feed(&mut limit, now, 20, 10 * FAST, 32);
        assert_eq!(limit.limit(), 2, "never below the floor");
    }

    #[test]
    fn a_binding_limit_with_latency_in_tolerance_grows_by_one_up_to_the_ceiling() {
        let mut limit = AdaptiveLimit::new(1, 6);
        let now = feed(&mut limit, Instant::now(), 1, FAST, 1);
        feed(&mut limit, now, 4, 40 * FAST, 6);
        let low = limit.limit();
        assert!(low < 6, "congestion shrinks it: {low}");
        // Latency back at the baseline, and the server uses every slot.
        let now = feed(&mut limit, now, 1, FAST, low);
        assert_eq!(limit.limit(), low + 1);
        feed(&mut limit, now, 20, FAST, 6);
        assert_eq!(limit.limit(), 6, "never above the ceiling");
    }

    /// A mean within tolerance hides a tail: when more than one call in a hundred
    /// takes over [`TAIL_TOLERANCE`] times the baseline while calls are refused,
    /// the limit comes down one a window, and no tail lets it grow again.
    #[test]
    fn a_slow_tail_under_a_mean_in_tolerance_shrinks_the_limit_by_one() {
        let mut limit = AdaptiveLimit::new(1, 4);
        let mut now = feed(&mut limit, Instant::now(), 2, FAST, 1);
        // Windows of MIN_SAMPLES calls at the baseline but one at 6x: mean
        // (7 + 6) / 8 = 1.6x, inside TOLERANCE; tail 1 in 8.
        let window = |limit: &mut AdaptiveLimit, now: &mut Instant, slow: bool| {
            let before = limit.windows();
            let mut i = 0;
            while limit.windows() == before {
                limit.admitted(limit.limit());
                limit.refused();
                *now += WINDOW / MIN_SAMPLES + Duration::from_micros(1);
                let latency = if slow && i == 0 { 6 * FAST } else { FAST };
                limit.finished(latency, *now);
                i += 1;
            }
        };
        window(&mut limit, &mut now, true);
        assert_eq!(limit.limit(), 3);
        window(&mut limit, &mut now, true);
        window(&mut limit, &mut now, true);
        assert_eq!(limit.limit(), 1, "down to the floor, one a window");
        window(&mut limit, &mut now, true);
        assert_eq!(limit.limit(), 1);
        window(&mut limit, &mut now, false);
        assert_eq!(limit.limit(), 2, "no tail: grows again");
    }

    /// Slow calls with nothing refused (a replica failing over under a load the
    /// limit admits whole) leave the limit: shrinking it would refuse calls
    /// that are being answered.
    #[test]
    fn slow_windows_without_refusals_never_shrink_the_limit() {
        let mut limit = AdaptiveLimit::new(1, 8);
        let mut now = feed(&mut limit, Instant::now(), 2, FAST, 1);
        for _ in 0..10 * MIN_SAMPLES {
            limit.admitted(8);
            now += WINDOW / MIN_SAMPLES + Duration::from_micros(1);
            limit.finished(20 * FAST, now);
        }
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn a_window_that_never_reached_the_limit_leaves_it() {
        let mut limit = AdaptiveLimit::new(1, 8);
        let now = feed(&mut limit, Instant::now(), 1, FAST, 1);
        feed(&mut limit, now, 2, 30 * FAST, 8);
        let after_congestion = limit.limit();
        feed(&mut limit, now, 10, FAST, 1);
        assert_eq!(limit.limit(), after_congestion);
    }

    #[test]
    fn the_baseline_follows_slower_work_after_two_periods_and_never_rises_sooner() {
        let mut limit = AdaptiveLimit::new(1, 8);
        let now = feed(&mut limit, Instant::now(), 1, FAST, 1);
        // Work that is inherently 3x slower, at low concurrency (no queueing).
        let slower = 3 * FAST;
        let mut now = now;
        let windows_per_period = (BASELINE_PERIOD.as_micros() / WINDOW.as_micros()) as usize + 1;
        now = feed(&mut limit, now, windows_per_period / 2, slower, 1);
        assert_eq!(limit.baseline(), Some(FAST), "one period is not enough");
        now = feed(&mut limit, now, 3 * windows_per_period, slower, 1);
        assert_eq!(limit.baseline(), Some(slower));
        // And then the slower work at the full limit is not congestion.
        feed(&mut limit, now, 5, slower, 8);
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn windows_need_both_enough_calls_and_enough_time() {
        let mut limit = AdaptiveLimit::new(1, 8);
        let start = Instant::now();
        for i in 0..(4 * MIN_SAMPLES) {
            limit.admitted(8);
            // All within one window's time: no judgement yet.
            assert_eq!(
                limit.finished(FAST, start + Duration::from_micros(u64::from(i))),
                None
            );
        }
        assert_eq!(limit.baseline(), None);
        let mut few = AdaptiveLimit::new(1, 8);
        for i in 0..(MIN_SAMPLES - 1) {
            few.finished(FAST, start + i * WINDOW);
        }
        assert_eq!(few.baseline(), None, "too few calls over a long time");
    }
}
