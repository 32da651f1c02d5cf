//! What the demo report says about the build and the host, so a reader can tell
//! where its figures come from: version, git commit, date, CPU model and cores,
//! kernel, frequency governor, TLS library versions.
//!
//! I/O contract: [`collect`] reads /proc, /sys and runs `git` once (the commit when the
//! build did not record one); the parsers beside it are pure.
#![forbid(unsafe_code)]

/// The resolved dependency versions of this build.
const CARGO_LOCK: &str = include_str!("../../../../Cargo.lock");

/// (label, value) lines for the report header, in order.
pub fn collect() -> Vec<(&'static str, String)> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let online = std::thread::available_parallelism().map_or(0, |n| n.get());
    let allowed = terminus_core::host::cpus::allowed_cpus().len();
    vec![
        ("version", format!("terminus {}", env!("CARGO_PKG_VERSION"))),
        ("git commit", commit()),
        ("date", utc_date(now_unix())),
        (
            "CPU model",
            read("/proc/cpuinfo")
                .and_then(|c| cpu_model(&c))
                .unwrap_or_else(|| "unknown".into()),
        ),
        (
            "cores",
            format!("{online} usable by this process ({allowed} in its affinity mask)"),
        ),
        (
            "kernel",
            read("/proc/sys/kernel/osrelease").map_or("unknown".into(), |k| k.trim().into()),
        ),
        (
            "governor",
            read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
                .map_or("n/a (no cpufreq: a VM, or fixed frequency)".into(), |g| {
                    g.trim().into()
                }),
        ),
        (
            "TLS",
            format!(
                "rustls {}, aws-lc-rs {} (aws-lc-sys {})",
                lock_version(CARGO_LOCK, "rustls").unwrap_or("?"),
                lock_version(CARGO_LOCK, "aws-lc-rs").unwrap_or("?"),
                lock_version(CARGO_LOCK, "aws-lc-sys").unwrap_or("?"),
            ),
        ),
    ]
}

/// The build's commit: `TERMINUS_GIT_COMMIT` at build time, else `git describe` in
/// the source tree it was built from, else "unknown".
fn commit() -> String {
    if let Some(c) = option_env!("TERMINUS_GIT_COMMIT") {
        return c.to_string();
    }
    std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR")])
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .map_or("unknown".into(), |c| {
            format!("{c} (git describe of the source tree)")
        })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time.
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// The version of package `name` in a Cargo.lock.
pub fn lock_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            return lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"');
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_796_207_400), "2026-12-02 10:30 UTC");
    }

    #[test]
    fn parsers() {
        let info = "processor\t: 0\nvendor_id\t: X\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let lock = "[[package]]\nname = \"rustls-pki-types\"\nversion = \"1.0.0\"\n\n\
                    [[package]]\nname = \"rustls\"\nversion = \"0.23.9\"\n";
        assert_eq!(lock_version(lock, "rustls"), Some("0.23.9"));
        assert_eq!(lock_version(lock, "ring"), None);
        assert!(lock_version(CARGO_LOCK, "rustls").is_some_and(|v| v.starts_with("0.23")));
        assert!(lock_version(CARGO_LOCK, "aws-lc-rs").is_some());
    }

    #[test]
    fn collects_every_line() {
        let m = collect();
        let labels: Vec<&str> = m.iter().map(|(l, _)| *l).collect();
        for l in [
            "version",
            "git commit",
            "date",
            "CPU model",
            "cores",
            "kernel",
            "governor",
            "TLS",
        ] {
            assert!(labels.contains(&l), "{l} missing: {m:?}");
        }
        assert!(m.iter().all(|(_, v)| !v.is_empty()), "{m:?}");
    }
}
