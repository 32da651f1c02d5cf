//! Figures over repeated rounds: the median, the spread (min–max) and whether the
//! spread is too wide to quote. Pure arithmetic, no I/O; `bench --rounds` and the
//! demo report every figure (and every ratio between modes) this way.
#![forbid(unsafe_code)]

use serde::Serialize;

/// A figure's spread beyond this fraction of its median (either side) is noisy.
pub const NOISY_FRACTION: f64 = 0.15;

/// The legend of the noisy marker, for tables.
pub const NOISY_LEGEND: &str =
    "* noisy: the spread exceeds ±15 % of the median: rerun or quiet the host";

/// One figure measured in each round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The value of each round, in round order.
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// `min` or `max` lies more than [`NOISY_FRACTION`] of the median away from it.
    pub noisy: bool,
}

impl Spread {
    /// The spread of the finite values; `None` when there is none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let (min, max) = (sorted[0], sorted[n - 1]);
        let noisy = if median > 0.0 {
            (max - median) > NOISY_FRACTION * median || (median - min) > NOISY_FRACTION * median
        } else {
            max > min
        };
        Some(Spread {
            values,
            median,
            min,
            max,
            noisy,
        })
    }

    /// The spread of `Some` values (a round that measured nothing is left out).
    pub fn of_some(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
        let v: Vec<f64> = values.into_iter().flatten().collect();
        Spread::of(&v)
    }

    /// Per-round ratios `a[i] / b[i]` (paired: both measured in the same round, side
    /// by side); rounds where either is missing or `b` is not positive are left out.
    pub fn of_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Option<Spread> {
        Spread::of_some(a.iter().zip(b).map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if *b > 0.0 => Some(a / b),
            _ => None,
        }))
    }

    /// The median with `prec` decimals and `unit` (e.g. `x`), `*` appended when noisy.
    pub fn median_cell(&self, prec: usize, unit: &str) -> String {
        format!(
            "{:.prec$}{unit}{}",
            self.median,
            if self.noisy { "*" } else { "" }
        )
    }

    /// `min–max` with `prec` decimals and `unit`.
    pub fn range_cell(&self, prec: usize, unit: &str) -> String {
        format!("{:.prec$}–{:.prec$}{unit}", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.values, vec![3.0, 1.0, 2.0], "round order kept");
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let one = Spread::of(&[7.0]).unwrap();
        assert_eq!(
            (one.median, one.min, one.max, one.noisy),
            (7.0, 7.0, 7.0, false)
        );
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let s = Spread::of(&[f64::INFINITY, 5.0]).unwrap();
        assert_eq!(s.values, vec![5.0], "non-finite values are left out");
    }

    #[test]
    fn noisy_beyond_fifteen_percent_either_side() {
        // Exactly ±15 %: not noisy; a hair beyond on either side: noisy.
        assert!(!Spread::of(&[85.0, 100.0, 115.0]).unwrap().noisy);
        assert!(Spread::of(&[100.0, 100.0, 115.5]).unwrap().noisy);
        assert!(Spread::of(&[84.5, 100.0, 100.0]).unwrap().noisy);
        // The issue's example: a ratio of 2.27 in one run and 0.96 in another.
        assert!(Spread::of(&[2.27, 0.96]).unwrap().noisy);
        assert!(!Spread::of(&[0.0, 0.0]).unwrap().noisy);
        assert!(Spread::of(&[0.0, 0.0, 1.0]).unwrap().noisy);
    }

    #[test]
    fn ratios_are_paired_by_round() {
        let a = [Some(2.0), Some(3.0), None, Some(8.0)];
        let b = [Some(1.0), Some(2.0), Some(1.0), Some(0.0)];
        let s = Spread::of_ratios(&a, &b).unwrap();
        assert_eq!(s.values, vec![2.0, 1.5], "missing and zero bases left out");
        assert_eq!((s.median, s.min, s.max), (1.75, 1.5, 2.0));
        assert_eq!(Spread::of_ratios(&[None], &[Some(1.0)]), None);
    }

    #[test]
    fn cells_and_json() {
        let s = Spread::of(&[90.0, 100.0, 130.0]).unwrap();
        assert_eq!(s.median_cell(0, ""), "100*");
        assert_eq!(s.median_cell(2, "x"), "100.00x*");
        assert_eq!(s.range_cell(1, ""), "90.0–130.0");
        assert_eq!(s.range_cell(2, "x"), "90.00–130.00x");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"values":[90.0,100.0,130.0],"median":100.0,"min":90.0,"max":130.0,"noisy":true}"#
        );
        assert_eq!(Spread::of(&[1.0, 1.1]).unwrap().median_cell(2, ""), "1.05");
    }
}
