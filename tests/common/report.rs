//! The HTML page of `terminus report` (the demo's and compare-peers.sh's): the checks
//! every report passes, whatever it measured.

/// The metadata table (which must open the page) and the results table of a report;
/// asserts that the metadata has a row for the machine's lines and each of `labels`,
/// and that the page is one self-contained file (no script, nothing fetched).
pub fn report_tables<'a>(html: &'a str, labels: &[&str]) -> (&'a str, &'a str) {
    let meta_start = html.find("<table class=\"meta\">").expect("metadata table");
    let results_start = html
        .find("<table class=\"results\">")
        .expect("results table");
    assert!(meta_start < results_start, "metadata opens the report");
    let meta = &html[meta_start..results_start];
    // The lines `terminus::tools::report::meta` collects on every machine.
    let machine = "version|git commit|date|CPU model|cores|kernel|governor|TLS";
    for label in machine.split('|').chain(labels.iter().copied()) {
        assert!(
            meta.contains(&format!("<tr><th>{label}</th><td>")),
            "no {label} in {meta}"
        );
    }
    let results = &html[results_start..];
    let results = &results[..results.find("</table>").unwrap()];
    assert!(!html.contains("<script"), "self-contained, no JS");
    for fetch in ["src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(fetch),
            "the report fetches something: {fetch}"
        );
    }
    (meta, results)
}
