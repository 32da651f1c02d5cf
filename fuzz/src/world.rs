//! world: what the Conn targets run against, made once per process — a test PKI
//! written to a temporary folder, a real config parsed by `Config::parse` and
//! built into each listener's `ListenerLive` the way `terminus run` builds them,
//! rustls clients (no certificate, the PKI's client, a client of an unknown CA) and
//! a rustls server for the TLS upstream.

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use terminus::runtime::listener::ListenerLive;
use terminus::tools::certs::{LeafSpec, TestCa};
use terminus_testkit::config::http_rule;

/// Listener indexes in [`World::listeners`].
pub const PLAIN: usize = 0;
pub const MTLS: usize = 1;
pub const HTTP: usize = 2;
pub const REENCRYPT: usize = 3;
pub const HTTP_REENCRYPT: usize = 4;

/// The config: a plain tcp listener; mutual TLS `optional` with an allow-list and a
/// stricter candidate (`require`, another allow-list); an http listener (optional
/// client auth, both identity headers, rules and a per-caller rate); a
/// re-encrypting tcp listener with PROXY v2; a re-encrypting http listener.
fn config() -> String {
    let client = "spiffe://example.org/client"; // the PKI's client
    let rules = [
        http_rule("no-admin", "deny", "any", "", "/admin/*"),
        http_rule("client-writes", "allow", client, "POST PUT", ""),
        http_rule(
            "no-anonymous-writes",
            "deny",
            "anonymous",
            "POST PUT DELETE",
            "",
        ),
    ];
    let http = [
        "protocol = \"http\"\nrequests_per_second_per_caller = 20\nburst = 4\n",
        "[listeners.client_auth]\nmode = \"optional\"\nca = [\"ca.pem\"]\n",
        "[listeners.http]\nidentity_headers = \"both\"\nmax_header_bytes = 4096\n",
    ]
    .concat()
        + &rules.concat();
    let reencrypt = "[listeners.upstream_tls]\nca = [\"ca.pem\"]\nserver_name = \"localhost\"\n";
    [
        listener("plain", "alpn = [\"h2\", \"http/1.1\"]\n"),
        listener(
            "mtls",
            r#"proxy_protocol = "v2"
[listeners.client_auth]
mode = "optional"
ca = ["ca.pem"]
allow = ["spiffe://example.org/*", "cn:other"]
[listeners.client_auth.candidate]
mode = "require"
ca = ["ca.pem"]
allow = ["spiffe://example.org/billing"]
"#,
        ),
        listener("http", &http),
        listener(
            "reencrypt",
            &format!("proxy_protocol = \"v2\"\n{reencrypt}"),
        ),
        listener(
            "http-reencrypt",
            &format!("protocol = \"http\"\n{reencrypt}resume = false\n"),
        ),
    ]
    .join("\n")
}

/// One `[[listeners]]` table on the PKI's server certificate before the discard
/// port (nothing dials it), with `rest`: its other keys and sub-tables.
fn listener(name: &str, rest: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nupstreams = [\"127.0.0.1:9\"]\n{rest}"
    )
}

pub struct World {
    pub dir: PathBuf,
    pub listeners: Vec<Arc<ListenerLive>>,
    /// [no certificate, the PKI's client (spiffe://example.org/client), a client
    /// certificate of an unknown CA]; each offering TLS 1.3 and 1.2.
    pub clients: [Arc<ClientConfig>; 3],
    /// The same three, TLS 1.2 only.
    pub clients12: [Arc<ClientConfig>; 3],
    /// The TLS upstream: "localhost", from the same CA.
    pub upstream: Arc<ServerConfig>,
}

pub fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(build)
}

fn build() -> World {
    terminus::tls::install_provider();
    let dir = std::env::temp_dir().join(format!("terminus-fuzz-{}", std::process::id()));
    let pki = terminus::tools::certs::test_pki(2, "example.org").expect("test PKI");
    pki.write(&dir).expect("write the test PKI");
    let path = dir.join("terminus.toml");
    let text = config();
    std::fs::write(&path, &text).expect("write the config");
    let cfg = terminus::config::Config::parse(&text, &path).expect("the fuzz config is valid");
    let listeners = cfg
        .listeners
        .iter()
        .map(|l| {
            let s = terminus::runtime::settings::ListenerSettings::from_config(l, &cfg.resolver);
            Arc::new(ListenerLive::build(s).expect("listener builds"))
        })
        .collect();
    // Everything is read: certificates, keys and CAs live in the built listeners.
    let _ = std::fs::remove_dir_all(&dir);

    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("CA");
    let other = TestCa::root("fuzz unknown CA").expect("CA");
    let stranger = other
        .leaf(&LeafSpec::client(
            "other",
            Some("spiffe://example.org/other"),
        ))
        .expect("leaf");
    let client = |cert: Option<(Vec<_>, rustls_pki_types::PrivateKeyDer<'static>)>,
                  versions: &[&'static rustls::SupportedProtocolVersion]| {
        let b = ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots.clone());
        let mut c = match cert {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client cert"),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.enable_early_data = true;
        Arc::new(c)
    };
    let all = rustls::ALL_VERSIONS;
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let set = |v: &[&'static rustls::SupportedProtocolVersion]| {
        [
            client(None, v),
            client(Some((vec![pki.client_der.clone()], pki.client_key())), v),
            client(Some((stranger.chain.clone(), stranger.key())), v),
        ]
    };
    let upstream = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![pki.server_der.clone()], pki.server_key())
        .expect("upstream server config");
    World {
        dir,
        listeners,
        clients: set(all),
        clients12: set(tls12),
        upstream: Arc::new(upstream),
    }
}
