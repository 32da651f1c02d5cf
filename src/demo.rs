//! demo: temporary PKI, built-in backend, terminator, a short measurement.
#![forbid(unsafe_code)]

pub fn run(seconds: u64, serve: bool) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet ({seconds} {serve})")
}
