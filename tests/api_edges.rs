//! The API's edges under hostile clients, on the real tonic server over the
//! fakes: the id rule every valid id meets, values libvirt's XML cannot
//! hold, bounded error messages, the CA's size, and the codes of requests
//! refused before any handler runs.

mod common;

use bytes::{Buf, BufMut};
use common::{FakeAgent, small_req};
use segment_agent::proto::agent::{ClusterTls, GetSegmentRequest};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

#[tokio::test]
async fn ids_are_what_libvirt_and_the_kernel_accept() {
    let mut a = FakeAgent::start("").await;
    let longest = "a".repeat(60);
    let s = a.create(&longest, "c1").await;
    assert_eq!(s.segment_id, longest);
    let e = a
        .client
        .create_segment(small_req(&"a".repeat(61), "c1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("longer than 60"), "{}", e.message());
}

#[tokio::test]
async fn label_values_xml_cannot_hold_are_invalid_arguments() {
    let mut a = FakeAgent::start("").await;
    for value in ["\u{FFFE}", "a\u{FFFF}b", "\u{7}", "\u{85}"] {
        let mut req = small_req("lab", "c1");
        req.labels.insert("k".into(), value.into());
        let e = a.client.create_segment(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{value:?}: {e:?}");
    }
    assert!(a.hv.calls().iter().all(|c| !c.starts_with("define")));
}

#[tokio::test]
async fn error_messages_are_bounded_whatever_the_request() {
    let mut a = FakeAgent::start("").await;
    let huge = "x".repeat(1 << 20);
    let controls = "\u{1}".repeat(1 << 20);
    for id in [huge.as_str(), controls.as_str()] {
        let e = a
            .client
            .get_segment(GetSegmentRequest {
                segment_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());
        let mut req = small_req("ok", "c1");
        req.labels.insert(id.into(), String::new());
        let e = a.client.create_segment(req).await.unwrap_err();
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    }
}

#[tokio::test]
async fn a_cluster_ca_is_bounded_in_size() {
    let mut a = FakeAgent::start("").await;
    let mut req = small_req("big", "c1");
    req.tls = Some(ClusterTls {
        ca_cert_pem: "-".repeat(100_000),
        ca_key_pem: "k".into(),
    });
    let e = a.client.create_segment(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("at most 65536 bytes"),
        "{}",
        e.message()
    );
    assert!(e.message().len() < 1024);
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let mut a = FakeAgent::start("").await;
    let e = a
        .client
        .get_segment(GetSegmentRequest {
            segment_id: "x".repeat(5 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
}

/// Sends bytes as they are, reads the reply's bytes.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_an_invalid_argument() {
    let a = FakeAgent::start("").await;
    let channel = common::unix_channel(&a.dir.path().join("agent.sock")).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    for method in ["GetSegment", "CreateSegment", "GetHost"] {
        grpc.ready().await.unwrap();
        let path = format!("/segment.agent.v1.SegmentAgent/{method}");
        let e = grpc
            .unary(
                tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff]),
                path.parse().unwrap(),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{method}: {e:?}");
    }
}

#[tokio::test]
async fn a_domain_that_vanished_behind_the_agents_back_is_a_failed_precondition() {
    use segment_agent::{hypervisor::Hypervisor, proto::agent::StartSegmentRequest};
    let mut a = FakeAgent::start("").await;
    a.create("gone", "c1").await;
    a.hv.destroy("seg-gone").unwrap();
    a.hv.undefine("seg-gone").unwrap();
    let e = a
        .client
        .start_segment(StartSegmentRequest {
            segment_id: "gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("seg-gone"), "{}", e.message());
}

#[tokio::test]
async fn one_connection_holds_a_bounded_number_of_streams() {
    use segment_agent::{api::server::MAX_CONCURRENT_STREAMS, proto::agent::WatchEventsRequest};
    use std::time::Duration;
    let a = FakeAgent::start("").await;
    let mut client = a.client.clone();
    let mut held = Vec::new();
    for _ in 0..MAX_CONCURRENT_STREAMS {
        let stream = client
            .watch_events(WatchEventsRequest::default())
            .await
            .unwrap();
        held.push(stream);
    }
    // One more waits for a free stream: the server does not hold it.
    let more = client.watch_events(WatchEventsRequest::default());
    tokio::pin!(more);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut more)
            .await
            .is_err(),
        "stream {} was accepted",
        MAX_CONCURRENT_STREAMS + 1
    );
    held.pop();
    tokio::time::timeout(Duration::from_secs(5), more)
        .await
        .expect("a freed stream is reused")
        .unwrap();
}

#[path = "api_edges/connections.rs"]
mod connections;
