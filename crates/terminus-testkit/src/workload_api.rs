//! workload_api: a SPIFFE Workload API server for tests, speaking the real protocol:
//! gRPC over a Unix socket (tonic), the standard's `workload.proto` messages
//! (`SpiffeWorkloadAPI`: `FetchX509SVID`, server-streaming, and `FetchX509Bundles`),
//! refusing calls without the `workload.spiffe.io: true` metadata (InvalidArgument,
//! as SPIRE does). It issues X.509-SVIDs from a test CA ([`TestCa`]) and can rotate
//! them, add and drop federated bundles, answer with an error instead, and stop and
//! restart on the same socket (open streams are cut, as when an agent restarts).
//!
//! The server runs on a thread of its own with a current-thread tokio runtime.

use crate::certs::{LeafSpec, TestCa, TestLeaf};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::codegen::http;

/// The messages of the SPIFFE Workload API's `workload.proto` (the X.509 part), as
/// prost-build generates them (field numbers and types from the standard's file),
/// written out so the test kit needs no protoc.
pub mod pb {
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct X509SvidRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: std::collections::HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509Svid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        #[prost(string, tag = "5")]
        pub hint: String,
    }

    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct X509BundlesRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509BundlesResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "2")]
        pub bundles: std::collections::HashMap<String, Vec<u8>>,
    }
}

/// What the server answers calls with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// SVIDs and bundles.
    Serve,
    /// `PermissionDenied: no identity issued` (SPIRE before the workload is registered).
    NoIdentity,
    /// `InvalidArgument` (what a misconfigured client gets).
    InvalidArgument,
}

struct State {
    trust_domain: String,
    workload_id: String,
    ca: TestCa,
    lifetime: Duration,
    svid: Option<TestLeaf>,
    federated: BTreeMap<String, Vec<u8>>,
    answer: Answer,
    /// Each SVID pushed: (leaf DER, when).
    pushes: Vec<(Vec<u8>, Instant)>,
    /// Calls refused for lack of the `workload.spiffe.io` metadata.
    missing_header: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped at every change; each open stream sends the new response.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn refusal(&self) -> Option<tonic::Status> {
        match self.lock().answer {
            Answer::Serve => None,
            Answer::NoIdentity => Some(tonic::Status::permission_denied("no identity issued")),
            Answer::InvalidArgument => Some(tonic::Status::invalid_argument(
                "test server told to refuse the request as invalid",
            )),
        }
    }

    fn svid_response(&self) -> Result<pb::X509SvidResponse, tonic::Status> {
        if let Some(s) = self.refusal() {
            return Err(s);
        }
        let st = self.lock();
        let Some(leaf) = &st.svid else {
            return Err(tonic::Status::permission_denied("no identity issued"));
        };
        Ok(pb::X509SvidResponse {
            svids: vec![pb::X509Svid {
                spiffe_id: st.workload_id.clone(),
                x509_svid: leaf.chain.iter().flat_map(|c| c.to_vec()).collect(),
                x509_svid_key: leaf.key_pkcs8().to_vec(),
                bundle: st.ca.der.to_vec(),
                hint: "internal".into(),
            }],
            crl: Vec::new(),
            federated_bundles: st
                .federated
                .iter()
                .map(|(td, der)| (format!("spiffe://{td}"), der.clone()))
                .collect(),
        })
    }

    fn bundles_response(&self) -> Result<pb::X509BundlesResponse, tonic::Status> {
        if let Some(s) = self.refusal() {
            return Err(s);
        }
        let st = self.lock();
        let mut bundles: std::collections::HashMap<String, Vec<u8>> = st
            .federated
            .iter()
            .map(|(td, der)| (format!("spiffe://{td}"), der.clone()))
            .collect();
        bundles.insert(format!("spiffe://{}", st.trust_domain), st.ca.der.to_vec());
        Ok(pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles,
        })
    }
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// A Workload API server on a Unix socket; stops when dropped.
pub struct WorkloadApi {
    path: PathBuf,
    shared: Arc<Shared>,
    running: Option<Running>,
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

impl WorkloadApi {
    /// A server for `spiffe://<trust_domain>/<path>` whose SVIDs live `lifetime`
    /// (each valid for `localhost` and 127.0.0.1 too), not yet listening.
    pub fn new(
        socket: &Path,
        trust_domain: &str,
        workload_path: &str,
        lifetime: Duration,
    ) -> anyhow::Result<WorkloadApi> {
        let state = State {
            trust_domain: trust_domain.into(),
            workload_id: format!("spiffe://{trust_domain}/{workload_path}"),
            ca: TestCa::root(&format!("{trust_domain} test CA"))?,
            lifetime,
            svid: None,
            federated: BTreeMap::new(),
            answer: Answer::Serve,
            pushes: Vec::new(),
            missing_header: 0,
        };
        let (changed, _) = tokio::sync::watch::channel(0);
        let api = WorkloadApi {
            path: socket.to_owned(),
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed,
            }),
            running: None,
        };
        api.rotate()?;
        Ok(api)
    }

    /// `unix://` + the socket path: what `[spiffe] endpoint` is set to.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The trust domain's CA (PEM in `.pem`), e.g. for clients verifying the SVID.
    pub fn ca_pem(&self) -> String {
        self.shared.lock().ca.pem.clone()
    }

    /// A client certificate of this trust domain for `spiffe://<td>/<path>`.
    pub fn client_leaf(&self, path: &str) -> anyhow::Result<TestLeaf> {
        let st = self.shared.lock();
        let id = format!("spiffe://{}/{path}", st.trust_domain);
        st.ca.leaf(&LeafSpec::client(path, Some(&id)))
    }

    /// Any leaf of this trust domain's CA (an upstream's server certificate, say).
    pub fn issue(&self, spec: &LeafSpec) -> anyhow::Result<TestLeaf> {
        self.shared.lock().ca.leaf(spec)
    }

    /// Issue a new SVID and push it to every open stream; returns its leaf DER.
    pub fn rotate(&self) -> anyhow::Result<Vec<u8>> {
        {
            let mut st = self.shared.lock();
            let now = time::OffsetDateTime::now_utc();
            let spec = LeafSpec {
                spiffe: Some(st.workload_id.clone()),
                ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
                // A second of slack against clock rounding; the lifetime is what is asked.
                not_before: now - time::Duration::seconds(1),
                not_after: now + st.lifetime,
                both_usages: true,
                ..LeafSpec::server(&["localhost"])
            };
            let leaf = st.ca.leaf(&spec)?;
            let der = leaf.chain[0].to_vec();
            st.svid = Some(leaf);
            st.pushes.push((der.clone(), Instant::now()));
        }
        self.shared.bump();
        Ok(self
            .shared
            .lock()
            .pushes
            .last()
            .map(|p| p.0.clone())
            .unwrap_or_default())
    }

    /// When each SVID was pushed: (leaf DER, instant), oldest first.
    pub fn pushes(&self) -> Vec<(Vec<u8>, Instant)> {
        self.shared.lock().pushes.clone()
    }

    /// Push `ca_der` as the bundle of the federated `trust_domain`.
    pub fn set_federated(&self, trust_domain: &str, ca_der: &[u8]) {
        self.shared
            .lock()
            .federated
            .insert(trust_domain.into(), ca_der.to_vec());
        self.shared.bump();
    }

    /// Stop pushing the bundle of `trust_domain`.
    pub fn drop_federated(&self, trust_domain: &str) {
        self.shared.lock().federated.remove(trust_domain);
        self.shared.bump();
    }

    /// Answer calls (and open streams, at their next update) with `a`.
    pub fn set_answer(&self, a: Answer) {
        self.shared.lock().answer = a;
        self.shared.bump();
    }

    /// Calls refused because they lacked `workload.spiffe.io: true`.
    pub fn missing_header_calls(&self) -> u64 {
        self.shared.lock().missing_header
    }

    /// Listen on the socket (replacing a stale file).
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "already running");
        let _ = std::fs::remove_file(&self.path);
        let std_listener = std::os::unix::net::UnixListener::bind(&self.path)?;
        std_listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("workload-api".into())
            .spawn(move || serve(std_listener, shared, stopped))?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    /// Stop listening and cut every open stream (the socket file is removed).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for WorkloadApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server thread: runs until `stopped`; dropping the runtime then closes every
/// connection and stream.
fn serve(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test Workload API");
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).expect("a tokio listener");
        let incoming = futures::stream::unfold(listener, |l| async move {
            let io = l.accept().await.map(|(io, _)| io);
            Some((io, l))
        });
        let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(route(shared, req).await) }
        });
        let server = tonic::transport::Server::builder().serve_with_incoming(svc, incoming);
        tokio::spawn(server);
        let _ = stopped.await;
    });
}

/// One call: the metadata check, then the method.
async fn route(
    shared: Arc<Shared>,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let has_header = req
        .headers()
        .get("workload.spiffe.io")
        .is_some_and(|v| v == "true");
    if !has_header {
        shared.lock().missing_header += 1;
        return tonic::Status::invalid_argument("security header missing from request").into_http();
    }
    match req.uri().path() {
        "/SpiffeWorkloadAPI/FetchX509SVID" => {
            let h = tower::service_fn(move |_: tonic::Request<pb::X509SvidRequest>| {
                let shared = shared.clone();
                async move {
                    if let Some(s) = shared.refusal() {
                        return Err(s);
                    }
                    let s: Stream<pb::X509SvidResponse> =
                        updates(shared, |s: &Shared| s.svid_response());
                    Ok(tonic::Response::new(s))
                }
            });
            tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .server_streaming(h, req)
                .await
        }
        "/SpiffeWorkloadAPI/FetchX509Bundles" => {
            let h = tower::service_fn(move |_: tonic::Request<pb::X509BundlesRequest>| {
                let shared = shared.clone();
                async move {
                    if let Some(s) = shared.refusal() {
                        return Err(s);
                    }
                    let s: Stream<pb::X509BundlesResponse> =
                        updates(shared, |s: &Shared| s.bundles_response());
                    Ok(tonic::Response::new(s))
                }
            });
            tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .server_streaming(h, req)
                .await
        }
        other => tonic::Status::unimplemented(format!("{other} is not served by this test server"))
            .into_http(),
    }
}

/// A stream of `make`'s answer: now, then at each change; it ends after an error.
fn updates<T: Send + 'static>(
    shared: Arc<Shared>,
    make: fn(&Shared) -> Result<T, tonic::Status>,
) -> Stream<T> {
    let rx = shared.changed.subscribe();
    Box::pin(futures::stream::unfold(
        (rx, shared, true, false),
        move |(mut rx, shared, first, done)| async move {
            if done {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            rx.borrow_and_update();
            let item = make(&shared);
            let failed = item.is_err();
            Some((item, (rx, shared, false, failed)))
        },
    ))
}
