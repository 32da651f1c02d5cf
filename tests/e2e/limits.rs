//! Connection limits: max_connections, and running out of file descriptors.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// utime + stime of a process, in clock ticks (USER_HZ = 100).
fn cpu_ticks(pid: u32) -> u64 {
    proc_cpu_ns(pid) / 10_000_000
}

fn try_echo_roundtrip(t: &mut Tls, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    t.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    t.read_exact(&mut back)?;
    Ok(back)
}

fn echo_roundtrip(t: &mut Tls, msg: &[u8]) -> Vec<u8> {
    try_echo_roundtrip(t, msg).expect("echo through terminus")
}

#[test]
fn max_connections_closes_the_excess_and_frees_slots_on_close() {
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(1),
        &[ListenerConf::new("edge", &[echo.addr()]).opt("max_connections", "3")],
    );
    let cfg = p.client();
    let mut held: Vec<Tls> = (0..3).map(|_| tls_connect(p.addr("edge"), &cfg)).collect();
    for t in held.iter_mut() {
        assert_eq!(echo_roundtrip(t, b"held"), b"held");
    }
    // The fourth is accepted by the kernel and closed by terminus at once.
    let mut extra = tcp_connect(p.addr("edge"));
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    let n = extra.read(&mut b);
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "connection over max_connections must be closed, got {n:?}"
    );
    // Closing one frees its slot for a newcomer.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut t) = try_tls_connect(p.addr("edge"), &cfg) {
            if try_echo_roundtrip(&mut t, b"new").is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn out_of_file_descriptors_backs_off_instead_of_spinning_and_recovers() {
    let echo = Backend::echo();
    let pki = Pki::generate();
    let cfg_path = edge_config(&pki, Some(1), echo.addr());
    // A tiny descriptor limit so a handful of connections exhaust it.
    let mut term = Terminus::builder()
        .config(&cfg_path)
        .prefix(&["prlimit", "--nofile=48:48", "--"])
        .start();
    let addr = term.addr("edge");
    // Silent TCP clients hold terminus descriptors until the handshake timeout (10 s).
    let hogs: Vec<TcpStream> = (0..80).map(|_| tcp_connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(200)); // let the accepts hit EMFILE
    let pid = term.pid();
    let t0 = cpu_ticks(pid);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = (cpu_ticks(pid) - t0) as f64 / 100.0;
    let secs = wall.elapsed().as_secs_f64();
    assert!(
        used < 0.5 * secs,
        "worker spun while out of descriptors: {used:.2}s CPU in {secs:.2}s"
    );
    term.assert_alive();
    drop(hogs);
    // Descriptors come back as terminus closes the hogs; new clients are served again.
    let client = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut t) = try_tls_connect(addr, &client) {
            if try_echo_roundtrip(&mut t, b"back").is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never recovered after EMFILE");
        std::thread::sleep(Duration::from_millis(50));
    }
}
