//! What a latency sample costs the load generator: `hdrhistogram` record and merge.
//!
//! Values are latencies in nanoseconds, log-uniform from 1 µs to 100 ms (a fixed
//! pseudo-random sequence, so every run records the same values and the branch
//! predictor can't learn a single bucket). The histogram covers 1 ns .. 1 h at 3
//! significant digits, the shape a `terminus bench` worker would use. Each
//! iteration records 1024 values; criterion's element throughput is records/s.
//!
//! - `histogram/record`: `Histogram::record` (checked; returns `Result`).
//! - `histogram/saturating_record`: clamps out-of-range values instead.
//! - `histogram/add`: merging one worker's histogram into a total (per merge).
//!
//! Reproduce: `cargo bench --bench histogram`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use std::hint::black_box;

const BATCH: usize = 1024;
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("histogram bounds")
}

/// Log-uniform latencies in ns between 1 µs and 100 ms (xorshift64, fixed seed).
fn latencies() -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1e3 * 1e5f64.powf(unit)) as u64
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let values = latencies();
    let mut g = c.benchmark_group("histogram");

    g.throughput(Throughput::Elements(BATCH as u64));
    let mut h = new_histogram();
    g.bench_function("record", |b| {
        b.iter(|| {
            for &v in &values {
                h.record(black_box(v)).expect("in range");
            }
        })
    });
    let mut h = new_histogram();
    g.bench_function("saturating_record", |b| {
        b.iter(|| {
            for &v in &values {
                h.saturating_record(black_box(v));
            }
        })
    });

    g.throughput(Throughput::Elements(1));
    let mut worker = new_histogram();
    for &v in &values {
        worker.record(v).expect("in range");
    }
    let mut total = new_histogram();
    g.bench_function("add", |b| {
        b.iter(|| total.add(black_box(&worker)).expect("same bounds"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
