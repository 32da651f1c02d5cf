//! The HTML report: one self-contained file (inline CSS and SVG, no script, nothing
//! fetched). A reader sees, in order: what was measured where (build, host, load),
//! then per section the comparison table (medians, min–max, noisy marks, the ratio
//! column explained), bar charts of the charted figures with the spread drawn, and
//! one latency CDF per workload with every series on shared axes.
//!
//! I/O contract: none; [`html`] turns a finished [`Comparison`] into a string.
#![forbid(unsafe_code)]

use super::{pooled_cdf, Comparison, Section};
use crate::bench::spread::{Spread, NOISY_LEGEND};
use std::fmt::Write as _;

/// One colour per series, in order (cycled beyond eight).
const COLOURS: [&str; 8] = [
    "#7f7f7f", "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
];

fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report of `c` (validated: see [`Comparison::validate`]).
pub fn html(c: &Comparison) -> String {
    let mut s = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:72em}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}figure{{margin:1em 0}}\
         table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.3em .6em;border-bottom:1px solid #ddd}}\
         table.results td{{text-align:right}}table.results td:first-child{{text-align:left}}\
         .range{{color:#666;font-size:85%}}.noisy{{background:#fff1d6}}\
         table.meta th{{text-align:left;font-weight:normal;color:#555}}</style></head><body>\n\
         <h1>{}</h1>\n",
        esc(&c.title),
        esc(&c.title)
    );
    s.push_str("<table class=\"meta\">\n");
    for (k, v) in &c.meta {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table>\n");
    if !c.intro.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", esc(&c.intro));
    }
    for sec in &c.sections {
        section(&mut s, sec);
    }
    let _ = writeln!(
        s,
        "<details><summary>The table as printed</summary><pre>{}</pre></details>",
        esc(&c.text())
    );
    s.push_str("</body></html>\n");
    s
}

/// One section: its table, its bar charts, its latency CDFs.
fn section(s: &mut String, sec: &Section) {
    // Sub-headings one level down when the section has a heading of its own.
    let h = if let Some(heading) = &sec.heading {
        let _ = writeln!(s, "<h2>{}</h2>", esc(heading));
        3
    } else {
        2
    };
    results_table(s, sec);
    if sec.columns.iter().any(|c| c.chart.is_some()) {
        let _ = writeln!(s, "<h{h}>Throughput and cost</h{h}>");
    }
    for c in &sec.columns {
        let Some(y_title) = &c.chart else { continue };
        let bars: Vec<Option<Spread>> = (0..sec.series.len()).map(|i| sec.spread(c, i)).collect();
        let _ = writeln!(
            s,
            "<figure>{}</figure>",
            bar_svg(
                &format!("{}: median, min–max whisker", c.name),
                &sec.series_kind,
                y_title,
                &sec.series,
                &bars
            )
        );
    }
    if !sec.cdfs.is_empty() {
        let _ = writeln!(s, "<h{h}>Latency</h{h}>");
    }
    for cdf in &sec.cdfs {
        let series: Vec<Series> = sec
            .series
            .iter()
            .zip(&cdf.runs)
            .enumerate()
            .map(|(i, (name, runs))| (name.as_str(), colour(i), pooled_cdf(runs)))
            .collect();
        let _ = writeln!(s, "<figure>{}</figure>", cdf_svg(&cdf.title, &series));
    }
}

/// The comparison table as an HTML table, with what the ratio columns mean.
fn results_table(s: &mut String, sec: &Section) {
    let _ = write!(
        s,
        "<table class=\"results\">\n<tr><th>{}</th>",
        esc(&sec.series_kind)
    );
    for c in &sec.columns {
        let _ = write!(
            s,
            "<th>{}</th><th>{}</th>",
            esc(&c.name),
            esc(&sec.ratio_header)
        );
    }
    s.push_str("</tr>\n");
    for (i, name) in sec.series.iter().enumerate() {
        let _ = write!(s, "<tr><td>{}</td>", esc(name));
        for c in &sec.columns {
            for (median, range) in sec.cells(c, i).0 {
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
        "<p><b>{}</b>: the {kind}'s figure divided by {base}'s, computed in each round \
         (both measured side by side, so host drift cancels), then the median over the rounds \
         with min–max below. Above 1.00x the {kind} has more of the figure than {base}: \
         better for rates and Gbit/s, worse for CPU and latency. Each cell: the median \
         over the rounds, min–max in grey. {}</p>",
        esc(&sec.ratio_header),
        esc(NOISY_LEGEND),
        kind = esc(&sec.series_kind),
        base = esc(&sec.baseline),
    );
    for n in &sec.notes {
        let _ = writeln!(s, "<p>{}</p>", esc(n));
    }
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

/// A horizontal grid line at `y` across the plot of `dims`, labelled on the left.
fn y_gridline(
    s: &mut String,
    (w, _, l, r, _, _): (f64, f64, f64, f64, f64, f64),
    y: f64,
    label: &str,
) {
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
        w - r,
        l - 5.0,
        y + 4.0,
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
        y_gridline(
            &mut s,
            dims,
            py(10f64.powf(d)),
            &duration_label(10f64.powf(d)),
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
fn bar_svg(
    title: &str,
    x_title: &str,
    y_title: &str,
    names: &[String],
    bars: &[Option<Spread>],
) -> String {
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
        y_gridline(&mut s, dims, py(tick), &short_number(tick));
        tick += step;
    }
    axis_titles(&mut s, dims, x_title, y_title);
    let slot = (w - l - r) / bars.len().max(1) as f64;
    for (m, bar) in bars.iter().enumerate() {
        let cx = l + slot * (m as f64 + 0.5);
        let name = names.get(m).map_or("?", String::as_str);
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
            colour(m)
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
        let names = ["plaintext (direct)", "terminate", "reencrypt", "mtls"];
        let series: Vec<Series> = names
            .iter()
            .enumerate()
            .map(|(m, n)| (*n, colour(m), pts.clone()))
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
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let svg = bar_svg(
            "handshakes/s",
            "mode",
            "handshakes per second",
            &names,
            &bars,
        );
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
