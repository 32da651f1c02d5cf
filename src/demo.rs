//! demo: the README's first command. Makes a temporary PKI, starts a built-in echo
//! backend and an in-process terminator (the same `server::start` as `run`, one
//! pinned worker), measures plaintext-direct vs TLS termination side by side
//! (handshakes/s, server CPU µs per handshake from the worker thread's own CPU clock,
//! bulk Gbit/s), prints a table and a curl/openssl command that goes through it.
//!
//! The full four-mode comparison with an HTML report is `terminus bench`'s issue;
//! this is the honest subset the data path supports today.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A plain TCP echo backend on 127.0.0.1:0, one thread per connection.
pub fn spawn_echo_backend() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::Builder::new()
        .name("demo-backend".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || echo(s));
            }
        })?;
    Ok(addr)
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// CPU seconds consumed so far by this process's threads named `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the ")" of comm: state is field 3; utime/stime are 14/15.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 13 {
                    let u: f64 = f[11].parse().unwrap_or(0.0);
                    let s: f64 = f[12].parse().unwrap_or(0.0);
                    total += (u + s) / tick;
                }
            }
        }
    }
    total
}

struct Row {
    mode: &'static str,
    handshakes_per_s: f64,
    cpu_us_per_handshake: Option<f64>,
    gbit_per_s: f64,
}

enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

fn connect(t: &Target) -> Result<Box<dyn ReadWrite>> {
    match t {
        Target::Plain(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(Box::new(s))
        }
        Target::Tls(a, cfg) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let c = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost")?)?;
            Ok(Box::new(rustls::StreamOwned::new(c, s)))
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Connect, handshake, one byte there and back, close — for `secs`.
fn handshakes(t: &Target, secs: f64, stop: &AtomicBool) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut n = 0u64;
    let mut b = [0u8; 1];
    while start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) && n < 1_000_000 {
        let mut s = connect(t)?;
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Stream through the echo for `secs`: a writer thread and this reader.
fn bulk(t: &Target, secs: f64, stop: &AtomicBool) -> Result<f64> {
    let addr = match t {
        Target::Plain(a) | Target::Tls(a, _) => *a,
    };
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut got = 0u64;
    match t {
        Target::Plain(_) => {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut w = s.try_clone()?;
            let deadline = start + Duration::from_secs_f64(secs);
            let writer = std::thread::spawn(move || {
                while Instant::now() < deadline {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || stop.load(Ordering::Relaxed) {
                    break;
                }
                got += n as u64;
            }
            let _ = writer.join();
        }
        Target::Tls(_, _) => {
            // rustls streams are not split; alternate bounded writes and reads.
            let mut s = connect(t)?;
            let mut buf = vec![0u8; 256 * 1024];
            while start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
                s.write_all(&chunk)?;
                let mut left = chunk.len();
                while left > 0 {
                    let n = s.read(&mut buf[..left.min(256 * 1024)])?;
                    anyhow::ensure!(n > 0, "echo closed early");
                    left -= n;
                    got += n as u64;
                }
            }
        }
    }
    Ok(got as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

pub fn run(seconds: u64, serve: bool) -> Result<()> {
    crate::tls::install_provider();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let dir = TempDir::new()?;
    let pki = crate::certs::test_pki(1, "example.org")?;
    pki.write(&dir.0)?;
    let backend = spawn_echo_backend()?;
    let cpus = crate::server::allowed_cpus();
    let cpu_line = cpus
        .first()
        .map(|c| format!("cpus = [{c}]\n"))
        .unwrap_or_default();
    let cfg_path = dir.0.join("terminus.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[runtime]\nworkers = 1\n{cpu_line}\n[log]\naccess = \"off\"\n\n[[listeners]]\n\
             name = \"demo\"\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             upstreams = [\"{backend}\"]\n"
        ),
    )?;
    let cfg = crate::config::Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = crate::server::start(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = server.addr("demo").context("demo listener")?;
    // Keep the load generator off the worker's CPU where there is another one.
    if cpus.len() > 1 {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpus[1] });
    }

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let per = (seconds as f64 / 4.0).max(0.5);
    println!(
        "terminus demo: terminator on {addr} (1 worker, io_uring), echo backend on {backend}; {per:.1}s per measurement"
    );
    let mut rows = Vec::new();
    for (mode, target) in [
        ("plaintext (direct)", Target::Plain(backend)),
        ("terminate (TLS 1.3)", Target::Tls(addr, client.clone())),
    ] {
        eprint!("  measuring {mode}: handshakes...");
        let cpu0 = thread_cpu_seconds("terminus-w0");
        let (n, secs) = handshakes(&target, per, &stop)?;
        let cpu = thread_cpu_seconds("terminus-w0") - cpu0;
        eprint!(" bulk...");
        let gbit = bulk(&target, per, &stop)?;
        eprintln!(" done");
        rows.push(Row {
            mode,
            handshakes_per_s: n as f64 / secs,
            cpu_us_per_handshake: matches!(target, Target::Tls(..)).then(|| cpu * 1e6 / n as f64),
            gbit_per_s: gbit,
        });
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let base = rows.iter().find(|r| r.mode.starts_with("terminate"));
    println!();
    println!(
        "{:<22} {:>14} {:>10} {:>22} {:>10} {:>10}",
        "mode", "handshakes/s", "vs term.", "server CPU µs/handshake", "Gbit/s", "vs term."
    );
    for r in &rows {
        let (hr, br) = base.map_or((1.0, 1.0), |b| {
            (
                r.handshakes_per_s / b.handshakes_per_s,
                r.gbit_per_s / b.gbit_per_s,
            )
        });
        println!(
            "{:<22} {:>14.0} {:>9.2}x {:>22} {:>10.2} {:>9.2}x",
            r.mode,
            r.handshakes_per_s,
            hr,
            r.cpu_us_per_handshake
                .map_or("-".into(), |c| format!("{c:.0}")),
            r.gbit_per_s,
            br
        );
    }
    println!(
        "\n(one process on a shared machine: compare ratios, not absolutes; server CPU is the \
         worker thread's own CPU time, the client runs on another CPU where there is one)"
    );
    let ca = dir.0.join("ca.pem");
    if !serve {
        println!("\nRun `terminus demo --serve` to keep the terminator up and try it with curl or openssl s_client.");
    } else {
        println!("\nTry it yourself while it serves (Ctrl-C to stop):");
        println!(
            "  curl --cacert {} https://localhost:{}/ -v   (the echo backend returns your request)",
            ca.display(),
            addr.port()
        );
        println!(
            "  openssl s_client -connect {addr} -CAfile {} -verify_return_error",
            ca.display()
        );
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    server.stop();
    server.join().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "terminus-demo-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
