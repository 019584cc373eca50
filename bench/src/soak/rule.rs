//! The growth rule: does a resource series grow while the load stays the same?
//!
//! The samples of the loaded run are cut into thirds. The first third is
//! warm-up (allocator arenas, connection pools and the ledger's maps reach
//! their working size there) and is not judged. The series grows if the
//! median of the last third is above the median of the second third by more
//! than `relative` of it plus `absolute`. Medians, not means or maxima, so a
//! burst at one sample (a scrape landing on a busy moment) does not decide;
//! a leak, which moves every later sample, does.

use serde::Serialize;

/// How much a series may rise from the second third to the last.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Allowance {
    pub relative: f64,
    pub absolute: f64,
}

/// What the rule found for one series.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub second_third_median: f64,
    pub last_third_median: f64,
    /// `second_third_median * (1 + relative) + absolute`.
    pub ceiling: f64,
    pub grew: bool,
}

/// Fewer samples than this cannot be cut into thirds of two samples each.
pub const MIN_SAMPLES: usize = 6;

/// Judges `series` (in sample order). Errors when it is too short to judge.
pub fn judge(name: &str, series: &[f64], allow: Allowance) -> Result<Verdict, String> {
    if series.len() < MIN_SAMPLES {
        return Err(format!(
            "{name}: {} samples, at least {MIN_SAMPLES} are needed to compare thirds (run longer or sample more often)",
            series.len()
        ));
    }
    if let Some(bad) = series.iter().find(|v| !v.is_finite()) {
        return Err(format!("{name}: a sample is {bad}"));
    }
    let n = series.len();
    let second = median(&series[n / 3..2 * n / 3]);
    let last = median(&series[2 * n / 3..]);
    let ceiling = second * (1.0 + allow.relative) + allow.absolute;
    Ok(Verdict {
        name: name.to_owned(),
        second_third_median: second,
        last_third_median: last,
        ceiling,
        grew: last > ceiling,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PERCENT: Allowance = Allowance {
        relative: 0.10,
        absolute: 0.0,
    };

    #[test]
    fn a_steady_series_after_warm_up_passes() {
        // Warm-up from 10 to 20, then flat with noise.
        let series = [
            10.0, 14.0, 18.0, 20.0, 21.0, 19.5, 20.5, 20.0, 21.0, 19.0, 20.0, 20.5,
        ];
        let v = judge("rss", &series, TEN_PERCENT).unwrap();
        assert!(!v.grew, "{v:?}");
        assert_eq!(v.second_third_median, 20.25);
        assert_eq!(v.last_third_median, 20.25);
    }

    #[test]
    fn a_steadily_growing_series_fails() {
        // 1.5 % a sample: 12 % from the middle of the second third to the
        // middle of the last.
        let series: Vec<f64> = (0..30).map(|i| 100.0 * (1.0 + 0.015 * i as f64)).collect();
        let v = judge("rss", &series, TEN_PERCENT).unwrap();
        assert!(v.grew, "{v:?}");
        assert!(v.last_third_median > v.ceiling);
    }

    #[test]
    fn one_spike_does_not_decide_but_a_step_does() {
        let mut spike = vec![50.0; 12];
        spike[10] = 500.0;
        assert!(!judge("fds", &spike, TEN_PERCENT).unwrap().grew);
        let mut step = vec![50.0; 12];
        for v in &mut step[8..] {
            *v = 60.0;
        }
        assert!(judge("fds", &step, TEN_PERCENT).unwrap().grew);
    }

    #[test]
    fn the_absolute_allowance_absorbs_small_counts() {
        // Tasks 10 -> 12: 20 %, but within 4 tasks.
        let series = [10.0, 10.0, 10.0, 10.0, 12.0, 12.0];
        let allow = Allowance {
            relative: 0.0,
            absolute: 4.0,
        };
        assert!(!judge("tasks", &series, allow).unwrap().grew);
        let allow = Allowance {
            relative: 0.0,
            absolute: 1.0,
        };
        assert!(judge("tasks", &series, allow).unwrap().grew);
    }

    #[test]
    fn too_few_or_broken_samples_are_an_error() {
        assert!(
            judge("rss", &[1.0; 5], TEN_PERCENT)
                .unwrap_err()
                .contains("5 samples")
        );
        assert!(
            judge("rss", &[1.0, 1.0, 1.0, f64::NAN, 1.0, 1.0], TEN_PERCENT)
                .unwrap_err()
                .contains("NaN")
        );
    }
}
