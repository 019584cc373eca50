//! The clock readings on the path of every permit: an acquire's arrival and
//! a release.
//!
//! `Instant::now()` is a `clock_gettime` through the vDSO; on the virtual
//! machines this project runs on it costs ~37 ns a reading, the largest single
//! item of an uncontended acquire + release (two readings, 22% of the time in
//! `perf`; see docs/benchmarks.md). Where the CPU has an invariant time stamp
//! counter, [`now`] reads it instead (through `quanta`, which checks the CPU
//! and calibrates the counter against the OS clock once, at start, for up to
//! 200 ms), ~13 ns a reading, and turns it into a tokio `Instant`.
//!
//! Such a reading must not wander from the OS clock, which tokio's timers
//! keep: deadlines made from it are slept on. So the counter's time is pinned
//! to the OS clock again whenever a reading finds the last pin more than
//! [`RESYNC`] old (that reading is the OS clock's own). Between two pins a
//! reading can only be off by the counter's drift against the OS clock over
//! [`RESYNC`]: NTP slews the OS clock by at most 500 ppm, i.e. 50 us, and
//! typically by a few ppm, well under a microsecond. Without an invariant
//! counter, `quanta` reads the OS clock, and so does this.
//!
//! Everything else in the ledger (timeouts, the reaper, statuses) reads
//! tokio's clock. Unit tests, and builds with the `paused-clock` feature (the
//! fuzz targets), read tokio's clock here too, so that paused time governs
//! every reading.

use tokio::time::Instant;

/// How long the counter's time runs between two pins to the OS clock.
const RESYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// The current time, cheaply: see the module docs.
#[cfg(not(any(test, feature = "paused-clock")))]
pub(crate) fn now() -> Instant {
    fast::clock().now()
}

/// The current time: tokio's, which paused time controls.
#[cfg(any(test, feature = "paused-clock"))]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Calibrates the counter now rather than on the first acquire (up to
/// 200 ms, once per process).
pub(crate) fn init() {
    #[cfg(not(any(test, feature = "paused-clock")))]
    fast::clock();
}

// Built in every configuration, so that its tests run; only read from
// `now` without paused time.
#[cfg_attr(any(test, feature = "paused-clock"), allow(dead_code))]
mod fast {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::RESYNC;

    /// The widest gap between two OS readings around a counter reading that
    /// pins it: a few readings' worth.
    const TIGHT: Duration = Duration::from_micros(20);

    /// The counter pinned to the OS clock.
    pub(super) struct Fast {
        counter: quanta::Clock,
        /// An OS reading and the counter at the same moment.
        base: std::time::Instant,
        base_raw: u64,
        /// Nanoseconds to add to the counter's time since `base_raw` to get
        /// the OS clock's since `base`, as of the last pin.
        correction: AtomicI64,
        /// The counter at the last pin.
        pinned_raw: AtomicU64,
        /// The counter ticks of [`RESYNC`].
        resync_ticks: u64,
    }

    pub(super) fn clock() -> &'static Fast {
        static CLOCK: OnceLock<Fast> = OnceLock::new();
        CLOCK.get_or_init(Fast::new)
    }

    /// The OS clock and the counter read at one moment: the counter between
    /// two OS readings at most [`TIGHT`] apart, the OS time their middle.
    /// `None` if they were further apart (the thread was preempted).
    fn tight(counter: &quanta::Clock) -> Option<(std::time::Instant, u64)> {
        let before = std::time::Instant::now();
        let raw = counter.raw();
        let after = std::time::Instant::now();
        let gap = after.duration_since(before);
        (gap <= TIGHT).then(|| (before + gap / 2, raw))
    }

    impl Fast {
        pub(super) fn new() -> Fast {
            let counter = quanta::Clock::new();
            let (base, base_raw) = (0..100)
                .find_map(|_| tight(&counter))
                .unwrap_or_else(|| (std::time::Instant::now(), counter.raw()));
            // The ticks of RESYNC: the counter is not nanoseconds. (Without
            // an invariant counter, quanta's raw readings are nanoseconds.)
            const PROBE: u64 = 1 << 40;
            let probe_ns = counter.delta_as_nanos(0, PROBE).max(1);
            let resync_ticks =
                u64::try_from(RESYNC.as_nanos() * u128::from(PROBE) / u128::from(probe_ns))
                    .unwrap_or(u64::MAX);
            Fast {
                counter,
                base,
                base_raw,
                correction: AtomicI64::new(0),
                pinned_raw: AtomicU64::new(base_raw),
                resync_ticks: resync_ticks.max(1),
            }
        }

        pub(super) fn now(&self) -> Instant {
            let raw = self.counter.raw();
            // Saturating: a reading behind the last pin (another core's, a
            // hair behind) is not a reason to pin again.
            if raw.saturating_sub(self.pinned_raw.load(Ordering::Relaxed)) > self.resync_ticks {
                if let Some(os) = self.pin() {
                    return os;
                }
            }
            self.counted(raw)
        }

        /// The counter's time at `raw`, as of the last pin.
        fn counted(&self, raw: u64) -> Instant {
            let since = self.counter.delta_as_nanos(self.base_raw, raw) as i64
                + self.correction.load(Ordering::Relaxed);
            Instant::from_std(self.base + Duration::from_nanos(since.max(0) as u64))
        }

        /// Reads the OS clock and pins the counter's time to it; returns the
        /// OS reading. `None` if the thread was preempted while reading the
        /// two (the next reading tries again).
        #[cold]
        pub(super) fn pin(&self) -> Option<Instant> {
            let (os, raw) = tight(&self.counter)?;
            let counted = self.counter.delta_as_nanos(self.base_raw, raw) as i64;
            let actual = i64::try_from(os.duration_since(self.base).as_nanos()).unwrap_or(i64::MAX);
            self.correction
                .store(actual.saturating_sub(counted), Ordering::Relaxed);
            self.pinned_raw.store(raw, Ordering::Relaxed);
            Some(Instant::from_std(os))
        }

        /// The counter at the last pin.
        #[cfg(test)]
        pub(super) fn pinned_raw(&self) -> u64 {
            self.pinned_raw.load(Ordering::Relaxed)
        }

        /// Puts the counter's time `ns` ahead of the OS clock, as a counter
        /// that ran fast since the last pin would be.
        #[cfg(test)]
        pub(super) fn skew(&self, ns: i64) {
            self.correction.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::RESYNC;
    use super::fast::Fast;

    /// The counter's error allowed against the OS clock. Readings are
    /// bracketed by OS readings, so a preempted test thread widens the
    /// bracket instead of failing the test.
    const ERROR: Duration = Duration::from_micros(200);

    /// `read()` between two OS readings, shifted by `offset`, lies between
    /// them give or take ERROR.
    fn bracketed(offset: Duration, read: impl FnOnce() -> Instant) {
        let before = Instant::now();
        let reading = read();
        let after = Instant::now();
        assert!(
            before + offset <= reading + ERROR && reading <= after + offset + ERROR,
            "{reading:?} not in [{before:?}, {after:?}] + {offset:?}"
        );
    }

    /// The real counter against the real OS clock (this test is about the
    /// clock itself, so no paused time): readings track the OS clock, a
    /// reading past RESYNC pins, and readings after the pin track it too.
    #[test]
    fn the_counter_tracks_the_os_clock_and_pins_itself_to_it() {
        let clock = Fast::new();
        bracketed(Duration::ZERO, || clock.now());
        let pinned = clock.pinned_raw();
        std::thread::sleep(RESYNC + Duration::from_millis(20));
        bracketed(Duration::ZERO, || clock.now());
        assert!(clock.pinned_raw() > pinned, "a reading past RESYNC pins");
        for _ in 0..1000 {
            bracketed(Duration::ZERO, || clock.now());
        }
    }

    /// A counter that ran 50 ms ahead of the OS clock is brought back to it
    /// by the next pin, and readings after it stay there.
    #[test]
    fn a_pin_corrects_the_counters_drift() {
        let clock = Fast::new();
        let ahead = Duration::from_millis(50);
        clock.skew(ahead.as_nanos() as i64);
        bracketed(ahead, || clock.now());
        let pinned = (0..100)
            .find_map(|_| clock.pin())
            .expect("an unpreempted pin");
        let after = Instant::now();
        assert!(pinned <= after, "the pin is the OS clock's reading");
        bracketed(Duration::ZERO, || clock.now());
    }
}
