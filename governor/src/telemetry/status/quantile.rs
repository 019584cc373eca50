//! Quantiles of a histogram over an interval, from the growth of its bucket
//! counts between two readings (what `histogram_quantile` does with
//! `rate(..._bucket[1m])`).

/// The `q`-quantile (0..=1) of the observations counted in `delta`: one count
/// per bucket of `bounds` (upper bounds, ascending), then one for the
/// overflow above the last bound. Interpolates linearly within the bucket the
/// rank falls in, from 0 for the first bucket; a rank in the overflow bucket
/// gives the last bound. `None` when nothing was observed.
pub fn quantile(q: f64, bounds: &[f64], delta: &[u64]) -> Option<f64> {
    debug_assert_eq!(delta.len(), bounds.len() + 1);
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (index, &count) in delta.iter().enumerate() {
        let through = below + count;
        if count > 0 && through as f64 >= rank {
            let Some(&upper) = bounds.get(index) else {
                return bounds.last().copied();
            };
            let lower = if index == 0 { 0.0 } else { bounds[index - 1] };
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        below = through;
    }
    bounds.last().copied()
}

/// Per-bucket growth from `before` to `now`, each a running count per bucket;
/// a count that went down (it cannot, but a reset would) counts as zero.
pub fn growth(before: &[u64], now: &[u64]) -> Vec<u64> {
    now.iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(now, before)| now.saturating_sub(*before))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.1, 0.5, 1.0];

    #[test]
    fn nothing_observed_has_no_quantile() {
        assert_eq!(quantile(0.99, &BOUNDS, &[0, 0, 0, 0]), None);
    }

    #[test]
    fn interpolates_within_the_bucket_of_the_rank() {
        // 100 observations: 50 under 0.1, 50 between 0.1 and 0.5.
        let delta = [50, 50, 0, 0];
        // Rank 99 lies 49/50 into the second bucket.
        let p99 = quantile(0.99, &BOUNDS, &delta).unwrap();
        assert!((p99 - (0.1 + 0.4 * 49.0 / 50.0)).abs() < 1e-12, "{p99}");
        let p50 = quantile(0.5, &BOUNDS, &delta).unwrap();
        assert!((p50 - 0.1).abs() < 1e-12, "{p50}");
        // All in the first bucket: from 0.
        let low = quantile(0.5, &BOUNDS, &[10, 0, 0, 0]).unwrap();
        assert!((low - 0.05).abs() < 1e-12, "{low}");
    }

    #[test]
    fn a_bucket_of_zeros_gives_zero() {
        // Bounds starting at 0: the first bucket holds only zeros.
        let bounds = [0.0, 0.1, 0.5];
        assert_eq!(quantile(0.99, &bounds, &[99, 1, 0, 0]), Some(0.0));
        let p = quantile(0.99, &bounds, &[98, 2, 0, 0]).unwrap();
        assert!((p - 0.05).abs() < 1e-12, "{p}");
    }

    #[test]
    fn the_overflow_bucket_gives_the_last_bound() {
        assert_eq!(quantile(0.99, &BOUNDS, &[1, 0, 0, 99]), Some(1.0));
    }

    #[test]
    fn empty_buckets_before_the_rank_are_skipped() {
        // One observation in (0.5, 1]: every quantile is inside that bucket.
        let p = quantile(0.99, &BOUNDS, &[0, 0, 1, 0]).unwrap();
        assert!(p > 0.5 && p <= 1.0, "{p}");
    }

    #[test]
    fn growth_is_per_bucket_and_never_negative() {
        assert_eq!(growth(&[1, 2, 3], &[4, 2, 5]), vec![3, 0, 2]);
        assert_eq!(growth(&[], &[4, 2]), vec![4, 2]);
        assert_eq!(growth(&[5], &[1]), vec![0]);
    }
}
