//! The real tonic server on a real unix socket, over the fake hypervisor:
//! validation, error codes, idempotency, admission and recovery rules.

mod common;

#[path = "api/admission.rs"]
mod admission;

use common::{FakeAgent, create_req, small_req};
use segment_agent::proto::agent::{
    DeleteSegmentRequest, Flavor, GetHostRequest, GetSegmentRequest, ListSegmentsRequest,
    SegmentState, StartSegmentRequest, StopSegmentRequest,
};
use tonic::Code;

#[tokio::test]
async fn create_get_list_delete() {
    let mut a = FakeAgent::start("").await;
    let s = a
        .client
        .create_segment(create_req("web-1", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running);
    assert_eq!(s.public_ipv4, "203.0.113.10");
    assert_eq!(
        s.flavor,
        Some(Flavor {
            memory_mib: 4096,
            vcpus: 2,
            disk_gib: 20,
            pids: 4096,
            network_mbit: 1000,
        })
    );
    assert_eq!(s.image, "dev");
    let xml = a.hv.domain_xml("seg-web-1").unwrap();
    assert!(
        xml.contains("<quota>200000</quota>")
            && xml.contains("<memory unit=\"KiB\">4194304</memory>")
    );
    let got = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner(), s);
    a.client
        .create_segment(create_req("db-1", "c2"))
        .await
        .unwrap();
    let all = a
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.segments.len(), 2);
    let c2 = a
        .client
        .list_segments(ListSegmentsRequest {
            cluster_id: "c2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        c2.into_inner()
            .segments
            .iter()
            .map(|s| s.segment_id.as_str())
            .collect::<Vec<_>>(),
        ["db-1"]
    );
    a.client
        .delete_segment(DeleteSegmentRequest {
            segment_id: "web-1".into(),
        })
        .await
        .unwrap();
    assert!(a.hv.domain_xml("seg-web-1").is_none());
    assert!(!a.dir.path().join("segments/web-1").exists());
    let gone = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let again = a
        .client
        .delete_segment(DeleteSegmentRequest {
            segment_id: "web-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    // The freed address is the lowest free one again.
    let s = a
        .client
        .create_segment(create_req("web-2", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.public_ipv4, "203.0.113.10");
}

#[tokio::test]
async fn libvirt_down_is_unavailable() {
    let mut a = FakeAgent::start("").await;
    a.create("web-1", "c1").await;
    a.hv.set_down(true);
    let e = a
        .client
        .create_segment(small_req("web-2", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = a.client.get_host(GetHostRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    // The registry still answers, with the state marked unknown.
    let s = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Failed);
    assert!(s.state_reason.contains("libvirtd"));
    a.hv.set_down(false);
    let s = a
        .client
        .create_segment(small_req("web-2", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.public_ipv4, "203.0.113.11",
        "nothing leaked by the failed attempt"
    );
}

#[tokio::test]
async fn stop_and_start() {
    let mut a = FakeAgent::start("").await;
    a.create("web-1", "c1").await;
    let req = StopSegmentRequest {
        segment_id: "web-1".into(),
        timeout_seconds: 1,
    };
    let s = a
        .client
        .stop_segment(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Stopped);
    assert_eq!(
        a.client
            .stop_segment(req)
            .await
            .unwrap()
            .into_inner()
            .state(),
        SegmentState::Stopped
    );
    let s = a
        .client
        .start_segment(StartSegmentRequest {
            segment_id: "web-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(s.into_inner().state(), SegmentState::Running);
    let e = a
        .client
        .start_segment(StartSegmentRequest {
            segment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn restart_rebuilds_everything_from_the_hypervisor() {
    let mut a = FakeAgent::start("").await;
    a.create("run", "c1").await;
    a.create("stop", "c1").await;
    a.create("crashed", "c1").await;
    a.client
        .stop_segment(StopSegmentRequest {
            segment_id: "stop".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    let (hv, dir) = a.shut_down().await;
    hv.crash("seg-crashed");
    // A create cut off before define leaves a directory and no domain.
    std::fs::create_dir_all(dir.path().join("segments/orphan/rootfs")).unwrap();
    let mut b = FakeAgent::start_with(hv, dir, "").await;
    let list = b
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let states: Vec<_> = list
        .segments
        .iter()
        .map(|s| (s.segment_id.as_str(), s.state(), s.public_ipv4.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("crashed", SegmentState::Running, "203.0.113.12"),
            ("run", SegmentState::Running, "203.0.113.10"),
            ("stop", SegmentState::Stopped, "203.0.113.11"),
        ]
    );
    assert!(
        !b.dir.path().join("segments/orphan").exists(),
        "orphan removed"
    );
    let next = b
        .client
        .create_segment(small_req("next", "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next.public_ipv4, "203.0.113.13",
        "pool rebuilt: no address given twice"
    );
}

#[tokio::test]
async fn enforcing_apparmor_without_apparmor_fails_closed() {
    let mut a = FakeAgent::start("apparmor = \"enforce\"\n").await;
    let e = a
        .client
        .create_segment(create_req("web-1", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("AppArmor is not available on this host"),
        "{}",
        e.message()
    );
    assert!(a.hv.calls().iter().all(|c| !c.starts_with("define")));
    let host = a
        .client
        .get_host(GetHostRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        host.apparmor
            .starts_with("unavailable: AppArmor is not available"),
        "{}",
        host.apparmor
    );
    assert_eq!(host.address_pool_free, host.address_pool_size);
}

#[tokio::test]
async fn stop_is_forced_after_the_timeout() {
    let mut a = FakeAgent::start("").await;
    a.create("stubborn", "c1").await;
    a.hv.ignore_shutdown();
    let started = std::time::Instant::now();
    let s = a
        .client
        .stop_segment(StopSegmentRequest {
            segment_id: "stubborn".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Stopped);
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(1),
        "waited for the graceful stop: {took:?}"
    );
    let calls = a.hv.calls();
    let shutdown = calls
        .iter()
        .position(|c| c == "shutdown seg-stubborn")
        .expect("graceful first");
    let destroy = calls
        .iter()
        .position(|c| c == "destroy seg-stubborn")
        .expect("then forced");
    assert!(shutdown < destroy, "{calls:?}");
}

/// TCP is mutual TLS only: a client with a certificate of the configured
/// client CA is served; one without, or from another CA, is refused.
#[tokio::test]
async fn tcp_listener_requires_a_client_certificate() {
    use segment_agent::{
        api::Listeners,
        certs::testing::{generate_test_ca, issue_client_cert},
        certs::{ClusterCa, issue_server_cert},
        config::ListenConfig,
        proto::agent::segment_agent_client::SegmentAgentClient,
    };
    use std::time::{Duration, SystemTime};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    let (ca_pem, ca_key) = generate_test_ca("scheduler-ca", day).unwrap();
    let ca = ClusterCa::from_pem(&ca_pem, &ca_key, SystemTime::now()).unwrap();
    let server = issue_server_cert(
        &ca,
        "127.0.0.1".parse().unwrap(),
        "localhost",
        day,
        SystemTime::now(),
    )
    .unwrap();
    for (name, text) in [
        ("ca.pem", &ca_pem),
        ("cert.pem", &server.cert_pem),
        ("key.pem", &server.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = ListenConfig {
        socket: dir.path().join("agent.sock"),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        tls_client_ca: Some(dir.path().join("ca.pem")),
        ..ListenConfig::default()
    };
    let agent = FakeAgent::start("").await;
    let listeners = Listeners::bind(&config).await.unwrap();
    let port = listeners.tcp_addr().unwrap().port();
    let host = segment_agent::host::HostFacts {
        host_id: "tcp".into(),
        cpus: 1,
        memory_mib: 1024,
    };
    tokio::spawn(segment_agent::agent::serve(
        agent.manager.clone(),
        host,
        listeners,
        agent.metrics.clone(),
        std::future::pending(),
    ));
    let call = |identity: Option<Identity>| {
        let ca_pem = ca_pem.clone();
        async move {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost");
            if let Some(id) = identity {
                tls = tls.identity(id);
            }
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await;
            match channel {
                Ok(ch) => SegmentAgentClient::new(ch)
                    .get_host(GetHostRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let (cert, key) = issue_client_cert(&ca, "scheduler").unwrap();
    call(Some(Identity::from_pem(cert, key)))
        .await
        .expect("a client of the configured CA is served");
    assert!(call(None).await.is_err(), "no client certificate: refused");
    let (other_pem, other_key) = generate_test_ca("other", day).unwrap();
    let other = ClusterCa::from_pem(&other_pem, &other_key, SystemTime::now()).unwrap();
    let (cert, key) = issue_client_cert(&other, "intruder").unwrap();
    assert!(
        call(Some(Identity::from_pem(cert, key))).await.is_err(),
        "another CA: refused"
    );
}

#[tokio::test]
async fn a_domain_the_agent_does_not_manage_is_never_touched() {
    let mut a = FakeAgent::start("").await;
    a.create("mine", "c1").await;
    a.hv.define_foreign("seg-theirs");
    // Creating the same id refuses, and leaves the foreign domain running.
    let e = a
        .client
        .create_segment(small_req("theirs", "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not manage"), "{}", e.message());
    assert!(a.hv.domain_xml("seg-theirs").is_some());
    assert!(
        !a.hv
            .calls()
            .iter()
            .any(|c| c.ends_with("seg-theirs") && !c.starts_with("is_running")),
        "{:?}",
        a.hv.calls()
    );
    // Restart with a pool that no longer holds "mine"'s address: it is left
    // alone, and so is its directory (its data), not swept as an orphan.
    let (hv, dir) = a.shut_down().await;
    let data = dir.path().join("segments/mine/upper");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("customer-file"), "keep me").unwrap();
    let mut b = FakeAgent::start_with(
        hv,
        dir,
        "[network]\nranges = [\"203.0.113.100-203.0.113.110\"]\n",
    )
    .await;
    let list = b
        .client
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.segments.is_empty(), "neither domain adopted: {list:?}");
    assert_eq!(
        std::fs::read_to_string(b.dir.path().join("segments/mine/upper/customer-file")).unwrap(),
        "keep me"
    );
    assert!(b.hv.domain_xml("seg-mine").is_some() && b.hv.domain_xml("seg-theirs").is_some());
}

/// A caller that gives up half-way (a deadline, a dropped connection) does
/// not strand the segment: the create runs to completion regardless.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_caller_hangs_up_still_completes() {
    let mut a = FakeAgent::start("").await;
    a.hv.slow_on("define", std::time::Duration::from_millis(500));
    let mut impatient = a.client.clone();
    let call = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        impatient.create_segment(small_req("web-1", "c1")),
    )
    .await;
    assert!(
        call.is_err(),
        "the caller gave up before the create finished"
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let s = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "web-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), SegmentState::Running, "{s:?}");
    // A retry is then a plain idempotent success.
    assert_eq!(a.create("web-1", "c1").await, s);
}

#[tokio::test]
async fn every_start_hands_the_segments_cgroups_over_with_its_own_ids() {
    use segment_agent::{cgroups::SegmentLimits, hypervisor::fake::FAKE_INIT_PID};
    let mut a = FakeAgent::start("[flavor]\ndefault_pids = 777\n").await;
    a.create("ida", "c1").await;
    a.create("idb", "c1").await;
    let first = |owner| {
        (
            FAKE_INIT_PID,
            SegmentLimits {
                pids_max: 777,
                workload_memory_bytes: None,
                owner,
            },
        )
    };
    assert_eq!(
        a.cgroups.calls(),
        [first(1_000_000), first(1_065_536)],
        "one id range each"
    );
    // The ranges are pinned in the domains' metadata and in the XML.
    let xml = a.hv.domain_xml("seg-idb").unwrap();
    assert!(
        xml.contains(r#"<uid start="0" target="1065536" count="65536"/>"#),
        "{xml}"
    );
    // A stop and a start hand them over again, with the same ids.
    a.client
        .stop_segment(segment_agent::proto::agent::StopSegmentRequest {
            segment_id: "ida".into(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    a.client
        .start_segment(segment_agent::proto::agent::StartSegmentRequest {
            segment_id: "ida".into(),
        })
        .await
        .unwrap();
    assert_eq!(a.cgroups.calls().last(), Some(&first(1_000_000)));
    // After a delete its range is free again; the next segment gets it.
    a.client
        .delete_segment(segment_agent::proto::agent::DeleteSegmentRequest {
            segment_id: "ida".into(),
        })
        .await
        .unwrap();
    a.create("idc", "c1").await;
    assert_eq!(a.cgroups.calls().last(), Some(&first(1_000_000)));
}
