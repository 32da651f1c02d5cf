#!/usr/bin/env python3
"""Figure by figure: do two demo runs' medians agree within their reported spreads?
Usage: python3 scripts/compare-demo-runs.py RUN1.txt RUN2.txt  (the demo's stdout). Prints a markdown table.
"agree": each run's median lies inside the other run's min–max."""
import sys

HEAD = ["handshakes/s", "vs term", "srv CPU µs/hs", "vs term", "Gbit/s", "vs term",
        "rr p50 µs", "vs term", "rr p99 µs", "vs term"]
MODES = ["plaintext (direct)", "terminate", "reencrypt", "mtls"]

def table(path):
    lines = open(path).read().splitlines()
    h = next(i for i, l in enumerate(lines) if l.startswith("mode ") and "handshakes/s" in l)
    out = {}
    for m, mode in enumerate(MODES):
        row, spread = lines[h + 1 + 2 * m], lines[h + 2 + 2 * m]
        cells, ranges = row[19:].split(), spread[19:].split()
        for i, (c, r) in enumerate(zip(cells, ranges)):
            if c == "-" or (i % 2 == 1 and mode == "terminate"):
                continue
            med = float(c.rstrip("*").rstrip("x"))
            lo, hi = (float(x) for x in r.rstrip("x").split("–"))
            out[(mode, i)] = (med, lo, hi, c.endswith("*"))
    return out

a, b = table(sys.argv[1]), table(sys.argv[2])
print("| mode | figure | run 1: median (min–max) | run 2: median (min–max) | run 2 / run 1 | medians inside the other's min–max | ranges overlap |")
print("|---|---|---:|---:|---:|---|---|")
agree = n = overlap = within = quiet = quiet_agree = 0
for key in a:
    if key not in b:
        continue
    (m1, l1, h1, n1), (m2, l2, h2, n2) = a[key], b[key]
    ok = l2 <= m1 <= h2 and l1 <= m2 <= h1
    ov = l1 <= h2 and l2 <= h1
    agree += ok
    overlap += ov
    within += abs(m2 / m1 - 1) <= 0.15
    n += 1
    if not (n1 or n2):
        quiet += 1
        quiet_agree += ok
    mode, i = key
    fig = HEAD[i] if i % 2 == 0 else f"{HEAD[i - 1]} vs term"
    f = lambda m, l, h, z: f"{m:g}{'*' if z else ''} ({l:g}–{h:g})"
    print(f"| {mode} | {fig} | {f(m1, l1, h1, n1)} | {f(m2, l2, h2, n2)} | {m2 / m1:.2f} | {'yes' if ok else '**no**'} | {'yes' if ov else '**no**'} |")
print(f"\n{agree} of {n} figures agree (each median inside the other run's min–max); the min–max "
      f"ranges overlap for {overlap} of {n}; the medians are within ±15 % of each other for {within} of {n}. "
      f"Of the {quiet} figures flagged noisy in neither run, {quiet_agree} agree.")
