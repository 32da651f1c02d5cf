//! `terminus check` next to a running `terminus run`, and what `run` says about
//! certificates `check` refuses: real processes, real sockets on 127.0.0.1.

use crate::common::{edge_config, edit_config, Pki, Terminus, IO_TIMEOUT};
use std::process::Command;
use terminus::tools::certs::{LeafSpec, TestCa};

fn check(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(crate::common::bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run terminus check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An expired certificate fails `check` but `run` serves it with a warning naming the
/// file and the date (so a renewal picked up by hot reload fixes a running instance).
#[test]
fn run_warns_about_an_expired_certificate_and_serves() {
    let pki = Pki::generate();
    let leaf = TestCa::root("leaf CA")
        .unwrap()
        .leaf(&LeafSpec::expired_server(&["localhost"]))
        .unwrap();
    let pem = pki.dir().join("server.pem");
    std::fs::write(&pem, &leaf.chain_pem).unwrap();
    std::fs::write(pki.dir().join("server.key"), &leaf.key_pem).unwrap();
    let config = edge_config(&pki, Some(1), crate::common::refused_addr());
    let why = format!(
        "{}: certificate expired: notAfter Jun 30 00:00:00 2021 +00:00 (clients will reject it)",
        pem.display()
    );

    let (code, out, err) = check(&config);
    assert_eq!(code, Some(2), "{out}{err}");
    assert_eq!(err, format!("terminus: listener \"edge\": {why}\n"));

    let mut t = Terminus::start(&config);
    let err = t.wait_stderr(&why, IO_TIMEOUT);
    assert!(err.contains(&format!(" WARN terminus: {why}\n")), "{err}");
    // Serving: it accepts connections.
    crate::common::tcp_connect(t.addr("edge"));
    t.assert_alive();
}

/// A running instance on the config's own addresses is not a problem for `check`:
/// most likely it is the instance this config replaces (a restart stops it first).
/// Both addresses are named with the process, as warnings saying that `run` would
/// refuse to start beside it (and, with the handover switch, that it would join).
#[test]
fn check_next_to_the_running_instance_warns_and_passes() {
    let pki = Pki::generate();
    let config = edge_config(&pki, Some(1), crate::common::refused_addr());
    edit_config(&config, |text| {
        format!("{text}[admin]\nlisten = \"127.0.0.1:0\"\n")
    });
    let t = Terminus::start(&config);
    let (edge, admin) = (t.addr("edge"), t.admin());

    let same = pki.dir().join("same.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("127.0.0.1:0", &edge.to_string(), 1)
        .replacen("127.0.0.1:0", &admin.to_string(), 1);
    std::fs::write(&same, text).unwrap();
    let (code, out, err) = check(&same);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "config OK: 1 listener(s)\n");
    let pid = t.pid();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains(&format!(
            ": admin.listen: {admin} is also served by pid {pid} (terminus), presumably the \
             running instance: a new one refuses to start beside it until it has stopped"
        )),
        "{err}"
    );
    assert!(
        lines[1].contains(&format!(
            ": listeners[0].listen: {edge} is also served by pid {pid} (terminus), presumably \
             the running instance: a new one refuses to start beside it until it has stopped \
             (as `systemctl restart` does), unless [runtime] reuse_port_with_other_instances \
             = true (a handover)"
        )),
        "{err}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("terminus: warning: ")),
        "{err}"
    );
    let text = std::fs::read_to_string(&same).unwrap();
    std::fs::write(
        &same,
        text.replacen(
            "[runtime]\n",
            "[runtime]\nreuse_port_with_other_instances = true\n",
            1,
        ),
    )
    .unwrap();
    let (code, out, err) = check(&same);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.lines().all(|l| l.contains(&format!(
            "is also served by pid {pid} (terminus), presumably the running instance: with \
             reuse_port_with_other_instances = true a new one joins it"
        ))),
        "{err}"
    );
}

/// Another program listening with SO_REUSEPORT lets terminus bind too, and the kernel
/// would split connections between them: `check` refuses that.
#[test]
fn sharing_a_port_with_another_program_is_refused() {
    use socket2::{Domain, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    other.listen(8).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();

    let pki = Pki::generate();
    let config = edge_config(&pki, Some(1), crate::common::refused_addr());
    edit_config(&config, |text| {
        text.replace("127.0.0.1:0", &addr.to_string())
    });
    let (code, out, err) = check(&config);
    assert_eq!(code, Some(2), "{out}{err}");
    let want = format!(
        ": listeners[0].listen: {addr} is already listened on by pid {} (",
        std::process::id()
    );
    assert!(
        err.starts_with("terminus: ") && err.contains(&want),
        "{err}"
    );
    assert!(
        err.ends_with(
            ") with SO_REUSEPORT: terminus would bind too and the kernel would split incoming \
             connections between them; stop it or choose another address\n"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
