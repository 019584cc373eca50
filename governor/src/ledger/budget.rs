//! The retry budget: retries may add at most a fixed share to the load.
//!
//! # Why a budget and not a maximum number of retries?
//! "Retry up to 3 times" multiplies the load by 4 at the moment a dependency
//! is already overloaded: the retry storm that turns a slowdown into an outage.
//! A budget instead caps retries as a share of first attempts, like Finagle's
//! and Linkerd's: every first attempt deposits `ratio` tokens, every retry
//! withdraws one, and a small reserve of `min_per_second` retries a second keeps
//! low-traffic callers able to retry at all.
//!
//! # The window
//! Deposits and withdrawals are counted in a ring of slots, each a tenth of the
//! `ttl`. A deposit counts for at most `ttl` (ten slots, it may leave up to a
//! slot early) and a withdrawal for at least `ttl` (eleven slots), so rounding
//! always errs against retrying. This gives the budget's guarantee:
//! for every window of `ttl` that ends at a granted retry, retries in it are
//! at most `ratio` × the first attempts in it, plus `min_per_second` × `ttl`
//! (a window ending elsewhere holds no more retries than the one ending at its
//! last retry). Amounts are integer milli-tokens, so the sums never drift.

use std::time::Duration;

use tokio::time::Instant;

use super::limits::BudgetConfig;

const SLOTS: usize = 10;
/// Withdrawals stay one slot longer than deposits; see the module docs.
const RING: usize = SLOTS + 1;
const MILLI: u64 = 1000;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    config: BudgetConfig,
    deposit: u64,
    reserve: u64,
    slot_width: Duration,
    origin: Instant,
    /// Index of the slot `now` falls in, counted from `origin`.
    current: u64,
    /// When slot `current + 1` starts: before it, `advance` has nothing to
    /// do (the common case, and one comparison).
    next_slot: Instant,
    window: Window,
}

/// Milli-tokens per slot, in a ring of `RING` positions; slot `i` lives at `i % RING`.
#[derive(Clone, Debug, Default)]
struct Window {
    deposits: [u64; RING],
    withdrawals: [u64; RING],
    deposited: u64,
    withdrawn: u64,
}

impl Window {
    /// Entering slot `index`: withdrawals made RING slots ago leave (their
    /// ring position is reused now), and so do deposits made SLOTS slots ago.
    fn enter(&mut self, index: u64) {
        let reused = position(index);
        self.withdrawn -= std::mem::take(&mut self.withdrawals[reused]);
        self.deposited -= std::mem::take(&mut self.deposits[reused]);
        if index >= SLOTS as u64 {
            let old = position(index - SLOTS as u64);
            self.deposited -= std::mem::take(&mut self.deposits[old]);
        }
    }

    fn balance(&self, reserve: u64) -> u64 {
        (reserve + self.deposited).saturating_sub(self.withdrawn)
    }
}

fn position(index: u64) -> usize {
    (index % RING as u64) as usize
}

impl RetryBudget {
    pub(crate) fn new(config: BudgetConfig, now: Instant) -> Self {
        RetryBudget {
            deposit: (config.ratio * MILLI as f64).round() as u64,
            reserve: u64::from(config.min_per_second) * config.ttl.as_millis() as u64,
            slot_width: config.ttl / SLOTS as u32,
            config,
            origin: now,
            current: 0,
            // (Unreachable overflow: then every call advances, correctly.)
            next_slot: now.checked_add(config.ttl / SLOTS as u32).unwrap_or(now),
            window: Window::default(),
        }
    }

    /// Applies new settings. A new `ttl` changes the window, so it starts over;
    /// a new ratio or reserve keeps what was counted.
    pub(crate) fn reconfigure(&mut self, config: BudgetConfig, now: Instant) {
        if config.ttl != self.config.ttl {
            *self = RetryBudget::new(config, now);
        } else {
            self.config = config;
            self.deposit = (config.ratio * MILLI as f64).round() as u64;
            self.reserve = u64::from(config.min_per_second) * config.ttl.as_millis() as u64;
        }
    }

    /// A first attempt: adds `ratio` tokens.
    pub(crate) fn deposit(&mut self, now: Instant) {
        self.advance(now);
        self.window.deposits[position(self.current)] += self.deposit;
        self.window.deposited += self.deposit;
    }

    /// A retry: takes one token, or says how long until one is back.
    pub(crate) fn try_withdraw(&mut self, now: Instant) -> Result<(), Duration> {
        self.advance(now);
        if self.window.balance(self.reserve) >= MILLI {
            self.window.withdrawals[position(self.current)] += MILLI;
            self.window.withdrawn += MILLI;
            Ok(())
        } else {
            Err(self.time_until_token(now))
        }
    }

    /// Retries allowed right now.
    pub(crate) fn available(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.window.balance(self.reserve) as f64 / MILLI as f64
    }

    fn slot_start(&self, index: u64) -> Instant {
        let nanos = (self.slot_width.as_nanos() as u64).saturating_mul(index);
        self.origin + Duration::from_nanos(nanos)
    }

    /// Moves the window to `now`. At most `RING` slots are touched, however
    /// long the budget sat idle.
    fn advance(&mut self, now: Instant) {
        if now < self.next_slot {
            return;
        }
        let elapsed = now.saturating_duration_since(self.origin);
        let target = (elapsed.as_nanos() / self.slot_width.as_nanos().max(1)) as u64;
        if target <= self.current {
            return;
        }
        let steps = (target - self.current).min(RING as u64);
        for index in target - steps + 1..=target {
            self.window.enter(index);
        }
        self.current = target;
        let nanos = (self.slot_width.as_nanos() as u64).saturating_mul(target + 1);
        self.next_slot = self
            .origin
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(now);
    }

    /// How long until the balance reaches one token with no new deposits,
    /// found by replaying the coming slot boundaries (at most `RING`).
    fn time_until_token(&self, now: Instant) -> Duration {
        let mut window = self.window.clone();
        for index in self.current + 1..=self.current + RING as u64 {
            window.enter(index);
            if window.balance(self.reserve) >= MILLI {
                return self
                    .slot_start(index)
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
            }
        }
        // No reserve and nothing left to expire: only new first attempts can
        // bring a token back.
        self.config.ttl
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(ratio: f64, min_per_second: u32, ttl_ms: u64) -> BudgetConfig {
        BudgetConfig {
            ratio,
            min_per_second,
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[test]
    fn steady_traffic_allows_ratio_of_first_attempts() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(config(0.2, 0, 10_000), start);
        let (mut allowed, mut firsts) = (0, 0);
        // 100 first attempts and 100 retry attempts a second for a minute.
        for ms in (0..60_000u64).step_by(10) {
            let now = start + Duration::from_millis(ms);
            budget.deposit(now);
            firsts += 1;
            if budget.try_withdraw(now).is_ok() {
                allowed += 1;
            }
        }
        // Deposits count ~0.95 ttl on average and withdrawals ~1.05 ttl (the
        // slot rounding errs against retrying), so the share lands a little
        // under the ratio, never over it.
        let share = allowed as f64 / firsts as f64;
        assert!((0.18..=0.2).contains(&share), "retry share {share}");
    }

    proptest! {
        /// For every window of `ttl` that ends at a granted retry: retries in
        /// it <= ratio x first attempts in it + min_per_second x ttl.
        #[test]
        fn retries_never_exceed_the_budget_in_any_window(
            ratio in prop::sample::select(vec![0.0, 0.1, 0.2, 0.5, 1.0, 2.0]),
            min_per_second in 0u32..5,
            ttl_ms in prop::sample::select(vec![1000u64, 2000, 10_000]),
            events in prop::collection::vec((0u64..400, any::<bool>()), 1..400),
        ) {
            let start = Instant::now();
            let mut budget = RetryBudget::new(config(ratio, min_per_second, ttl_ms), start);
            let (mut firsts, mut retries) = (Vec::new(), Vec::new());
            let mut at = 0u64;
            for (gap, is_retry) in events {
                at += gap;
                let now = start + Duration::from_millis(at);
                if is_retry {
                    if budget.try_withdraw(now).is_ok() {
                        retries.push(at);
                    }
                } else {
                    budget.deposit(now);
                    firsts.push(at);
                }
            }
            let reserve = f64::from(min_per_second) * ttl_ms as f64 / 1000.0;
            for &end in &retries {
                let inside = |t: &&u64| **t + ttl_ms > end && **t <= end;
                let r = retries.iter().filter(inside).count() as f64;
                let f = firsts.iter().filter(inside).count() as f64;
                prop_assert!(r <= ratio * f + reserve + 1e-9,
                    "window ending {end}ms: {r} retries, {f} first attempts");
            }
        }

        /// The hint is honest: waiting it out (with no new traffic) is enough
        /// for the next retry whenever a reserve exists.
        #[test]
        fn retry_after_is_enough_with_a_reserve(
            min_per_second in 1u32..5,
            burst in 1usize..60,
        ) {
            let start = Instant::now();
            let mut budget = RetryBudget::new(config(0.0, min_per_second, 1000), start);
            let mut hint = None;
            for _ in 0..burst {
                if let Err(after) = budget.try_withdraw(start) {
                    hint = Some(after);
                    break;
                }
            }
            if let Some(after) = hint {
                prop_assert!(after > Duration::ZERO);
                prop_assert!(budget.try_withdraw(start + after).is_ok());
            }
        }
    }
}
