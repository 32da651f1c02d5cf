//! spiffe: the SPIFFE Workload API client (`[spiffe]`, `svid`/`trust = "workload_api"`).
//!
//! One thread of its own runs the `spiffe` crate's client on a current-thread tokio
//! runtime: it streams X.509 contexts (`FetchX509SVID`: SVIDs, the own trust domain's
//! bundle and the federated ones), publishes each into `tls::workload` and asks the
//! reloader to poll at once, so the listeners built from it are rebuilt and swapped in
//! like after a file change (new handshakes use them, live connections keep theirs).
//! Workers never see tokio.
//!
//! Start: [`start`] waits up to `startup_timeout_ms` for the first update, one log line
//! per failed attempt, and then fails naming the socket and its last answer.
//! `InvalidArgument` is a configuration error at once; `Unavailable`,
//! `PermissionDenied` (no identity yet) and a missing socket are retried with
//! backoff. Loss: the last material keeps serving; reconnects back off from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`]; the SVID's expiry is watched (a warning under a
//! fifth of its lifetime left, an error and `terminus_spiffe_svid_expired 1` at expiry).
//!
//! I/O contract: the Workload API's Unix socket, on this module's thread only.
#![forbid(unsafe_code)]

use crate::ops::reload::Trigger;
use crate::tls::workload::{self, Bundle, Material, Svid};
use futures::StreamExt;
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the SVID's remaining lifetime is looked at while the stream is quiet.
const WATCH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SpiffeError {
    #[error(
        "[spiffe] endpoint: not set, and SPIFFE_ENDPOINT_SOCKET is not either (a listener \
         uses \"workload_api\")"
    )]
    NoEndpoint,
    #[error("[spiffe] endpoint {endpoint}: no X.509-SVID and bundle after {waited_ms} ms; last answer: {answer}")]
    Timeout {
        endpoint: String,
        waited_ms: u64,
        answer: String,
    },
    #[error(
        "[spiffe] endpoint {endpoint}: the Workload API refused the request as invalid \
         (InvalidArgument, a configuration error): {answer}"
    )]
    InvalidArgument { endpoint: String, answer: String },
    #[error("cannot start the SPIFFE thread: {0}")]
    Spawn(std::io::Error),
}

/// Where updates are announced once the reloader runs (set after start).
type Announce = Arc<Mutex<Option<crossbeam_channel::Sender<Trigger>>>>;

/// The running client: hand it the reloader's trigger once there is one.
pub struct Client {
    announce: Announce,
}

impl Client {
    pub fn announce_to(&self, tx: crossbeam_channel::Sender<Trigger>) {
        *self.announce.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }
}

/// What the thread tells the waiting [`start`].
enum Progress {
    Ready,
    Invalid(String),
}

/// Start the client thread and wait for the first material (see the module doc).
pub fn start(cfg: &crate::config::Spiffe) -> Result<Client, SpiffeError> {
    let endpoint = cfg.endpoint().ok_or(SpiffeError::NoEndpoint)?;
    workload::IN_USE.store(true, Ordering::Relaxed);
    let announce: Announce = Arc::default();
    let last_answer = Arc::new(Mutex::new(String::from("no answer yet")));
    let (tx, rx) = crossbeam_channel::bounded(1);
    let state = Thread {
        endpoint: endpoint.clone(),
        announce: announce.clone(),
        last_answer: last_answer.clone(),
        first: Some(tx),
        watch: Watch::default(),
    };
    std::thread::Builder::new()
        .name("terminus-spiffe".into())
        .spawn(move || state.run())
        .map_err(SpiffeError::Spawn)?;
    let wait = Duration::from_millis(cfg.startup_timeout_ms);
    match rx.recv_timeout(wait) {
        Ok(Progress::Ready) => Ok(Client { announce }),
        Ok(Progress::Invalid(answer)) => Err(SpiffeError::InvalidArgument { endpoint, answer }),
        Err(_) => Err(SpiffeError::Timeout {
            endpoint,
            waited_ms: cfg.startup_timeout_ms,
            answer: last_answer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }),
    }
}

struct Thread {
    endpoint: String,
    announce: Announce,
    last_answer: Arc<Mutex<String>>,
    /// Until the first update: who waits for it.
    first: Option<crossbeam_channel::Sender<Progress>>,
    watch: Watch,
}

impl Thread {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                crate::op_error!("spiffe: cannot start the Workload API client runtime: {e}");
                return;
            }
        };
        rt.block_on(self.connect_loop());
    }

    async fn connect_loop(&mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let err = self.session(&mut backoff).await;
            workload::STREAM_UP.store(false, Ordering::Relaxed);
            let answer = describe(&err);
            *self.last_answer.lock().unwrap_or_else(|e| e.into_inner()) = answer.clone();
            let waiting = self.first.is_some();
            if err.is_invalid_argument() {
                if let Some(tx) = self.first.take() {
                    let _ = tx.send(Progress::Invalid(answer));
                    return;
                }
                crate::op_error!(
                    "spiffe: {}: the Workload API refused the request as invalid \
                     (InvalidArgument, a configuration error): {answer}; serving the last \
                     SVID and bundles, retrying in {backoff:?}",
                    self.endpoint
                );
            } else if waiting {
                crate::op_warn!(
                    "spiffe: waiting for the Workload API at {} (attempt {attempt}): {answer}; \
                     retrying in {backoff:?}",
                    self.endpoint
                );
            } else {
                crate::op_warn!(
                    "spiffe: {}: update stream lost: {answer}; serving the last SVID and \
                     bundles, reconnecting in {backoff:?}",
                    self.endpoint
                );
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                tokio::time::sleep(WATCH_EVERY.min(until - Instant::now())).await;
                self.watch.check();
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: stream updates until the stream fails or ends.
    async fn session(&mut self, backoff: &mut Duration) -> WorkloadApiError {
        let client = match WorkloadApiClient::connect_to(&self.endpoint).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut stream = match client.stream_x509_contexts().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        loop {
            match tokio::time::timeout(WATCH_EVERY, stream.next()).await {
                Err(_) => self.watch.check(),
                Ok(None) => return WorkloadApiError::EmptyResponse,
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(ctx))) => {
                    workload::STREAM_UP.store(true, Ordering::Relaxed);
                    *backoff = MIN_BACKOFF;
                    self.apply(&ctx);
                }
            }
        }
    }

    /// Publish one update and have the listeners rebuilt.
    fn apply(&mut self, ctx: &X509Context) {
        let m = material(ctx);
        let ids: Vec<&str> = m.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        let tds: Vec<&str> = m.bundles.iter().map(|b| b.trust_domain.as_str()).collect();
        crate::op_info!(
            "spiffe: update: SVIDs [{}], bundles [{}]",
            ids.join(", "),
            tds.join(", ")
        );
        self.watch.reset(&m);
        workload::publish(m);
        if let Some(tx) = self.first.take() {
            let _ = tx.send(Progress::Ready);
        }
        if let Some(tx) = &*self.announce.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Trigger::Poll);
        }
    }
}

/// The `spiffe` crate's context as `tls::workload` keeps it.
fn material(ctx: &X509Context) -> Material {
    let svids = ctx
        .svids()
        .iter()
        .map(|s| Svid {
            spiffe_id: s.spiffe_id().to_string(),
            hint: s.hint().unwrap_or_default().to_owned(),
            chain: s
                .cert_chain()
                .iter()
                .map(|c| c.as_bytes().to_vec().into())
                .collect(),
            key: s.private_key().as_bytes().to_vec(),
        })
        .collect();
    let mut bundles: Vec<Bundle> = ctx
        .bundle_set()
        .iter()
        .map(|(td, b)| Bundle {
            trust_domain: td.to_string(),
            authorities: b
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec().into())
                .collect(),
        })
        .collect();
    // A stable order, so an unchanged set compares equal across updates.
    bundles.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
    Material { svids, bundles }
}

/// What the Workload API answered, for an operator.
fn describe(e: &WorkloadApiError) -> String {
    match e {
        WorkloadApiError::EmptyResponse => "the stream ended".into(),
        other => other.to_string(),
    }
}

/// The default SVID's lifetime: warn under a fifth left, say so at expiry.
#[derive(Default)]
struct Watch {
    /// (notBefore, notAfter) of the SVID served.
    dates: Option<(i64, i64)>,
    warned_low: bool,
    warned_expired: bool,
}

impl Watch {
    fn reset(&mut self, m: &Material) {
        let dates = m.svids.first().and_then(|s| {
            let (_, c) = x509_parser::parse_x509_certificate(s.chain.first()?).ok()?;
            Some((
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
            ))
        });
        *self = Watch {
            dates,
            ..Watch::default()
        };
        workload::SVID_EXPIRED.store(false, Ordering::Relaxed);
        self.check();
    }

    fn check(&mut self) {
        let Some((from, until)) = self.dates else {
            return;
        };
        // Milliseconds: with short SVIDs a fifth of the lifetime is about a second.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let left_ms = until * 1000 - now_ms;
        let left = left_ms / 1000;
        if left_ms <= 0 {
            workload::SVID_EXPIRED.store(true, Ordering::Relaxed);
            if !self.warned_expired {
                self.warned_expired = true;
                crate::op_error!(
                    "spiffe: the X.509-SVID EXPIRED {}s ago and no new one arrived: clients \
                     will refuse it (terminus_spiffe_svid_expired 1)",
                    -left
                );
            }
        } else if left_ms * 5 < (until - from) * 1000 && !self.warned_low {
            self.warned_low = true;
            crate::op_warn!(
                "spiffe: the X.509-SVID has {left}s left, under a fifth of its lifetime, and \
                 no new one arrived"
            );
        }
    }
}
