use super::*;

#[test]
fn buckets_are_cumulative_and_match_the_count() {
    let mut l = Latency::default();
    for us in [5u64, 20, 20, 80, 3_000, 2_000_000] {
        l.record(Duration::from_micros(us));
    }
    let b = l.cumulative_buckets();
    // le=10µs: the 5 µs sample; le=25µs: +2; le=100µs: +1; le=5ms: +1; le=2.5s: +1.
    assert_eq!(b[0], 1);
    assert_eq!(b[1], 3);
    assert_eq!(b[3], 4);
    assert_eq!(b[8], 5);
    assert_eq!(b[16], 6);
    assert_eq!(*b.last().unwrap(), l.count());
    assert!(b.windows(2).all(|w| w[0] <= w[1]));
    assert!((l.sum_seconds() - 2.003125).abs() < 1e-9);
}

#[test]
fn workers_add_up_and_the_page_names_every_reason() {
    let mut a = ListenerMetrics {
        connections: 2,
        ..Default::default()
    };
    a.handshake_ok(false, true, Some(Duration::from_micros(300)));
    a.handshake_error(HandshakeFailure::PolicyDenied);
    a.upstream_connect_error("127.0.0.1:9".parse().unwrap());
    a.upstream_resumption_failure("127.0.0.1:8".parse().unwrap());
    a.upstream_handshakes = [3, 1];
    let mut b = a.clone();
    b.handshake_ok(true, false, None);
    let snaps = vec![
        Some(WorkerSnapshot {
            worker: 0,
            listeners: vec![a],
            turns: TurnStats::default(),
            buffered_bytes: 0,
            buffer_cap_pauses: 0,
        }),
        None,
        Some(WorkerSnapshot {
            worker: 2,
            listeners: vec![b],
            turns: TurnStats::default(),
            buffered_bytes: 4096,
            buffer_cap_pauses: 3,
        }),
    ];
    let totals = aggregate(1, &snaps);
    assert_eq!(totals[0].connections, 4);
    let view = ListenerView {
        name: "e\\dge\"".into(),
        active: 1,
        upstreams: vec!["127.0.0.1:8".parse().unwrap()],
        upstreams_up: vec![],
        resolve_errors: vec![],
        certs: vec![("/c/server.pem".into(), 1_900_000_000)],
        chain_cache: Some((7, 2)),
        ocsp: vec![("/c/server.pem".into(), 1_800_000_000)],
        callers_evicted: None,
    };
    let g = global();
    let page = render(&[view], &totals, &g, &Process::read());
    let l = "listener=\"e\\\\dge\\\"\"";
    for want in [
        format!("terminus_connections_total{{{l}}} 4"),
        format!("terminus_handshakes_total{{{l},result=\"ok\",resumed=\"false\",client_auth=\"verified\"}} 2"),
        format!("terminus_handshakes_total{{{l},result=\"ok\",resumed=\"true\",client_auth=\"none\"}} 1"),
        format!("terminus_handshakes_total{{{l},result=\"error\",resumed=\"false\",client_auth=\"none\"}} 2"),
        format!("terminus_policy_denied_total{{{l}}} 2"),
        format!("terminus_client_chain_cache_total{{{l},result=\"hit\"}} 7"),
        format!("terminus_client_chain_cache_total{{{l},result=\"miss\"}} 2"),
        format!("terminus_handshake_duration_seconds_count{{{l}}} 2"),
        format!("terminus_upstream_connect_errors_total{{{l},upstream=\"127.0.0.1:9\"}} 2"),
        format!("terminus_upstream_connect_errors_total{{{l},upstream=\"127.0.0.1:8\"}} 0"),
        format!("terminus_upstream_resumption_failures_total{{{l},upstream=\"127.0.0.1:8\"}} 2"),
        format!("terminus_upstream_handshakes_total{{{l},resumed=\"false\"}} 6"),
        format!("terminus_upstream_handshakes_total{{{l},resumed=\"true\"}} 2"),
        format!("terminus_cert_expiry_timestamp_seconds{{{l},cert=\"/c/server.pem\"}} 1900000000"),
        "terminus_config_reloads_total{result=\"error\"} 2".to_string(),
        format!("terminus_ocsp_next_update_timestamp_seconds{{{l},cert=\"/c/server.pem\"}} 1800000000"),
        "terminus_ocsp_responses_refused_total 1".to_string(),
        "terminus_worker_buffered_bytes{worker=\"2\"} 4096".to_string(),
        "terminus_worker_buffer_cap_pauses_total{worker=\"2\"} 3".to_string(),
        "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"1\"} 1".to_string(),
        "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"4\"} 2".to_string(),
        "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"256\"} 2".to_string(),
        "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"+Inf\"} 3".to_string(),
        "terminus_worker_loop_completions_sum{worker=\"2\"} 1004".to_string(),
        "terminus_worker_loop_connections_count{worker=\"2\"} 3".to_string(),
    ] {
        assert!(page.contains(&want), "missing {want} in\n{page}");
    }
    for r in HandshakeFailure::ALL {
        assert!(page.contains(&format!("reason=\"{}\"", r.as_str())));
    }
    let p = Process::read();
    assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.max_fds > 0);
    assert!(p.start_time_seconds > 1.0e9);
}

/// The process-wide figures of a three-worker io_uring run with one failed reload.
fn global() -> GlobalView {
    GlobalView {
        reloads_ok: 1,
        reloads_error: 2,
        reload_last_ok: false,
        reload_last_success_unix_ms: 1_764_000_000_500,
        access_log_dropped: 0,
        spiffe: Some((7, 3, true, false)),
        ocsp_refused: 1,
        workers: 3,
        io_backend: "io_uring",
        draining: false,
        buffers: vec![(2, 4096, 3)],
        turns: vec![(2, turns())],
    }
}

/// Three turns: 1, 3 and 1000 completions (the last over every bound).
fn turns() -> TurnStats {
    let mut t = TurnStats::default();
    for (c, n) in [(1, 1), (3, 2), (1000, 40)] {
        t.completions.record(c);
        t.connections.record(n);
    }
    t
}

/// Two listeners with every kind of sample, and fixed process figures.
fn fixture_page() -> String {
    let mut a = ListenerMetrics {
        connections: 7,
        rejected_max_connections: 1,
        upstream_tls_errors: 2,
        http_rejected: [3, 1, 0],
        http_requests: vec![("no-admin".into(), [0, 2]), ("default".into(), [5, 0])],
        limited: [0, 4, 0],
        bytes_client_to_upstream: 1234,
        bytes_upstream_to_client: 56789,
        upstream_handshakes: [4, 5],
        ..Default::default()
    };
    a.handshake_ok(false, false, Some(Duration::from_micros(40)));
    a.handshake_ok(true, true, Some(Duration::from_millis(3)));
    a.handshake_error(HandshakeFailure::UnknownCa);
    a.handshake_error(HandshakeFailure::Timeout);
    a.upstream_connect.record(Duration::from_micros(700));
    a.upstream_connect_error("127.0.0.1:9".parse().unwrap());
    a.upstream_connect_error("[::1]:7".parse().unwrap());
    a.upstream_resumption_failure("127.0.0.1:8".parse().unwrap());
    a.candidate_verdict("allow");
    a.candidate_verdict("policy_denied");
    a.candidate_verdict("policy_denied");
    a.anonymous(HandshakeFailure::CertExpired);
    let b = ListenerMetrics::default();
    let views = [
        ListenerView {
            name: "edge".into(),
            active: 3,
            upstreams: vec![
                "127.0.0.1:8".parse().unwrap(),
                "127.0.0.1:9".parse().unwrap(),
            ],
            upstreams_up: vec![
                ("127.0.0.1:8".parse().unwrap(), true),
                ("127.0.0.1:9".parse().unwrap(), false),
            ],
            resolve_errors: vec![("billing.internal:8080".into(), 3)],
            certs: vec![
                ("/c/server.pem".into(), 1_900_000_000),
                ("/c/\"odd\"\\name.pem".into(), -1),
            ],
            chain_cache: Some((40, 3)),
            ocsp: vec![("/c/server.pem".into(), 1_800_000_000)],
            callers_evicted: Some(2),
        },
        ListenerView {
            name: "in\nternal".into(),
            active: 0,
            upstreams: vec![],
            upstreams_up: vec![],
            resolve_errors: vec![],
            certs: vec![],
            chain_cache: None,
            ocsp: vec![],
            callers_evicted: None,
        },
    ];
    let g = GlobalView {
        access_log_dropped: 3,
        workers: 2,
        draining: true,
        buffers: vec![(0, 4096, 3), (1, 0, 0)],
        turns: vec![(0, turns())],
        ..global()
    };
    let p = Process {
        cpu_seconds: 1.25,
        resident_bytes: 10 << 20,
        virtual_bytes: 1 << 30,
        open_fds: 17,
        max_fds: 1024,
        start_time_seconds: 1_764_000_000.5,
    };
    render(&views, &[a, b], &g, &p)
}

/// The page, byte for byte (`metrics_page.txt` beside this file). Set
/// TERMINUS_BLESS=1 to rewrite it after an intended change.
#[test]
fn the_page_is_pinned() {
    let page = fixture_page();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/telemetry/metrics/testdata/metrics_page.txt"
    );
    if std::env::var_os("TERMINUS_BLESS").is_some() {
        std::fs::write(path, &page).unwrap();
        return;
    }
    assert_eq!(page, include_str!("testdata/metrics_page.txt"));
}

/// Every family, in page order, with its type: names are what dashboards use.
#[test]
fn the_family_list_is_pinned() {
    let families: Vec<String> = fixture_page()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        families,
        [
            "terminus_connections_total counter",
            "terminus_connections_active gauge",
            "terminus_connections_rejected_total counter",
            "terminus_handshakes_total counter",
            "terminus_handshake_errors_total counter",
            "terminus_policy_denied_total counter",
            "terminus_candidate_verdicts_total counter",
            "terminus_client_cert_anonymous_total counter",
            "terminus_callers_evicted_total counter",
            "terminus_client_chain_cache_total counter",
            "terminus_handshake_duration_seconds histogram",
            "terminus_upstream_connect_duration_seconds histogram",
            "terminus_upstream_connect_errors_total counter",
            "terminus_upstream_up gauge",
            "terminus_upstream_resolve_errors_total counter",
            "terminus_http_rejected_total counter",
            "terminus_http_requests_total counter",
            "terminus_limited_total counter",
            "terminus_upstream_tls_errors_total counter",
            "terminus_upstream_handshakes_total counter",
            "terminus_upstream_resumption_failures_total counter",
            "terminus_bytes_total counter",
            "terminus_cert_expiry_timestamp_seconds gauge",
            "terminus_ocsp_next_update_timestamp_seconds gauge",
            "terminus_ocsp_responses_refused_total counter",
            "terminus_spiffe_updates_total counter",
            "terminus_spiffe_stream_up gauge",
            "terminus_spiffe_svid_expired gauge",
            "terminus_config_reloads_total counter",
            "terminus_config_last_reload_successful gauge",
            "terminus_config_last_reload_success_timestamp_seconds gauge",
            "terminus_access_log_dropped_total counter",
            "terminus_workers gauge",
            "terminus_build_info gauge",
            "terminus_io_backend_info gauge",
            "terminus_draining gauge",
            "terminus_worker_buffered_bytes gauge",
            "terminus_worker_buffer_cap_pauses_total counter",
            "terminus_worker_loop_completions histogram",
            "terminus_worker_loop_connections histogram",
            "process_cpu_seconds_total counter",
            "process_resident_memory_bytes gauge",
            "process_virtual_memory_bytes gauge",
            "process_open_fds gauge",
            "process_max_fds gauge",
            "process_start_time_seconds gauge",
        ]
    );
}
