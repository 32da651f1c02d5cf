//! `bench --rounds N`: the same measurement N times in a row, summarized. Every rate,
//! latency and CPU figure becomes the median over the rounds with its spread
//! ([`Spread`]); counts (operations, bytes, errors, handshakes) become totals. The
//! JSON keeps the single-run fields (now medians or totals) and adds `rounds`,
//! `spread` (per figure: per-round values, median, min, max, noisy), `noisy_figures`,
//! `noisy_rounds` (foreign CPU above [`NOISY_FOREIGN_CPUS`]) and `per_round`.
//!
//! I/O contract: none; [`summarize`] is pure over finished reports.
#![forbid(unsafe_code)]

use super::host::NOISY_FOREIGN_CPUS;
use super::spread::{Spread, NOISY_LEGEND};
use super::{BenchReport, Latency};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A figure of a round, by its JSON name.
type Figure = (&'static str, fn(&BenchReport) -> Option<f64>);

fn lat(r: &BenchReport, f: fn(&Latency) -> f64) -> Option<f64> {
    (r.latency_us.samples > 0).then(|| f(&r.latency_us))
}

/// The figures reported with a spread, with how to read each from a round.
pub const FIGURES: [Figure; 13] = [
    ("ops_per_s", |r| Some(r.ops_per_s)),
    ("gbit_per_s", |r| Some(r.gbit_per_s)),
    ("latency_us.p50", |r| lat(r, |l| l.p50 as f64)),
    ("latency_us.p90", |r| lat(r, |l| l.p90 as f64)),
    ("latency_us.p99", |r| lat(r, |l| l.p99 as f64)),
    ("latency_us.p999", |r| lat(r, |l| l.p999 as f64)),
    ("latency_us.max", |r| lat(r, |l| l.max as f64)),
    ("latency_us.mean", |r| lat(r, |l| l.mean)),
    ("target_cpu_us_per_op", |r| r.target_cpu_us_per_op),
    ("target_cpu_ns_per_byte", |r| r.target_cpu_ns_per_byte),
    ("target_rss_bytes_per_conn", |r| r.target_rss_bytes_per_conn),
    ("client_cpu_us_per_op", |r| r.client_cpu_us_per_op),
    ("foreign_cpus", |r| r.foreign_cpus),
];

/// N rounds summarized (the JSON of `bench --json`).
#[derive(Debug, Serialize)]
pub struct RoundsReport {
    /// Medians of the figures, totals of the counts.
    #[serde(flatten)]
    pub summary: BenchReport,
    pub rounds: usize,
    pub spread: BTreeMap<&'static str, Spread>,
    /// Figures whose spread exceeds ±15 % of the median.
    pub noisy_figures: Vec<&'static str>,
    /// Rounds (from 1) whose foreign CPU was above the threshold.
    pub noisy_rounds: Vec<usize>,
    pub per_round: Vec<BenchReport>,
}

/// Summarize finished rounds (at least one).
pub fn summarize(per_round: Vec<BenchReport>) -> RoundsReport {
    assert!(!per_round.is_empty(), "summarize needs a round");
    let mut spread = BTreeMap::new();
    for (name, get) in FIGURES {
        if let Some(s) = Spread::of_some(per_round.iter().map(get)) {
            spread.insert(name, s);
        }
    }
    let noisy_figures = spread
        .iter()
        .filter(|(k, s)| s.noisy && **k != "foreign_cpus")
        .map(|(k, _)| *k)
        .collect();
    let noisy_rounds = per_round
        .iter()
        .enumerate()
        .filter(|(_, r)| r.foreign_cpus.is_some_and(|f| f > NOISY_FOREIGN_CPUS))
        .map(|(i, _)| i + 1)
        .collect();
    let summary = merged(&per_round, &spread);
    RoundsReport {
        summary,
        rounds: per_round.len(),
        spread,
        noisy_figures,
        noisy_rounds,
        per_round,
    }
}

/// Round 1 with counts summed over all rounds and figures replaced by medians.
fn merged(rounds: &[BenchReport], spread: &BTreeMap<&'static str, Spread>) -> BenchReport {
    let mut m = rounds[0].clone();
    for r in &rounds[1..] {
        m.duration_s += r.duration_s;
        m.ops += r.ops;
        m.bytes += r.bytes;
        m.errors.add(&r.errors);
        for (k, v) in &r.error_samples {
            m.error_samples.entry(k).or_insert_with(|| v.clone());
        }
        m.full_handshakes += r.full_handshakes;
        m.resumed += r.resumed;
        m.established = m.established.zip(r.established).map(|(a, b)| a.min(b));
        m.target_cpu_s = m.target_cpu_s.zip(r.target_cpu_s).map(|(a, b)| a + b);
        m.client_cpu_s = m.client_cpu_s.zip(r.client_cpu_s).map(|(a, b)| a + b);
        let _ = m.histogram.add(&r.histogram);
        m.latency_us.samples += r.latency_us.samples;
    }
    m.target_rss_after_bytes = rounds[rounds.len() - 1].target_rss_after_bytes;
    let med = |k: &str| spread.get(k).map(|s| s.median);
    m.ops_per_s = med("ops_per_s").unwrap_or(m.ops_per_s);
    m.gbit_per_s = med("gbit_per_s").unwrap_or(m.gbit_per_s);
    if m.latency_us.samples > 0 {
        let l = &mut m.latency_us;
        let u = |k: &str, v: &mut u64| *v = med(k).map_or(*v, |x| x.round() as u64);
        u("latency_us.p50", &mut l.p50);
        u("latency_us.p90", &mut l.p90);
        u("latency_us.p99", &mut l.p99);
        u("latency_us.p999", &mut l.p999);
        u("latency_us.max", &mut l.max);
        l.mean = med("latency_us.mean").unwrap_or(l.mean);
    }
    m.target_cpu_us_per_op = med("target_cpu_us_per_op");
    m.target_cpu_ns_per_byte = med("target_cpu_ns_per_byte");
    m.target_rss_bytes_per_conn = med("target_rss_bytes_per_conn");
    m.client_cpu_us_per_op = med("client_cpu_us_per_op");
    m.foreign_cpus = med("foreign_cpus");
    m
}

impl RoundsReport {
    /// The human table: one round as before; more rounds add the spread of each
    /// figure and the foreign CPU of each round.
    pub fn table(&self) -> String {
        let mut s = self.summary.table();
        if self.rounds == 1 {
            return s;
        }
        let _ = writeln!(
            s,
            "rounds     {} (figures above: medians over the rounds; counts: totals)",
            self.rounds
        );
        let _ = writeln!(s, "spread     median (min–max) over the rounds:");
        for (name, _) in FIGURES {
            let Some(sp) = self.spread.get(name) else {
                continue;
            };
            let prec = if sp.median.abs() >= 100.0 { 0 } else { 2 };
            let _ = writeln!(
                s,
                "  {name:<26} {:>10} ({})",
                sp.median_cell(prec, ""),
                sp.range_cell(prec, "")
            );
        }
        if let Some(f) = self.spread.get("foreign_cpus") {
            let _ = writeln!(s, "{}", foreign_line(&f.values));
        }
        if !self.noisy_figures.is_empty() {
            let _ = writeln!(s, "{NOISY_LEGEND}");
        }
        s
    }
}

/// "foreign CPU: 0.31 CPUs on average during measurement (rounds: 0.20 0.45! 0.28)",
/// `!` marking a round above [`NOISY_FOREIGN_CPUS`].
pub fn foreign_line(per_round: &[f64]) -> String {
    if per_round.is_empty() {
        return "foreign CPU: not measured (no /proc/stat)".into();
    }
    let mean = per_round.iter().sum::<f64>() / per_round.len() as f64;
    let cells: Vec<String> = per_round
        .iter()
        .map(|f| format!("{f:.2}{}", if *f > NOISY_FOREIGN_CPUS { "!" } else { "" }))
        .collect();
    let noisy = per_round.iter().any(|f| *f > NOISY_FOREIGN_CPUS);
    format!(
        "foreign CPU: {mean:.2} CPUs on average during measurement (per round: {}){}",
        cells.join(" "),
        if noisy {
            format!(
                "; ! = over {NOISY_FOREIGN_CPUS} CPUs used by other processes: noisy round, \
                 rerun or quiet the host"
            )
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ops_per_s: f64, p99: u64, foreign: f64) -> BenchReport {
        let mut hist = super::super::worker::new_hist();
        hist.record(p99).unwrap();
        BenchReport {
            workload: super::super::Workload::Rr,
            mode: "plain",
            target: "127.0.0.1:1".into(),
            connections: 1,
            workers: 1,
            duration_s: 1.0,
            ops: ops_per_s as u64,
            ops_per_s,
            bytes: 10,
            gbit_per_s: 0.0,
            latency_us: Latency {
                p50: p99 / 2,
                p90: p99,
                p99,
                p999: p99,
                max: p99,
                mean: p99 as f64 / 2.0,
                samples: 1,
            },
            errors: Default::default(),
            error_samples: Default::default(),
            full_handshakes: 1,
            resumed: 0,
            size: 64,
            direction: None,
            rate: None,
            established: None,
            target_cpu_s: None,
            target_cpu_us_per_op: None,
            target_cpu_ns_per_byte: None,
            target_rss_before_bytes: None,
            target_rss_after_bytes: None,
            target_rss_bytes_per_conn: None,
            client_cpu_s: Some(0.1),
            client_cpu_us_per_op: Some(10.0),
            foreign_cpus: Some(foreign),
            histogram: hist,
        }
    }

    #[test]
    fn medians_totals_and_noisy_rounds() {
        let r = summarize(vec![
            round(100.0, 200, 0.1),
            round(300.0, 220, 0.5),
            round(110.0, 210, 0.0),
        ]);
        assert_eq!(r.rounds, 3);
        assert_eq!(r.summary.ops_per_s, 110.0, "median, not mean");
        assert_eq!(r.summary.ops, 510, "total");
        assert_eq!(r.summary.duration_s, 3.0);
        assert_eq!(r.summary.latency_us.p99, 210);
        assert_eq!(r.summary.latency_us.samples, 3);
        assert_eq!(r.summary.histogram.len(), 3, "histograms merged");
        assert_eq!(r.noisy_figures, vec!["ops_per_s"]);
        assert_eq!(r.noisy_rounds, vec![2]);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["rounds"], 3);
        assert_eq!(v["per_round"].as_array().unwrap().len(), 3);
        assert_eq!(v["ops_per_s"], 110.0);
        let s = &v["spread"]["latency_us.p99"];
        assert_eq!(s["values"], serde_json::json!([200.0, 220.0, 210.0]));
        assert_eq!(
            (s["min"].as_f64(), s["max"].as_f64()),
            (Some(200.0), Some(220.0))
        );
        assert_eq!(s["noisy"], false);
        let t = r.table();
        assert!(t.contains("rounds     3"), "{t}");
        assert!(t.contains("110* (100–300)"), "{t}");
        assert!(t.contains("(per round: 0.10 0.50! 0.00)"), "{t}");
        assert!(t.contains(NOISY_LEGEND), "{t}");
    }

    #[test]
    fn one_round_is_the_round() {
        let r = summarize(vec![round(100.0, 200, 0.0)]);
        assert_eq!(r.table(), r.per_round[0].table());
        assert!(r.spread.values().all(|s| s.min == s.max && !s.noisy));
        assert!(r.noisy_rounds.is_empty());
    }
}
