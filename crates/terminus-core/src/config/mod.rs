//! Config schema (TOML, serde) with defaults and validation.
//!
//! Owns: parsing a config file into [`Config`], resolving relative paths against the
//! file's folder, and validation errors that name the file, line and field.
//! Opens no sockets; reads the config file itself (certificate files are the
//! `tls` module's business), and resolves the host names in `listen` and
//! `upstreams` once loaded (`host::lookup::Lookup`: the `[resolver]
//! hosts_file`, then getaddrinfo), so that a name that does not resolve is a
//! problem placed like any other (`file:line: listeners[0].upstreams[1]: cannot
//! resolve ...`).
//!
//! Parts: `schema` (the types, defaults, and the enums string settings become),
//! `endpoint` (`HOST:PORT` settings), `validate` (the rules, one function per
//! section), `location` (field paths and lines), `error` ([`ConfigError`]). This
//! file reads the file and runs them in order.
//!
//! Error format (one line each): `FILE:LINE: FIELD.PATH: cause`, e.g.
//! `config.toml:7: listeners[0].handshake_timeout_ms: invalid type: string "x", expected u64`.
//! When no line can be found the `:LINE` part is left out.
#![forbid(unsafe_code)]

mod authz;
mod error;
pub mod flags;
mod location;
mod schema;
mod validate;

pub use crate::host::endpoint::{Endpoint, EndpointError};
pub use authz::RulesProblem;
pub use error::{ConfigError, ConfigErrorKind};
pub use schema::{
    AccessLog, Admin, ClientAuth, ClientAuthMode, Config, HttpRule, HttpTable, InvalidCertificate,
    IoSetting, Listener, Log, LogFormat, ProxyProtocol, Resolver, RunAs, Runtime, SeccompSetting,
    Sni, Spiffe, UnsupportedProxyProtocol, UpstreamTls,
};

use error::first_with_count;
use location::{parse_field_path, Locator};
use std::path::{Path, PathBuf};

impl Config {
    /// Read, parse and validate a config file. Relative paths become relative to
    /// the file's folder. On failure the error is the first problem found (with a
    /// count of the others); [`Config::load_all`] returns every problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_all(path).map_err(|all| first_with_count(all, path.to_path_buf()))
    }

    /// Like [`Config::load`], but reports every validation problem, one error each.
    /// (A file that does not read or parse yields exactly one error.)
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![read_error(path, e)])?;
        Config::parse_all(&text, path)
    }

    /// Parse and validate config text as if it had been read from `source` (used
    /// for error messages and for resolving relative paths). First problem only.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        Config::parse_all(text, source).map_err(|all| first_with_count(all, source.to_path_buf()))
    }

    /// Parse and validate config text; every problem, one error each.
    pub fn parse_all(text: &str, source: &Path) -> Result<Config, Vec<ConfigError>> {
        let checked = Config::parse_checked(text, source);
        match checked.config {
            Some(cfg) if checked.problems.is_empty() => Ok(cfg),
            _ => Err(checked.problems),
        }
    }

    /// For `check`: read, parse and validate, but keep the config even when
    /// validation finds problems, so that the files and addresses it names can be
    /// checked in the same pass. Never fails: an unreadable or unparsable file gives
    /// `config: None` and its one problem.
    pub fn load_checked(path: &Path) -> Checked {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse_checked(&text, path),
            Err(e) => Checked {
                config: None,
                problems: vec![read_error(path, e)],
                listeners_with_problems: Vec::new(),
                file: path.to_path_buf(),
                text: String::new(),
            },
        }
    }

    /// [`Config::load_checked`] on text read from `source`.
    pub fn parse_checked(text: &str, source: &Path) -> Checked {
        let doc = toml_edit::ImDocument::parse(text).ok();
        let locator = Locator {
            file: source,
            text,
            doc: doc.as_ref(),
        };
        let mut checked = Checked {
            config: None,
            problems: Vec::new(),
            listeners_with_problems: Vec::new(),
            file: source.to_path_buf(),
            text: text.to_owned(),
        };
        let mut cfg: Config = match toml::from_str(text) {
            Ok(cfg) => cfg,
            Err(e) => {
                checked.problems.push(locator.serde_error(&e));
                return checked;
            }
        };
        let mut listeners = Vec::new();
        checked.problems = cfg.validate(&locator, &mut listeners);
        cfg.finish(source);
        for (i, e) in resolve_names(&mut cfg, &locator) {
            listeners.push(i);
            checked.problems.push(e);
        }
        checked
            .problems
            .extend(resolve_run_as(&mut cfg.runtime, &locator));
        listeners.sort_unstable();
        listeners.dedup();
        checked.listeners_with_problems = listeners;
        checked.config = Some(cfg);
        checked
    }
}

/// Resolve the names in `listen` (the first address is bound) and `upstreams`
/// (every address joins the round robin); each name that does not resolve is a
/// problem of its listener. A named `listen` is then checked against the other
/// listen addresses and the admin address, as validation does for literal ones.
fn resolve_names(cfg: &mut Config, at: &Locator<'_>) -> Vec<(usize, ConfigError)> {
    use location::Seg::{Index as I, Key as K};
    let lookup = crate::host::lookup::Lookup {
        hosts_file: cfg.resolver.hosts_file.clone(),
    };
    let invalid =
        |path: &[location::Seg<'_>], msg: String| at.error(path, ConfigErrorKind::Invalid(msg));
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter_mut().enumerate() {
        if let Endpoint::Name { host, port } = &l.listen_setting {
            match lookup.resolve(host, *port) {
                Ok(addrs) => l.listen = addrs[0],
                Err(e) => out.push((
                    i,
                    invalid(
                        &[K("listeners"), I(i), K("listen")],
                        format!("cannot resolve {}: {e}", l.listen_setting),
                    ),
                )),
            }
        }
        for (j, entry) in l.upstream_entries.iter().enumerate() {
            let Endpoint::Name { host, port } = entry else {
                continue;
            };
            match lookup.resolve(host, *port) {
                Ok(addrs) => l.upstream_addrs[j] = addrs,
                Err(e) => out.push((
                    i,
                    invalid(
                        &[K("listeners"), I(i), K("upstreams"), I(j)],
                        format!(
                            "cannot resolve {entry}: {e} (a name must resolve when terminus \
                             starts or reloads; later failures keep its last good addresses)"
                        ),
                    ),
                )),
            }
        }
        l.set_upstreams_from_entries();
    }
    let admin = cfg.admin.as_ref().map(|a| a.listen);
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.listen_setting.addr().is_some() || l.listen.port() == 0 {
            continue;
        }
        let field = [K("listeners"), I(i), K("listen")];
        let (written, addr) = (&l.listen_setting, l.listen);
        if let Some(other) =
            (0..cfg.listeners.len()).find(|&o| o != i && cfg.listeners[o].listen == addr)
        {
            out.push((
                i,
                invalid(
                    &field,
                    format!("{written} resolves to {addr}, already used by listeners[{other}]"),
                ),
            ));
        }
        if admin == Some(addr) {
            out.push((
                i,
                invalid(
                    &field,
                    format!("{written} resolves to {addr}, also the admin address"),
                ),
            ));
        }
    }
    out
}

/// `[runtime] user`/`group` → ids (NSS), each name that does not resolve a problem
/// at its line. Without `group`, the user's primary group.
fn resolve_run_as(rt: &mut Runtime, at: &Locator<'_>) -> Vec<ConfigError> {
    use location::Seg::Key as K;
    let Some(user) = rt.user.clone().filter(|u| !u.is_empty()) else {
        return Vec::new();
    };
    let invalid = |key, msg| at.error(&[K("runtime"), K(key)], ConfigErrorKind::Invalid(msg));
    let mut out = Vec::new();
    let ids = crate::host::users::lookup_user(&user).map_err(|e| out.push(invalid("user", e)));
    let gid = match rt.group.as_deref() {
        Some("") => return out, // validation said so
        Some(g) => crate::host::users::lookup_group(g)
            .map(|gid| (g.to_owned(), gid))
            .map_err(|e| out.push(invalid("group", e))),
        None => ids.map(|(_, gid)| (crate::host::users::group_name(gid), gid)),
    };
    if let (Ok((uid, _)), Ok((group, gid))) = (ids, gid) {
        rt.run_as = Some(RunAs {
            user,
            uid,
            group,
            gid,
        });
    }
    out
}

fn read_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError::new(path, None, None, ConfigErrorKind::Read(e))
}

/// What [`Config::load_checked`] found: the config when it parsed (even if
/// validation found problems), every problem, and the text, to place problems that
/// are found later (an address that cannot be bound, a CPU outside the affinity mask).
#[derive(Debug)]
pub struct Checked {
    /// `None` when the file did not read or parse; paths are resolved as by
    /// [`Config::load`].
    pub config: Option<Config>,
    /// Every read, parse or validation problem.
    pub problems: Vec<ConfigError>,
    /// Indexes of the listeners that have a validation problem.
    pub listeners_with_problems: Vec<usize>,
    file: PathBuf,
    text: String,
}

impl Checked {
    /// `FILE:LINE: FIELD: msg` for a problem found outside validation. `field` is a
    /// field path as printed in errors, e.g. `listeners[1].listen` or `runtime.cpus[0]`;
    /// the line is the deepest part of it present in the file.
    pub fn error(&self, field: &str, msg: &str) -> ConfigError {
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok();
        let locator = Locator {
            file: &self.file,
            text: &self.text,
            doc: doc.as_ref(),
        };
        locator.error(
            &parse_field_path(field),
            ConfigErrorKind::Invalid(msg.to_owned()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = r#"
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
cert = "server.pem"
key = "keys/server.key"
upstreams = ["127.0.0.1:8080"]
"#;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse_all(text, Path::new("/etc/terminus/config.toml"))
            .map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
    }

    fn one_error(text: &str) -> String {
        let errors = parse(text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let cfg = parse(LISTENER).unwrap();
        assert_eq!(cfg.source, Path::new("/etc/terminus/config.toml"));
        let l = &cfg.listeners[0];
        assert_eq!(l.listen.port(), 0);
        assert_eq!(l.cert, Path::new("/etc/terminus/server.pem"));
        assert_eq!(l.key, Path::new("/etc/terminus/keys/server.key"));
        assert_eq!(l.handshake_timeout_ms, 10_000);
        assert_eq!(cfg.runtime.ring_entries, 4096);
        assert_eq!(cfg.log.access, AccessLog::Stderr);
        assert_eq!(l.proxy_protocol, ProxyProtocol::Off);
    }

    #[test]
    fn absolute_paths_and_access_log_file() {
        let text = format!(
            "[log]\naccess = \"access.log\"\n{}ticket_key_file = \"/var/lib/t.key\"\n",
            LISTENER.replace("server.pem", "/certs/server.pem")
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.listeners[0].cert, Path::new("/certs/server.pem"));
        assert_eq!(
            cfg.listeners[0].ticket_key_file.as_deref(),
            Some(Path::new("/var/lib/t.key"))
        );
        assert_eq!(
            cfg.log.access,
            AccessLog::File("/etc/terminus/access.log".into())
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_table() {
        let e = one_error(&format!("{LISTENER}listn = 1\n"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:8: listeners[0]: unknown field `listn`"),
            "{e}"
        );
        let e = one_error(&format!("listn = 1\n{LISTENER}"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:1: unknown field `listn`, expected one of"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_field_path() {
        let e = one_error(&format!("{LISTENER}handshake_timeout_ms = \"x\"\n"));
        assert_eq!(
            e,
            "/etc/terminus/config.toml:8: listeners[0].handshake_timeout_ms: \
             invalid type: string \"x\", expected u64"
        );
        let e = one_error(&format!(
            "{LISTENER}{}",
            LISTENER.replace("[\"127.0.0.1:8080\"]", "[\"127.0.0.1:1\", \"nope\"]")
        ));
        assert_eq!(
            e,
            "/etc/terminus/config.toml:14: listeners[1].upstreams[1]: \"nope\" has no port: \
             write HOST:PORT, e.g. \"localhost:8080\" or \"10.0.0.7:8080\""
        );
        let e = one_error(&format!("[runtime]\nworkers = -1\n{LISTENER}"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:2: runtime.workers: invalid value"),
            "{e}"
        );
    }

    #[test]
    fn inline_tables_and_missing_fields() {
        let e = one_error("listeners = [{ name = \"a\", listen = \"127.0.0.1:0\", cert = \"c\", key = \"k\", upstreams = [], alpn = [1] }]");
        assert!(
            e.contains(":1: listeners[0].alpn[0]: invalid type: integer"),
            "{e}"
        );
        let e = one_error(&LISTENER.replace("cert = \"server.pem\"\n", ""));
        assert_eq!(
            e,
            "/etc/terminus/config.toml:2: listeners[0]: missing field `cert`"
        );
        let e = one_error("");
        assert!(e.contains("missing field `listeners`"), "{e}");
    }

    #[test]
    fn syntax_error_is_one_line() {
        let e = one_error("[runtime]\nworkers = = 2\n");
        assert!(
            e.starts_with("/etc/terminus/config.toml:2: invalid TOML: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn validation_reports_every_problem_with_lines() {
        let text = format!(
            "[runtime]\nworkers = 0\nring_entries = 1000\nrecv_buffers = 3\nrecv_buffer_size = 100\n\
             {LISTENER}upstreams = []\nproxy_protocol = \"v1\"\nmax_buffered_bytes = 10\nidle_timeout_ms = 0\n\
             [listeners.client_auth]\nmode = \"require\"\nallow = [\"spiffe://*\"]\n{LISTENER}"
        )
        .replace("upstreams = [\"127.0.0.1:8080\"]\nupstreams = []", "upstreams = []");
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        let expect = [
            format!("{f}:2: runtime.workers: must be at least 1"),
            format!("{f}:3: runtime.ring_entries: must be a power of two between 2 and 32768, got 1000"),
            format!("{f}:4: runtime.recv_buffers: must be a power of two between 1 and 32768, got 3"),
            format!("{f}:5: runtime.recv_buffer_size: must be at least 4096 bytes, got 100"),
            format!("{f}:12: listeners[0].upstreams: at least one upstream is required"),
            format!("{f}:15: listeners[0].idle_timeout_ms: must be greater than 0"),
            format!("{f}:14: listeners[0].max_buffered_bytes: must be at least 16384 bytes (one TLS record), got 10"),
            format!("{f}:13: listeners[0].proxy_protocol: must be \"v2\" (the only supported version), got \"v1\""),
            format!("{f}:16: listeners[0].client_auth.ca: mode \"require\" needs at least one CA bundle to verify client certificates against (ca = [\"clients-ca.pem\"])"),
            format!("{f}:18: listeners[0].client_auth.allow[0]: \"spiffe://*\": a wildcard cannot stand for a trust domain or part of one; name the trust domain exactly (e.g. \"spiffe://example.org/ns/*\")"),
            format!("{f}:21: listeners[1].name: duplicate listener name \"edge\" (already used by listeners[0])"),
        ];
        assert_eq!(errors, expect);
    }

    #[test]
    fn a_candidate_is_checked_like_client_auth_and_its_files_resolved() {
        let text = format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"require\"\ninvalid_certificate = \"anonymous\"\n\
             ca = [\"ca.pem\"]\n\
             [listeners.client_auth.candidate]\nmode = \"require\"\nallow = [\"spiffe://*\"]\n"
        );
        let f = "/etc/terminus/config.toml";
        assert_eq!(
            parse(&text).unwrap_err(),
            [
                format!("{f}:10: listeners[0].client_auth.invalid_certificate: \"anonymous\" applies to mode \"optional\" only (mode is \"require\"): set mode = \"optional\" or remove `invalid_certificate`"),
                format!("{f}:12: listeners[0].client_auth.candidate.ca: mode \"require\" needs at least one CA bundle to verify client certificates against (ca = [\"clients-ca.pem\"])"),
                format!("{f}:14: listeners[0].client_auth.candidate.allow[0]: \"spiffe://*\": a wildcard cannot stand for a trust domain or part of one; name the trust domain exactly (e.g. \"spiffe://example.org/ns/*\")"),
            ]
        );
        let ok = format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"optional\"\nca = [\"ca.pem\"]\n\
             invalid_certificate = \"anonymous\"\n\
             [listeners.client_auth.candidate]\nmode = \"require\"\nca = [\"c.pem\"]\ncrl = [\"c.crl\"]\n"
        );
        let cfg = parse(&ok).unwrap();
        let ca = cfg.listeners[0].client_auth.as_ref().unwrap();
        assert_eq!(ca.invalid_certificate, InvalidCertificate::Anonymous);
        let c = ca.candidate.as_deref().unwrap();
        let e = Path::new("/etc/terminus");
        assert_eq!(
            (c.ca.as_slice(), c.crl.as_slice()),
            (&[e.join("c.pem")][..], &[e.join("c.crl")][..])
        );
        assert!(
            one_error(&ok.replace("\"anonymous\"", "\"maybe\"")).contains(
                "listeners[0].client_auth.invalid_certificate: must be one of \"refuse\", \"anonymous\""
            ),
        );
    }

    #[test]
    fn trust_sections_are_typed_and_resolved() {
        let text = format!(
            "{LISTENER}proxy_protocol = \"v2\"\n\
             [[listeners.sni]]\nserver_names = [\"api.internal\", \"*.Example.org\"]\ncert = \"api.pem\"\nkey = \"/k/api.key\"\n\
             [[listeners.sni]]\nserver_names = [\"b.internal\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n\
             [listeners.client_auth]\nmode = \"require\"\nca = [\"ca.pem\", \"/pki/ca2.pem\"]\ncrl = [\"ca.crl\"]\n\
             allow = [\"spiffe://example.org/ns/prod/*\", \"dns:billing.internal\", \"cn:billing\"]\n\
             [listeners.upstream_tls]\nca = [\"up-ca.pem\"]\nserver_name = \"backend.internal\"\ncert = \"client.pem\"\nkey = \"client.key\"\n"
        );
        let cfg = parse(&text).unwrap();
        let l = &cfg.listeners[0];
        let e = Path::new("/etc/terminus");
        assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(l.sni.len(), 2);
        assert_eq!(l.sni[0].server_names, ["api.internal", "*.Example.org"]);
        assert_eq!(l.sni[0].cert, e.join("api.pem"));
        assert_eq!(l.sni[0].key, Path::new("/k/api.key"));
        assert_eq!(l.sni[1].key, e.join("b.key"));
        let ca = l.client_auth.as_ref().unwrap();
        assert_eq!(ca.mode, ClientAuthMode::Require);
        assert_eq!(ca.ca, [e.join("ca.pem"), PathBuf::from("/pki/ca2.pem")]);
        assert_eq!(ca.crl, [e.join("ca.crl")]);
        assert_eq!(ca.allow.len(), 3);
        let up = l.upstream_tls.as_ref().unwrap();
        assert_eq!(up.ca, [e.join("up-ca.pem")]);
        assert_eq!(up.server_name, "backend.internal");
        assert_eq!(up.cert.as_deref(), Some(e.join("client.pem").as_path()));
        assert_eq!(up.key.as_deref(), Some(e.join("client.key").as_path()));
        assert!(
            up.resume,
            "resumption towards the upstream is on by default"
        );
        let cfg = parse(&format!(
            "{LISTENER}[listeners.upstream_tls]\nca = [\"up-ca.pem\"]\nserver_name = \"b\"\nresume = false\n"
        ))
        .unwrap();
        assert!(!cfg.listeners[0].upstream_tls.as_ref().unwrap().resume);
    }

    #[test]
    fn client_auth_defaults_to_none_and_none_needs_no_ca() {
        let cfg = parse(&format!("{LISTENER}[listeners.client_auth]\n")).unwrap();
        let ca = cfg.listeners[0].client_auth.as_ref().unwrap();
        assert_eq!(ca.mode, ClientAuthMode::None);
        assert!(ca.ca.is_empty() && ca.crl.is_empty() && ca.allow.is_empty());
        // Rolling back to "none" may keep the CA bundles in place...
        let text =
            format!("{LISTENER}[listeners.client_auth]\nmode = \"none\"\nca = [\"ca.pem\"]\n");
        assert!(parse(&text).is_ok());
        assert!(parse(LISTENER).unwrap().listeners[0].client_auth.is_none());
    }

    #[test]
    fn allow_list_without_client_auth_is_an_error() {
        // ...but not an allow-list: it would look enforced and be ignored.
        let want = "/etc/terminus/config.toml:10: listeners[0].client_auth.allow: mode is \
                    \"none\" (also the default when `mode` is left out): no client \
                    certificate is asked for, so this allow-list would be silently ignored; \
                    set mode = \"require\" (or \"optional\") to enforce it, or remove `allow`";
        let text =
            format!("{LISTENER}[listeners.client_auth]\nmode = \"none\"\nallow = [\"cn:x\"]\n");
        assert_eq!(one_error(&text), want);
        let text = format!("{LISTENER}[listeners.client_auth]\n\nallow = [\"cn:x\"]\n");
        assert_eq!(one_error(&text), want);
    }

    #[test]
    fn checked_keeps_the_config_and_places_later_problems() {
        let text = format!(
            "[runtime]\ncpus = [0, 9999]\n{LISTENER}{}[listeners.client_auth]\nallow = [\"x\"]\n",
            LISTENER.replace("edge", "b")
        );
        let c = Config::parse_checked(&text, Path::new("c.toml"));
        let cfg = c.config.as_ref().unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(
            cfg.listeners[1].cert,
            std::path::absolute("server.pem").unwrap()
        );
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert_eq!(c.listeners_with_problems, [1]);
        assert_eq!(
            c.error("runtime.cpus[1]", "why").to_string(),
            "c.toml:2: runtime.cpus[1]: why"
        );
        assert_eq!(
            c.error("listeners[1].listen", "why").to_string(),
            "c.toml:13: listeners[1].listen: why"
        );
        assert_eq!(
            c.error("admin.listen", "why").to_string(),
            "c.toml: admin.listen: why"
        );
        let c = Config::parse_checked("listeners = 1\n", Path::new("c.toml"));
        assert!(c.config.is_none());
        assert_eq!(c.problems.len(), 1);
    }

    #[test]
    fn trust_section_type_errors_name_line_and_field() {
        let f = "/etc/terminus/config.toml";
        let e = one_error(&format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"maybe\"\n"
        ));
        assert_eq!(
            e,
            format!(
                "{f}:9: listeners[0].client_auth.mode: must be one of \"none\", \"optional\", \
                 \"require\", got \"maybe\""
            )
        );
        let e = one_error(&format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"require\"\ncas = [\"x\"]\n"
        ));
        assert!(
            e.starts_with(&format!(
                "{f}:10: listeners[0].client_auth: unknown field `cas`"
            )),
            "{e}"
        );
        let e = one_error(&format!(
            "{LISTENER}[[listeners.sni]]\nserver_names = [\"a.b\"]\ncert = \"a.pem\"\n"
        ));
        assert_eq!(
            e,
            format!("{f}:8: listeners[0].sni[0]: missing field `key`")
        );
        let e = one_error(&format!(
            "{LISTENER}[listeners.upstream_tls]\nca = \"ca.pem\"\nserver_name = \"x\"\n"
        ));
        assert!(
            e.starts_with(&format!(
                "{f}:9: listeners[0].upstream_tls.ca: invalid type: string"
            )),
            "{e}"
        );
        let e = one_error(&format!("{LISTENER}client_auth = 3\n"));
        assert!(
            e.starts_with(&format!("{f}:8: listeners[0].client_auth: invalid type")),
            "{e}"
        );
    }

    #[test]
    fn trust_section_validation_reports_every_problem() {
        let text = format!(
            "{LISTENER}\
             [[listeners.sni]]\nserver_names = []\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[listeners.sni]]\nserver_names = [\"API.internal\", \"10.0.0.1\", \"a.*.org\", \"\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n\
             [[listeners.sni]]\nserver_names = [\"api.INTERNAL\"]\ncert = \"c.pem\"\nkey = \"c.key\"\n\
             [listeners.client_auth]\nmode = \"optional\"\nallow = [\"cn:ok\", \"spiffe://example.org/a*\", \"billing\"]\n\
             [listeners.upstream_tls]\nca = []\nserver_name = \"not a name\"\nkey = \"k.pem\"\n"
        );
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        let expect = [
            format!("{f}:9: listeners[0].sni[0].server_names: must list at least one server name"),
            format!("{f}:13: listeners[0].sni[1].server_names[1]: \"10.0.0.1\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:13: listeners[0].sni[1].server_names[2]: \"a.*.org\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:13: listeners[0].sni[1].server_names[3]: \"\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:17: listeners[0].sni[2].server_names[0]: \"api.INTERNAL\" is already listed by listeners[0].sni[1]"),
            format!("{f}:20: listeners[0].client_auth.ca: mode \"optional\" needs at least one CA bundle to verify client certificates against (ca = [\"clients-ca.pem\"])"),
            format!("{f}:22: listeners[0].client_auth.allow[1]: \"spiffe://example.org/a*\": '*' is only allowed as the whole last path segment (\"spiffe://TRUST.DOMAIN/PREFIX/*\")"),
            format!("{f}:22: listeners[0].client_auth.allow[2]: \"billing\" is not an allow entry: expected \"spiffe://TRUST.DOMAIN/PATH\", \"spiffe://TRUST.DOMAIN/PREFIX/*\", \"dns:NAME\" or \"cn:NAME\""),
            format!("{f}:24: listeners[0].upstream_tls.ca: must list at least one CA bundle to verify the upstream's certificate against"),
            format!("{f}:25: listeners[0].upstream_tls.server_name: \"not a name\" is not a DNS name or an IP address"),
            format!("{f}:26: listeners[0].upstream_tls.key: a private key needs its client certificate: set `cert` too (or neither)"),
        ];
        assert_eq!(errors, expect);
    }

    #[test]
    fn workload_api_sources_are_validated() {
        let ok = "[spiffe]\nendpoint = \"unix:///run/agent.sock\"\n\
                  [[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nsvid = \"workload_api\"\n\
                  svid_hint = \"external\"\nupstreams = [\"127.0.0.1:8080\"]\n\
                  [listeners.client_auth]\nmode = \"require\"\ntrust = \"workload_api\"\n\
                  trust_domains = [\"example.org\"]\n\
                  [listeners.upstream_tls]\nserver_name = \"b.internal\"\nsvid = \"workload_api\"\n\
                  trust = \"workload_api\"\n";
        let cfg = parse(ok).unwrap();
        assert!(cfg.uses_workload_api());
        assert_eq!(cfg.spiffe.startup_timeout_ms, 30_000);
        let tls = cfg.listeners[0].tls();
        assert_eq!(tls.svid.unwrap().hint.as_deref(), Some("external"));

        let bad = "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nsvid = \"spire\"\n\
                   cert = \"a.pem\"\nupstreams = [\"127.0.0.1:8080\"]\n\
                   [listeners.client_auth]\nmode = \"require\"\ntrust_domains = [\"x.org\"]\n\
                   [[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nkey = \"b.key\"\n\
                   svid_hint = \"h\"\nupstreams = [\"127.0.0.1:8080\"]\n";
        let errors = parse(bad).unwrap_err().join("\n");
        for want in [
            "listeners[0].svid: must be \"workload_api\", got \"spire\"",
            "listeners[0].svid: the certificate and key come from the Workload API",
            "listeners[0].client_auth.trust_domains: restricts the Workload API's bundles",
            "listeners[0].client_auth.ca: mode \"require\" needs at least one CA bundle",
            "listeners[1].svid_hint: picks a Workload API SVID",
        ] {
            assert!(errors.contains(want), "{want:?} in:\n{errors}");
        }
        let missing = parse(&LISTENER.replace("cert = \"server.pem\"\n", "")).unwrap_err();
        assert_eq!(
            missing,
            ["/etc/terminus/config.toml:2: listeners[0]: missing field `cert`"]
        );
    }

    #[test]
    fn load_reports_first_problem_with_count() {
        let text = format!("[runtime]\nworkers = 0\nring_entries = 3\n{LISTENER}");
        let e = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml:2: runtime.workers: must be at least 1 (and 1 more problem; `terminus check` lists them all)"
        );
    }

    #[test]
    fn empty_listener_list_and_duplicate_addresses() {
        let e = one_error("listeners = []\n");
        assert_eq!(
            e,
            "/etc/terminus/config.toml:1: listeners: at least one [[listeners]] entry is required"
        );
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:9000\"\n{LISTENER}{}",
            LISTENER.replace("edge", "b")
        )
        .replace("127.0.0.1:0", "127.0.0.1:9000");
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        assert_eq!(
            errors,
            [
                format!("{f}:6: listeners[0].listen: address 127.0.0.1:9000 is also the admin address"),
                format!("{f}:13: listeners[1].listen: address 127.0.0.1:9000 is already used by listeners[0]"),
                format!("{f}:13: listeners[1].listen: address 127.0.0.1:9000 is also the admin address"),
            ]
        );
    }

    #[test]
    fn names_in_listen_and_upstreams_resolve_at_load() {
        let text = LISTENER
            .replace("\"127.0.0.1:0\"", "\"localhost:0\"")
            .replace(
                "[\"127.0.0.1:8080\"]",
                "[\"localhost:9000\", \"127.0.0.1:9000\", \"[::1]:9000\"]",
            );
        let cfg = parse(&text).unwrap();
        let l = &cfg.listeners[0];
        assert_eq!(l.listen, "127.0.0.1:0".parse().unwrap(), "localhost here");
        assert_eq!(l.upstream_entries[0].to_string(), "localhost:9000");
        assert!(l.upstream_addrs[0].contains(&"127.0.0.1:9000".parse().unwrap()));
        // Deduplicated: localhost's 127.0.0.1 and the literal one are one address.
        assert_eq!(
            l.upstreams
                .iter()
                .filter(|a| a.port() == 9000 && a.is_ipv4())
                .count(),
            1
        );
        assert!(l.upstreams.contains(&"[::1]:9000".parse().unwrap()));
        assert_eq!(l.resolve_interval_ms, 5000);
        assert_eq!(
            (l.upstream_backoff_ms, l.upstream_backoff_max_ms),
            (1000, 30000)
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_names_file_line_and_field() {
        let dir = std::env::temp_dir().join(format!("terminus-cfg-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.2 svc.test\n").unwrap();
        let source = dir.join("config.toml");
        let text = format!(
            "[resolver]\nhosts_file = \"hosts\"\n{}",
            LISTENER.replace(
                "[\"127.0.0.1:8080\"]",
                "[\"svc.test:8080\", \"nowhere.invalid:8080\"]"
            )
        );
        let errors: Vec<String> = Config::parse_all(&text, &source)
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let want = format!(
            "{}:9: listeners[0].upstreams[1]: cannot resolve nowhere.invalid:8080: ",
            source.display()
        );
        assert!(errors[0].starts_with(&want), "{errors:?}");
        assert!(
            errors[0].ends_with(
                "(a name must resolve when terminus starts or reloads; later failures keep its \
             last good addresses)"
            ),
            "{errors:?}"
        );
        let ok = text.replace(", \"nowhere.invalid:8080\"", "");
        let cfg = Config::parse(&ok, &source).unwrap();
        assert_eq!(cfg.resolver.hosts_file, Some(dir.join("hosts")));
        assert_eq!(
            cfg.listeners[0].upstreams,
            ["127.0.0.2:8080".parse().unwrap()]
        );
        let e = one_error(&LISTENER.replace("\"127.0.0.1:0\"", "\"nowhere.invalid:8443\""));
        assert!(
            e.starts_with(
                "/etc/terminus/config.toml:4: listeners[0].listen: cannot resolve \
                 nowhere.invalid:8443: "
            ),
            "{e}"
        );
        let e = one_error(&LISTENER.replace("\"127.0.0.1:0\"", "\"0.0.0.0\""));
        assert!(
            e.starts_with(
                "/etc/terminus/config.toml:4: listeners[0].listen: \"0.0.0.0\" has no port"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn health_and_resolver_settings_are_checked() {
        let text = format!(
            "{LISTENER}resolve_interval_ms = 0\nupstream_backoff_ms = 500\nupstream_backoff_max_ms = 100\n"
        );
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        assert_eq!(
            errors,
            [
                format!("{f}:8: listeners[0].resolve_interval_ms: must be greater than 0"),
                format!("{f}:10: listeners[0].upstream_backoff_max_ms: must be at least upstream_backoff_ms (500), got 100"),
            ]
        );
        let cfg = parse(&format!(
            "{LISTENER}upstream_backoff_ms = 0\nupstream_backoff_max_ms = 0\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.listeners[0].upstream_backoff_ms, 0,
            "0 turns passive health off"
        );
    }

    #[test]
    fn load_names_unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/terminus.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/terminus.toml: cannot read config file: "),
            "{e}"
        );
        assert!(e.contains("No such file or directory"), "{e}");
    }
}
