//! terminus: the binary's crate. The code lives in the workspace's member crates
//! (ARCHITECTURE.md, "Crates"); this library only re-exports them under the paths
//! the CLI, the integration tests and the benches use.

pub use terminus_core::{app, config, host, ops, proxy, runtime, telemetry, tls};
pub use terminus_tools as tools;
