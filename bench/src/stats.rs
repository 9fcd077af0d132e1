//! Pure figures: tick parsing, the tick-gap downtime, min/median/max.

use serde::{Deserialize, Serialize};

/// min / median / max of one figure over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// None for an empty slice; NaNs are ignored.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        n,
        min: v[0],
        median,
        max: v[n - 1],
    })
}

/// The CLOCK_REALTIME field (4th) of memhog's tick lines
/// `<monotonic ns> <seq> <checksum> <realtime ns>`; other lines (`verify ok ...`) are skipped.
pub fn parse_ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 || f[0].parse::<u64>().is_err() || f[1].parse::<u64>().is_err() {
                return None;
            }
            f[3].parse::<u64>().ok()
        })
        .collect()
}

/// The service-visible downtime: the largest gap (ms) between two consecutive ticks where the
/// gap overlaps the migration window [start_ns, end_ns] (realtime). None when no tick exists on
/// both sides of the window's start (no tick before the freeze or none after it).
pub fn tick_gap_ms(ticks: &[u64], start_ns: u64, end_ns: u64) -> Option<f64> {
    let mut best: Option<u64> = None;
    for w in ticks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b < a {
            continue; // clock stepped back; not a gap
        }
        if b >= start_ns && a <= end_ns {
            best = Some(best.map_or(b - a, |g: u64| g.max(b - a)));
        }
    }
    best.map(|g| g as f64 / 1e6)
}

/// True when the ticks go on after `t_ns` (the service runs at the destination).
pub fn ticks_after(ticks: &[u64], t_ns: u64) -> usize {
    ticks.iter().filter(|&&t| t > t_ns).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_odd_even_and_empty() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        let s = summarize(&[f64::NAN, 5.0]).unwrap();
        assert_eq!((s.n, s.median), (1, 5.0));
    }

    #[test]
    fn ticks_parse_skips_other_lines() {
        let t = "10 1 abcd 1000\nverify ok abcd\n20 2 abcd 2000\ngarbage\n30 3 abcd 3000 extra\n";
        assert_eq!(parse_ticks(t), vec![1000, 2000]);
    }

    #[test]
    fn gap_around_the_window() {
        let ms = 1_000_000u64;
        // ticks every 10 ms, a 500 ms hole from 100 to 600, a 200 ms hole later (outside).
        let mut t: Vec<u64> = (0..=10).map(|i| i * 10 * ms).collect();
        t.extend((60..=70).map(|i| i * 10 * ms));
        t.extend((90..=95).map(|i| i * 10 * ms));
        assert_eq!(tick_gap_ms(&t, 150 * ms, 550 * ms), Some(500.0));
        // the later hole (700 -> 900) lies outside the window
        assert_eq!(tick_gap_ms(&t, 95 * ms, 300 * ms), Some(500.0));
        // a window that touches only regular ticks
        assert_eq!(tick_gap_ms(&t, 20 * ms, 40 * ms), Some(10.0));
        assert_eq!(tick_gap_ms(&[5], 0, 10), None);
        assert_eq!(ticks_after(&t, 600 * ms), 16);
    }
}
