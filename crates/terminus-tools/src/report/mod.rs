//! report: the comparison report shared by `terminus demo` (modes side by side) and
//! `terminus report` (any series side by side from a JSON file; scripts/compare-peers.sh
//! writes one with terminus, nginx, HAProxy and hitch as the series).
//!
//! Owns: the report model ([`Comparison`]: metadata, then sections of series x figures
//! measured in rounds, plus latency CDFs), the text table printed on stdout, and the
//! HTML rendering ([`html`]). A figure's cell is its median over the rounds with the
//! min–max below it, flagged noisy beyond ±15 %; ratios against the section's baseline
//! series are taken per round (paired), then summarized the same way.
//!
//! I/O contract: the model and the renderers are pure; [`run_cli`] reads the JSON file,
//! the host's metadata ([`meta`]) and writes the HTML file.
#![forbid(unsafe_code)]

use crate::bench::spread::{Spread, NOISY_LEGEND};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

pub mod html;
pub mod meta;

/// What a report compares: rendered as the text table(s) and the HTML report.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The HTML title and first heading.
    pub title: String,
    /// (label, value) lines that open the report: where the figures come from.
    #[serde(default)]
    pub meta: Vec<(String, String)>,
    /// One paragraph under the metadata: what was compared, how.
    #[serde(default)]
    pub intro: String,
    pub sections: Vec<Section>,
}

/// One table: the same figures for every series, measured in the same rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    #[serde(default)]
    pub heading: Option<String>,
    /// What a series is ("mode", "peer"): the table's first header, the bars' x axis.
    pub series_kind: String,
    pub series: Vec<String>,
    /// The series every ratio divides by; one of `series`.
    pub baseline: String,
    /// The header of the ratio columns, e.g. "vs term".
    pub ratio_header: String,
    pub columns: Vec<Column>,
    #[serde(default)]
    pub cdfs: Vec<Cdf>,
    /// Lines under the table: foreign CPU, client CPU, errors.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A figure of every series in every round.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The table header (kept short: the text table is 13 characters wide).
    pub name: String,
    #[serde(default)]
    pub decimals: usize,
    /// The y axis title of this figure's bar chart; no chart without one.
    #[serde(default)]
    pub chart: Option<String>,
    /// `values[series][round]`; `null` where a round measured nothing.
    pub values: Vec<Vec<Option<f64>>>,
}

/// One latency chart with every series on shared axes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cdf {
    pub title: String,
    /// Per series, the CDF of each of its runs; pooled (weighted by samples) for the chart.
    pub runs: Vec<Vec<CdfRun>>,
}

/// The latency distribution of one run: `points` are (percentile, µs), both rising.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdfRun {
    pub samples: u64,
    pub points: Vec<(f64, u64)>,
}

impl Comparison {
    /// Every section consistent: the baseline is a series, every column and CDF has a
    /// row per series. The messages name the section and field.
    pub fn validate(&self) -> Result<()> {
        if self.sections.is_empty() {
            bail!("sections: none");
        }
        for (i, s) in self.sections.iter().enumerate() {
            let name = s.heading.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let n = s.series.len();
            if n == 0 {
                bail!("section {name}: series: none");
            }
            if s.baseline_index().is_none() {
                bail!(
                    "section {name}: baseline {:?} is not one of the series {:?}",
                    s.baseline,
                    s.series
                );
            }
            for c in &s.columns {
                if c.values.len() != n {
                    bail!(
                        "section {name}: column {:?}: {} rows of values for {n} series",
                        c.name,
                        c.values.len()
                    );
                }
            }
            for c in &s.cdfs {
                if c.runs.len() != n {
                    bail!(
                        "section {name}: cdf {:?}: {} rows of runs for {n} series",
                        c.title,
                        c.runs.len()
                    );
                }
            }
        }
        Ok(())
    }

    /// Every section's text table with its legend and notes, as printed on stdout.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            if let Some(h) = &s.heading {
                let _ = writeln!(out, "{h}\n");
            }
            let (table, noisy) = s.text_table();
            out.push_str(&table);
            if noisy {
                let _ = writeln!(out, "{NOISY_LEGEND}");
            }
            for n in &s.notes {
                let _ = writeln!(out, "{n}");
            }
            out.push('\n');
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    }
}

impl Section {
    fn baseline_index(&self) -> Option<usize> {
        self.series.iter().position(|s| *s == self.baseline)
    }

    /// The spread of a figure of series `i` over the rounds.
    pub fn spread(&self, column: &Column, i: usize) -> Option<Spread> {
        Spread::of_some(column.values.get(i)?.iter().copied())
    }

    /// The cells of a figure of series `i` and of its ratio to the baseline:
    /// (median, min–max) of each, `-` where there is nothing; and whether the figure
    /// or its ratio is noisy.
    pub fn cells(&self, column: &Column, i: usize) -> ([(String, String); 2], bool) {
        let figure = self.spread(column, i);
        let mut noisy = figure.as_ref().is_some_and(|s| s.noisy);
        let base = self.baseline_index();
        let ratio = if Some(i) == base {
            figure
                .as_ref()
                .map(|_| ("1.00x".to_string(), "-".to_string()))
        } else {
            let b = base.and_then(|b| column.values.get(b));
            let r = Spread::of_ratios(&column.values[i], b.map_or(&[][..], |v| &v[..]));
            // A flagged ratio needs the legend as much as a flagged figure.
            noisy |= r.as_ref().is_some_and(|s| s.noisy);
            r.map(|s| (s.median_cell(2, "x"), s.range_cell(2, "x")))
        };
        let dash = || ("-".to_string(), "-".to_string());
        let prec = column.decimals;
        (
            [
                figure.map_or_else(dash, |s| (s.median_cell(prec, ""), s.range_cell(prec, ""))),
                ratio.unwrap_or_else(dash),
            ],
            noisy,
        )
    }

    /// The plain-text table: per series a line of medians and a line of min–max, the
    /// series names in a column at least 19 wide, each figure at least 13 and its
    /// ratio 12. Also whether any figure is noisy (the legend then belongs under it).
    pub fn text_table(&self) -> (String, bool) {
        let label_w = self
            .series
            .iter()
            .map(|s| s.chars().count() + 1)
            .max()
            .unwrap_or(0)
            .max(19);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.name.chars().count().max(13))
            .collect();
        let ratio_w = self.ratio_header.chars().count().max(12);
        let mut s = String::new();
        let _ = write!(s, "{:<label_w$}", self.series_kind);
        for (c, w) in self.columns.iter().zip(&widths) {
            let _ = write!(s, " {:>w$} {:>ratio_w$}", c.name, self.ratio_header);
        }
        s.push('\n');
        let mut noisy = false;
        for (i, name) in self.series.iter().enumerate() {
            let row: Vec<[(String, String); 2]> = self
                .columns
                .iter()
                .map(|c| {
                    let (cells, n) = self.cells(c, i);
                    noisy |= n;
                    cells
                })
                .collect();
            for (line, label) in [(0, name.as_str()), (1, "  min–max")] {
                let _ = write!(s, "{label:<label_w$}");
                for ([v, r], w) in row.iter().zip(&widths) {
                    let pick =
                        |c: &(String, String)| if line == 0 { c.0.clone() } else { c.1.clone() };
                    let _ = write!(s, " {:>w$} {:>ratio_w$}", pick(v), pick(r));
                }
                s.push('\n');
            }
        }
        (s, noisy)
    }
}

/// The CDF of several runs pooled: at each latency any run reached, the share of all
/// samples at or below it (each run's share read off its own CDF, weighted by its
/// samples). One run is returned as it is.
pub fn pooled_cdf(runs: &[CdfRun]) -> Vec<(f64, u64)> {
    let runs: Vec<&CdfRun> = runs
        .iter()
        .filter(|r| r.samples > 0 && !r.points.is_empty())
        .collect();
    match runs.len() {
        0 => return Vec::new(),
        1 => return runs[0].points.clone(),
        _ => {}
    }
    let total: f64 = runs.iter().map(|r| r.samples as f64).sum();
    let mut values: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.1))
        .collect();
    values.sort_unstable();
    values.dedup();
    let mut out: Vec<(f64, u64)> = values
        .into_iter()
        .map(|v| {
            let below: f64 = runs
                .iter()
                .map(|r| {
                    let p = r
                        .points
                        .iter()
                        .filter(|p| p.1 <= v)
                        .map(|p| p.0)
                        .fold(0.0, f64::max);
                    r.samples as f64 * p
                })
                .sum();
            (below / total, v)
        })
        .collect();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// `terminus report --from FILE --out FILE`: the text tables on stdout and the HTML
/// report. The report opens with this build's and this host's metadata ([`meta`]),
/// then the file's own lines (a label given in the file replaces the collected one):
/// run it on the host that measured, right after.
pub fn run_cli(from: &Path, out: &Path) -> std::process::ExitCode {
    match render_file(from, out) {
        Ok(text) => {
            print!("{text}");
            println!("HTML report: {}", out.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("terminus: report: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn render_file(from: &Path, out: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut c: Comparison =
        serde_json::from_str(&text).with_context(|| format!("{}: not a report", from.display()))?;
    c.validate()
        .with_context(|| format!("{}: not a report", from.display()))?;
    let mut meta: Vec<(String, String)> = meta::collect()
        .into_iter()
        .filter(|(k, _)| !c.meta.iter().any(|(l, _)| l == k))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    meta.append(&mut c.meta);
    c.meta = meta;
    std::fs::write(out, html::html(&c))
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(c.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> Section {
        Section {
            heading: None,
            series_kind: "peer".into(),
            series: vec!["a".into(), "b".into()],
            baseline: "a".into(),
            ratio_header: "vs a".into(),
            columns: vec![Column {
                name: "ops/s".into(),
                decimals: 0,
                chart: Some("ops per second".into()),
                values: vec![vec![Some(100.0), Some(110.0)], vec![Some(200.0), None]],
            }],
            cdfs: vec![],
            notes: vec!["a note".into()],
        }
    }

    /// A comparison of one section.
    fn comparison(s: Section) -> Comparison {
        Comparison {
            title: "t".into(),
            meta: vec![],
            intro: String::new(),
            sections: vec![s],
        }
    }

    #[test]
    fn cells_pair_ratios_by_round() {
        let s = section();
        let (a, noisy) = s.cells(&s.columns[0], 0);
        assert_eq!(a[0], ("105".into(), "100–110".into()));
        assert_eq!(a[1], ("1.00x".into(), "-".into()));
        assert!(!noisy);
        let (b, _) = s.cells(&s.columns[0], 1);
        assert_eq!(b[0], ("200".into(), "200–200".into()));
        assert_eq!(b[1].0, "2.00x", "round 2 of b measured nothing");
        let text = comparison(s).text();
        assert!(text.starts_with("peer "), "{text}");
        assert!(text.contains("a note"), "{text}");
    }

    /// A steady figure whose ratio to the baseline moves (the baseline moved) is
    /// flagged in the ratio cell, and the text table then carries the legend (a
    /// demo run once printed `1.15x*` without it).
    #[test]
    fn a_noisy_ratio_alone_brings_the_legend() {
        let mut s = section();
        s.columns[0].values = vec![
            vec![Some(100.0), Some(150.0)],
            vec![Some(100.0), Some(100.0)],
        ];
        let (b, noisy) = s.cells(&s.columns[0], 1);
        assert!(!b[0].0.ends_with('*'), "the figure is steady: {b:?}");
        assert!(b[1].0.ends_with('*'), "the ratio moved by a third: {b:?}");
        assert!(noisy);
        let text = comparison(s).text();
        assert!(text.contains("* noisy: "), "{text}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut c = comparison(section());
        c.validate().unwrap();
        c.sections[0].baseline = "z".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("baseline \"z\""), "{e}");
        c.sections[0].baseline = "a".into();
        c.sections[0].columns[0].values.pop();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("1 rows of values for 2 series"), "{e}");
    }

    #[test]
    fn pooled_cdf_weights_runs_by_samples() {
        let a = CdfRun {
            samples: 300,
            points: vec![(0.0, 10), (50.0, 10), (100.0, 20)],
        };
        let b = CdfRun {
            samples: 100,
            points: vec![(0.0, 30), (100.0, 40)],
        };
        let p = pooled_cdf(&[a.clone(), b]);
        // At 10 µs half of a's 300 samples (150/400); at 20 all of a (300/400).
        assert_eq!(p[0], (37.5, 10));
        assert_eq!(p[1], (75.0, 20));
        assert_eq!(p.last(), Some(&(100.0, 40)));
        assert_eq!(pooled_cdf(std::slice::from_ref(&a)), a.points);
        assert!(pooled_cdf(&[]).is_empty());
    }
}
