//! The admin endpoint's `/metrics` page: one scrape, one sample, and the poll that
//! waits for the page to show something (snapshots are published every
//! `snapshot_interval_ms`, 50 ms in the tests' configs).

use super::{http_get, wait_until, Terminus};
use std::time::Duration;
use terminus::tools::bench::target::metric;

/// The `[admin]` table the metrics tests add: an ephemeral port, snapshots every 50 ms.
pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n";

/// How long a metric poll may take.
pub const METRIC_WAIT: Duration = Duration::from_secs(10);

/// GET `/metrics` from the child's admin endpoint; asserts status 200.
pub fn scrape(t: &Terminus) -> String {
    let (status, body) = http_get(t.admin(), "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// The value of `series` (`name{labels}`) on a fresh scrape; None: no such sample.
pub fn scrape_metric(t: &Terminus, series: &str) -> Option<f64> {
    metric(&scrape(t), series)
}

/// The value of `series` on `page`; panics (with the page) if there is no such sample.
pub fn sample(page: &str, series: &str) -> f64 {
    metric(page, series).unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
}

/// Scrape until `done` holds for the page (bounded by `timeout`); the last page
/// either way, for the caller's assertion to show.
pub fn wait_page(t: &Terminus, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let mut page = String::new();
    wait_until(timeout, || {
        page = scrape(t);
        done(&page)
    });
    page
}

/// Scrape until `series` reads `want` (bounded by [`METRIC_WAIT`]); the last page.
pub fn wait_metric(t: &Terminus, series: &str, want: f64) -> String {
    wait_page(t, METRIC_WAIT, |page| metric(page, series) == Some(want))
}

/// [`wait_metric`], and assert that `series` did reach `want`; the last page.
pub fn assert_metric(t: &Terminus, series: &str, want: f64) -> String {
    let page = wait_metric(t, series, want);
    assert_eq!(
        metric(&page, series),
        Some(want),
        "{series} did not reach {want} within {METRIC_WAIT:?}:\n{page}"
    );
    page
}
