//! The `terminus run` config writer: listeners with the PKI's server certificate.

use super::Pki;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
pub use terminus_testkit::config::http_rule;

/// One `[[listeners]]` table. `cert`/`key` are always the PKI's server.pem/server.key,
/// given relative to the config file's folder.
#[derive(Clone)]
pub struct ListenerConf {
    pub name: String,
    pub upstreams: Vec<SocketAddr>,
    /// Extra `key = value` lines, value already in TOML syntax.
    pub extra: Vec<(String, String)>,
    /// Raw TOML written after the listener's keys: its sub-tables
    /// (`[listeners.client_auth]`, `[[listeners.sni]]`...), which must follow them.
    pub tables: Vec<String>,
}

impl ListenerConf {
    pub fn new(name: &str, upstreams: &[SocketAddr]) -> ListenerConf {
        ListenerConf {
            name: name.to_string(),
            upstreams: upstreams.to_vec(),
            extra: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Add `key = value` (value in TOML syntax, e.g. `"500"` or `r#"["http/1.1"]"#`).
    pub fn opt(mut self, key: &str, toml_value: &str) -> ListenerConf {
        self.extra.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Add `key = value` lines (one a line, values in TOML syntax).
    pub fn opts(mut self, lines: &str) -> ListenerConf {
        for line in lines.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(" = ").unwrap();
            self = self.opt(k, v);
        }
        self
    }

    /// The tables of an http listener whose callers may show a certificate of
    /// `client-ca.pem` ([`super::Pki::client_ca`]): optional client auth, and `http`
    /// (keys and rules) under `[listeners.http]`.
    pub fn http_callers(self, http: &str) -> ListenerConf {
        self.raw(&format!(
            "[listeners.client_auth]\nmode = \"optional\"\nca = [\"client-ca.pem\"]\n\n[listeners.http]\n{http}"
        ))
    }

    /// Append raw TOML at the end of this listener's block, e.g.
    /// `"[listeners.client_auth]\nmode = \"require\"\n"`.
    pub fn raw(mut self, toml: &str) -> ListenerConf {
        self.tables.push(toml.to_string());
        self
    }
}

/// The rules of the identity tests: only [`super::CHECKOUT`] may call `paths`
/// (rule "admin-checkout"), everyone else is denied them (rule "no-admin").
pub fn checkout_only(paths: &str) -> String {
    let allow = http_rule("admin-checkout", "allow", super::CHECKOUT, "", paths);
    allow + &http_rule("no-admin", "deny", "any", "", paths)
}

/// Write `NAME.toml` into the PKI dir and return its path.
pub fn write_config(pki: &Pki, workers: Option<usize>, listeners: &[ListenerConf]) -> PathBuf {
    write_config_with_log(pki, workers, listeners, "off")
}

/// [`write_config`] with `[log] access = ACCESS` (`"off"`, `"stderr"`, or a file path,
/// relative to the PKI dir).
pub fn write_config_with_log(
    pki: &Pki,
    workers: Option<usize>,
    listeners: &[ListenerConf],
    access: &str,
) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut s = String::new();
    if let Some(w) = workers {
        writeln!(s, "[runtime]\nworkers = {w}\n").unwrap();
    }
    writeln!(s, "[log]\naccess = {access:?}\n").unwrap();
    for l in listeners {
        let ups: Vec<String> = l.upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        writeln!(s, "[[listeners]]").unwrap();
        writeln!(s, "name = \"{}\"", l.name).unwrap();
        writeln!(s, "listen = \"127.0.0.1:0\"").unwrap();
        writeln!(s, "cert = \"server.pem\"").unwrap();
        writeln!(s, "key = \"server.key\"").unwrap();
        writeln!(s, "upstreams = [{}]", ups.join(", ")).unwrap();
        for (k, v) in &l.extra {
            writeln!(s, "{k} = {v}").unwrap();
        }
        for t in &l.tables {
            s.push_str(t);
            if !t.ends_with('\n') {
                s.push('\n');
            }
        }
        s.push('\n');
    }
    let path = pki.dir().join(format!(
        "terminus-{}.toml",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, s).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Rewrite every `upstreams = [...]` line of a config written by `write_config*` to
/// `entries` as written (host names, `HOST:PORT`), e.g. `["svc.test:8080"]`.
pub fn set_upstream_entries(config: &Path, entries: &[&str]) {
    let text = std::fs::read_to_string(config).unwrap();
    let quoted: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
    let line = format!("upstreams = [{}]", quoted.join(", "));
    let out: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.starts_with("upstreams = ") {
                line.as_str()
            } else {
                l
            }
        })
        .collect();
    std::fs::write(config, out.join("\n") + "\n").unwrap();
}

/// Rewrite a config file through `edit` (in place, not atomically: for configs a
/// running terminus does not read meanwhile, or reads on a signal).
pub fn edit_config(config: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, edit(text)).unwrap();
}

/// Append top-level tables (`[admin]`, `[resolver]`) to a config written by
/// `write_config*`.
pub fn append_tables(config: &Path, tables: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push('\n');
    text.push_str(tables);
    std::fs::write(config, text).unwrap();
    config.to_path_buf()
}

/// Replace a file's content at once (write a sibling, rename over it), so a reader
/// never sees it half written.
pub fn replace_file(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config (in the PKI's folder) with one listener `edge` in front of `upstream`.
pub fn edge_config(pki: &Pki, workers: Option<usize>, upstream: SocketAddr) -> PathBuf {
    write_config(pki, workers, &[ListenerConf::new("edge", &[upstream])])
}

/// The most common set-up: an echo backend and [`edge_config`] in front of it. Keep
/// the backend alive for the test.
pub fn echo_edge(pki: &Pki, workers: Option<usize>) -> (super::Backend, PathBuf) {
    let backend = super::Backend::echo();
    let config = edge_config(pki, workers, backend.addr());
    (backend, config)
}
