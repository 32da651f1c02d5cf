//! The demo's HTML report: one self-contained file (inline CSS and SVG, no script,
//! nothing fetched). A reader sees, in order: what was measured where (build, host,
//! load), the comparison table (medians, min–max, noisy marks, "vs term" explained),
//! bar charts of handshakes/s, server CPU per handshake and Gbit/s with the spread
//! drawn, and one latency CDF per workload with every mode on shared axes.
//!
//! I/O contract: none; [`html`] turns finished results into a string.
#![forbid(unsafe_code)]

use super::{cells, per_round, ModeResult, COLUMNS, MODES};
use crate::tools::bench::spread::{Spread, NOISY_LEGEND};
use crate::tools::bench::BenchReport;
use std::fmt::Write as _;

/// One colour per mode, in [`MODES`] order.
const COLOURS: [&str; 4] = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#d62728"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report. `notes` are the lines printed under the text table (legend, foreign
/// CPU, client CPU); `meta` the (label, value) header lines.
pub(super) fn html(
    results: &[Vec<ModeResult>],
    text_table: &str,
    notes: &[String],
    meta: &[(&str, String)],
) -> String {
    let mut s = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>terminus demo</title>\n\
         <style>body{font-family:sans-serif;margin:2em;max-width:72em}\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto}figure{margin:1em 0}\
         table{border-collapse:collapse;margin:1em 0}th,td{padding:.3em .6em;border-bottom:1px solid #ddd}\
         table.results td{text-align:right}table.results td:first-child{text-align:left}\
         .range{color:#666;font-size:85%}.noisy{background:#fff1d6}\
         table.meta th{text-align:left;font-weight:normal;color:#555}</style></head><body>\n\
         <h1>terminus demo</h1>\n",
    );
    s.push_str("<table class=\"meta\">\n");
    for (k, v) in meta {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table>\n");
    s.push_str(
        "<p>The same workloads against a plaintext backend directly and through terminus \
         (termination, re-encryption, mutual TLS), in rounds interleaved across the modes. \
         Compare ratios, not absolutes; server CPU is the terminus worker thread's own CPU \
         time.</p>\n",
    );
    results_table(&mut s, results, notes);
    s.push_str("<h2>Throughput and cost</h2>\n");
    for (c, y_title) in [
        (0, "handshakes per second"),
        (1, "server CPU per handshake (µs)"),
        (2, "Gbit/s (bulk echo)"),
    ] {
        let (head, _, get) = &COLUMNS[c];
        let bars: Vec<Option<Spread>> = (0..MODES.len())
            .map(|m| Spread::of_some(per_round(results, m, *get)))
            .collect();
        let _ = writeln!(
            s,
            "<figure>{}</figure>",
            bar_svg(&format!("{head}: median, min–max whisker"), y_title, &bars)
        );
    }
    s.push_str("<h2>Latency</h2>\n");
    for (title, get) in [
        (
            "connect + handshake + 64 B echo: latency CDF",
            (|r: &ModeResult| &r.handshake) as fn(&ModeResult) -> &Option<BenchReport>,
        ),
        ("request/response (64 B echo): latency CDF", |r| &r.rr),
    ] {
        let series: Vec<Series> = MODES
            .iter()
            .enumerate()
            .map(|(m, mode)| (*mode, COLOURS[m], merged_cdf(results, m, get)))
            .collect();
        let _ = writeln!(s, "<figure>{}</figure>", cdf_svg(title, &series));
    }
    let _ = writeln!(
        s,
        "<details><summary>The table as printed</summary><pre>{}</pre></details>",
        esc(text_table)
    );
    s.push_str("</body></html>\n");
    s
}

/// The comparison table as an HTML table, with what "vs term" means.
fn results_table(s: &mut String, results: &[Vec<ModeResult>], notes: &[String]) {
    s.push_str("<table class=\"results\">\n<tr><th>mode</th>");
    for (h, _, _) in &COLUMNS {
        let _ = write!(s, "<th>{}</th><th>vs term</th>", esc(h));
    }
    s.push_str("</tr>\n");
    let mut noisy = false;
    for (m, mode) in MODES.iter().enumerate() {
        let _ = write!(s, "<tr><td>{}</td>", esc(mode));
        for c in &COLUMNS {
            for (median, range) in cells(results, m, c, &mut noisy) {
                let flagged = median.ends_with('*');
                let _ = write!(
                    s,
                    "<td{}>{}{}</td>",
                    if flagged {
                        " class=\"noisy\" title=\"spread beyond ±15 % of the median\""
                    } else {
                        ""
                    },
                    esc(&median),
                    if range == "-" {
                        String::new()
                    } else {
                        format!("<br><span class=\"range\">{}</span>", esc(&range))
                    }
                );
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    let _ = writeln!(
        s,
        "<p><b>vs term</b>: the mode's figure divided by terminate's, computed in each round \
         (both measured side by side, so host drift cancels), then the median over the rounds \
         with min–max below. Above 1.00x the mode has more of the figure than termination: \
         better for handshakes/s and Gbit/s, worse for CPU and latency. Each cell: the median \
         over the rounds, min–max in grey. {}</p>",
        esc(NOISY_LEGEND)
    );
    for n in notes {
        let _ = writeln!(s, "<p>{}</p>", esc(n));
    }
}

/// The latency CDF of one workload of mode `m` over all rounds (histograms merged).
fn merged_cdf(
    results: &[Vec<ModeResult>],
    m: usize,
    get: fn(&ModeResult) -> &Option<BenchReport>,
) -> Vec<(f64, u64)> {
    let mut merged: Option<BenchReport> = None;
    for r in results
        .iter()
        .filter_map(|round| get(round.get(m)?).as_ref())
    {
        match &mut merged {
            None => merged = Some(r.clone()),
            Some(a) => {
                let _ = a.histogram.add(&r.histogram);
            }
        }
    }
    merged.map(|r| r.cdf()).unwrap_or_default()
}

/// A chart series: name, colour, (percentile, µs) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, u64)>);

fn svg_open(w: f64, h: f64, title: &str, l: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"{l}\" y=\"18\" font-size=\"13\">{}</text>\n",
        esc(title)
    )
}

/// Axis titles: x centred under the plot, y rotated along the left edge.
fn axis_titles(
    s: &mut String,
    (w, h, l, r, t, b): (f64, f64, f64, f64, f64, f64),
    x: &str,
    y: &str,
) {
    let _ = writeln!(
        s,
        "<text class=\"axis-title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (l + w - r) / 2.0,
        h - 6.0,
        esc(x)
    );
    let (yx, yy) = (14.0, (t + h - b) / 2.0);
    let _ = writeln!(
        s,
        "<text class=\"axis-title\" x=\"{yx}\" y=\"{yy:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {yx} {yy:.1})\">{}</text>",
        esc(y)
    );
}

/// Latency CDFs on shared axes: x = percentile on a log scale of 1 − p (0, 90, 99,
/// 99.9 ... 99.999 %), y = latency (log µs).
fn cdf_svg(title: &str, series: &[Series]) -> String {
    // The right margin holds half of the last tick label ("99.999%").
    let dims @ (w, h, l, r, t, b) = (680.0, 340.0, 76.0, 40.0, 30.0, 46.0);
    let nines = 5.0; // up to 99.999%
    let xv = |p: f64| (-(1.0 - (p / 100.0).min(0.99999)).log10()).min(nines);
    let all: Vec<u64> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1.max(1)))
        .collect();
    let lo = all.iter().copied().min().unwrap_or(1).max(1) as f64;
    let hi = all.iter().copied().max().unwrap_or(10).max(2) as f64;
    let (ylo, yhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let px = |x: f64| l + x / nines * (w - l - r);
    let py = |us: f64| h - b - (us.max(1.0).log10() - ylo) / (yhi - ylo) * (h - t - b);
    let mut s = svg_open(w, h, title, l);
    for (i, lab) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = px(i as f64);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{lab}</text>",
            h - b,
            h - b + 15.0
        );
    }
    let mut d = ylo;
    while d <= yhi {
        let y = py(10f64.powf(d));
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - r,
            l - 5.0,
            y + 4.0,
            duration_label(10f64.powf(d))
        );
        d += 1.0;
    }
    axis_titles(&mut s, dims, "percentile", "latency (log scale)");
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(p, us)| format!("{:.1},{:.1}", px(xv(*p)), py(*us as f64)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            l + 10.0,
            t + 14.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn duration_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// A round step of about a fifth of `max`: 1, 2 or 5 times a power of ten.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|k| k * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn short_number(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One bar per mode at the median, a whisker from min to max (the spread), the
/// median written above; "not measured" where a mode has no figure.
fn bar_svg(title: &str, y_title: &str, bars: &[Option<Spread>]) -> String {
    let dims @ (w, h, l, r, t, b) = (680.0, 300.0, 76.0, 20.0, 30.0, 46.0);
    let top = bars
        .iter()
        .flatten()
        .map(|s| s.max)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = nice_step(top * 1.1);
    let ymax = (top * 1.1 / step).ceil() * step;
    let py = |v: f64| h - b - v / ymax * (h - t - b);
    let mut s = svg_open(w, h, title, l);
    let mut tick = 0.0;
    while tick <= ymax + step / 2.0 {
        let y = py(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - r,
            l - 5.0,
            y + 4.0,
            short_number(tick)
        );
        tick += step;
    }
    axis_titles(&mut s, dims, "mode", y_title);
    let slot = (w - l - r) / bars.len().max(1) as f64;
    for (m, bar) in bars.iter().enumerate() {
        let cx = l + slot * (m as f64 + 0.5);
        let name = MODES.get(m).copied().unwrap_or("?");
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            h - b + 15.0,
            esc(name)
        );
        let Some(sp) = bar else {
            let _ = writeln!(
                s,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#999\">not measured</text>",
                h - b - 6.0
            );
            continue;
        };
        let bw = slot * 0.5;
        let _ = writeln!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            cx - bw / 2.0,
            py(sp.median),
            py(0.0) - py(sp.median),
            COLOURS[m % COLOURS.len()]
        );
        let (y0, y1) = (py(sp.min), py(sp.max));
        let _ = writeln!(
            s,
            "<g class=\"spread\" stroke=\"#222\" stroke-width=\"1.5\"><line x1=\"{cx:.1}\" y1=\"{y0:.1}\" \
             x2=\"{cx:.1}\" y2=\"{y1:.1}\"/><line x1=\"{:.1}\" y1=\"{y0:.1}\" x2=\"{:.1}\" y2=\"{y0:.1}\"/>\
             <line x1=\"{:.1}\" y1=\"{y1:.1}\" x2=\"{:.1}\" y2=\"{y1:.1}\"/></g>",
            cx - 6.0,
            cx + 6.0,
            cx - 6.0,
            cx + 6.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"start\">{}{}</text>",
            cx + 9.0,
            y1 + 4.0,
            short_number(sp.median),
            if sp.noisy { "*" } else { "" }
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Average width of a character of the 11 px sans-serif charts, generously
    /// rounded up: labels must fit inside the drawing.
    const CHAR_W: f64 = 6.5;

    /// (x, anchor, text) of every unrotated `<text>` of an SVG.
    fn texts(svg: &str) -> Vec<(f64, String, String)> {
        let mut out = Vec::new();
        for part in svg.split("<text ").skip(1) {
            let (attrs, rest) = part.split_once('>').unwrap();
            if attrs.contains("transform=") {
                continue;
            }
            let attr = |k: &str| {
                attrs
                    .split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .map(str::to_string)
            };
            let x: f64 = attr("x").unwrap().parse().unwrap();
            let anchor = attr("text-anchor").unwrap_or_else(|| "start".into());
            out.push((x, anchor, rest.split("</text>").next().unwrap().to_string()));
        }
        out
    }

    /// Every label's estimated extent lies inside the drawing's width.
    fn assert_unclipped(svg: &str) {
        let w: f64 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        for (x, anchor, text) in texts(svg) {
            let len = text.chars().count() as f64 * CHAR_W;
            let (from, to) = match anchor.as_str() {
                "middle" => (x - len / 2.0, x + len / 2.0),
                "end" => (x - len, x),
                _ => (x, x + len),
            };
            assert!(
                from >= 0.0 && to <= w,
                "{text:?} spans {from:.0}..{to:.0} outside 0..{w}"
            );
        }
    }

    #[test]
    fn cdf_has_axis_titles_and_unclipped_ticks() {
        let pts = vec![(0.0, 50), (50.0, 80), (99.0, 900), (99.999, 20_000)];
        let series: Vec<Series> = MODES
            .iter()
            .enumerate()
            .map(|(m, n)| (*n, COLOURS[m], pts.clone()))
            .collect();
        let svg = cdf_svg("rr latency CDF", &series);
        assert_eq!(svg.matches("class=\"axis-title\"").count(), 2, "{svg}");
        assert!(svg.contains(">99.999%</text>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            4,
            "every mode on one chart"
        );
        assert_unclipped(&svg);
    }

    #[test]
    fn bars_draw_the_spread() {
        let bars = vec![
            Spread::of(&[5000.0, 7000.0, 6000.0]),
            Spread::of(&[1000.0, 1200.0]),
            None,
            Spread::of(&[800.0]),
        ];
        let svg = bar_svg("handshakes/s", "handshakes per second", &bars);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3, "{svg}");
        assert_eq!(svg.matches("class=\"spread\"").count(), 3, "{svg}");
        assert!(svg.contains("not measured"));
        assert!(svg.contains(">6000</text>"), "median above the bar: {svg}");
        assert_eq!(svg.matches("class=\"axis-title\"").count(), 2);
        assert_unclipped(&svg);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(4000.0), 1000.0);
        assert_eq!(nice_step(0.3), 0.1);
    }

    #[test]
    fn html_escapes() {
        assert_eq!(esc("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
