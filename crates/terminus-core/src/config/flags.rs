//! flags: the one-command mode, `terminus run --listen … --upstream … --cert … --key …`
//! (ghostunnel's habit, for quick use and for containers without a config file).
//!
//! Owns: [`ListenerFlags`] (the clap arguments `run` and `check` share) and their
//! translation into config text. The flags become the TOML a file would hold, which
//! is then parsed, validated and resolved by the same code as a file: one listener
//! named `main`, every default as in a file, errors in the same words (placed at
//! `<command line>`, with the field the flag sets).
//! I/O contract: none (the text is parsed by [`super::Config::parse`]).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What `<command line>` errors are placed at; relative paths in flags are taken
/// from the current directory (its "folder").
pub const SOURCE: &str = "<command line>";

/// One listener from flags (any of them conflicts with `--config`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenerFlags {
    /// Listen address (`HOST:PORT`, `[::]:8443`, port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Upstream `HOST:PORT` (repeat for several; names are resolved and re-resolved).
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Vec<String>,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// CA bundle for client certificates (repeatable): turns on mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Vec<PathBuf>,
    /// `require` (default with --client-ca) or `optional`.
    #[arg(long, value_name = "MODE")]
    pub client_auth: Option<String>,
    /// Allowed client identity: `spiffe://…` (or `…/*`), `dns:NAME`, `cn:NAME`
    /// (repeatable; none: any verified client).
    #[arg(long, value_name = "ID")]
    pub allow: Vec<String>,
    /// CRL for client certificates (repeatable).
    #[arg(long, value_name = "FILE")]
    pub crl: Vec<PathBuf>,
    /// Re-encrypt to the upstream, verified against this CA bundle (repeatable).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// The name the upstream's certificate must carry (default: the upstream host).
    #[arg(long, value_name = "NAME")]
    pub upstream_server_name: Option<String>,
    /// Send a PROXY v2 header with the client's identity to the upstream.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`) address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Worker threads (default: one per allowed CPU, capped by the cgroup quota).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Access log: `stderr`, `off` (default) or a file.
    #[arg(long, value_name = "WHERE")]
    pub access_log: Option<String>,
}

impl ListenerFlags {
    /// Whether any listener flag was given (then `--config` must not be).
    pub fn given(&self) -> bool {
        self.listen.is_some()
            || !self.upstream.is_empty()
            || self.cert.is_some()
            || self.key.is_some()
    }

    /// The config text these flags stand for; the error names the missing flags.
    pub fn to_toml(&self) -> Result<String, String> {
        let missing: Vec<&str> = [
            ("--listen", self.listen.is_none()),
            ("--upstream", self.upstream.is_empty()),
            ("--cert", self.cert.is_none()),
            ("--key", self.key.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "without --config, {} must be given too",
                missing.join(", ")
            ));
        }
        let mut t = String::new();
        if let Some(w) = self.workers {
            let _ = writeln!(t, "[runtime]\nworkers = {w}\n");
        }
        if let Some(a) = &self.admin {
            let _ = writeln!(t, "[admin]\nlisten = {}\n", q(a));
        }
        let access = self.access_log.as_deref().unwrap_or("off");
        let _ = writeln!(t, "[log]\naccess = {}\n", q(access));
        let _ = writeln!(t, "[[listeners]]\nname = \"main\"");
        let _ = writeln!(
            t,
            "listen = {}",
            q(self.listen.as_deref().unwrap_or_default())
        );
        let _ = writeln!(t, "cert = {}", qp(self.cert.as_deref()));
        let _ = writeln!(t, "key = {}", qp(self.key.as_deref()));
        let _ = writeln!(
            t,
            "upstreams = {}",
            list(self.upstream.iter().map(|u| q(u)))
        );
        if self.proxy_protocol {
            let _ = writeln!(t, "proxy_protocol = \"v2\"");
        }
        if !self.client_ca.is_empty() || self.client_auth.is_some() || !self.allow.is_empty() {
            let mode = self.client_auth.as_deref().unwrap_or("require");
            let _ = writeln!(t, "\n[listeners.client_auth]\nmode = {}", q(mode));
            let _ = writeln!(
                t,
                "ca = {}",
                list(self.client_ca.iter().map(|p| qp(Some(p))))
            );
            let _ = writeln!(t, "crl = {}", list(self.crl.iter().map(|p| qp(Some(p)))));
            let _ = writeln!(t, "allow = {}", list(self.allow.iter().map(|a| q(a))));
        }
        if !self.upstream_ca.is_empty() {
            let _ = writeln!(t, "\n[listeners.upstream_tls]");
            let _ = writeln!(
                t,
                "ca = {}",
                list(self.upstream_ca.iter().map(|p| qp(Some(p))))
            );
            let name = match &self.upstream_server_name {
                Some(n) => n.clone(),
                // The first upstream's host, as a client dialling it would check.
                None => upstream_host(&self.upstream[0]),
            };
            let _ = writeln!(t, "server_name = {}", q(&name));
        }
        Ok(t)
    }
}

/// `host` of `host:port` / `[v6]:port`.
fn upstream_host(entry: &str) -> String {
    let host = entry.rsplit_once(':').map_or(entry, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// A TOML string literal (escaped as TOML wants).
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn qp(p: Option<&Path>) -> String {
    q(&p.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default())
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn flags() -> ListenerFlags {
        ListenerFlags {
            listen: Some("127.0.0.1:8443".into()),
            upstream: vec!["127.0.0.1:8080".into(), "localhost:8081".into()],
            cert: Some("server.pem".into()),
            key: Some("server.key".into()),
            client_ca: vec!["ca.pem".into()],
            allow: vec![
                "spiffe://example.org/client".into(),
                "cn:odd \"name\"".into(),
            ],
            upstream_ca: vec!["up-ca.pem".into()],
            admin: Some("127.0.0.1:9901".into()),
            workers: Some(2),
            ..ListenerFlags::default()
        }
    }

    /// The flags and the file they stand for load into the same config.
    #[test]
    fn flags_build_the_config_a_file_would() {
        let dir = std::env::temp_dir();
        let from_flags = Config::parse(&flags().to_toml().unwrap(), &dir.join(SOURCE)).unwrap();
        let file = "[runtime]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n\
                    [log]\naccess = \"off\"\n\n[[listeners]]\nname = \"main\"\n\
                    listen = \"127.0.0.1:8443\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                    upstreams = [\"127.0.0.1:8080\", \"localhost:8081\"]\n\n\
                    [listeners.client_auth]\nmode = \"require\"\nca = [\"ca.pem\"]\ncrl = []\n\
                    allow = [\"spiffe://example.org/client\", \"cn:odd \\\"name\\\"\"]\n\n\
                    [listeners.upstream_tls]\nca = [\"up-ca.pem\"]\nserver_name = \"127.0.0.1\"\n";
        let from_file = Config::parse(file, &dir.join(SOURCE)).unwrap();
        assert_eq!(format!("{from_flags:?}"), format!("{from_file:?}"));
    }

    #[test]
    fn missing_flags_are_named_and_hosts_are_taken_from_the_first_upstream() {
        let err = ListenerFlags {
            listen: Some("127.0.0.1:1".into()),
            ..ListenerFlags::default()
        }
        .to_toml()
        .unwrap_err();
        assert_eq!(
            err,
            "without --config, --upstream, --cert, --key must be given too"
        );
        assert_eq!(upstream_host("billing.internal:8443"), "billing.internal");
        assert_eq!(upstream_host("[::1]:8443"), "::1");
    }
}
