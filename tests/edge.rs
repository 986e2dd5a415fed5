//! The gateway's edge against peers that misbehave at the transport: connections over the cap,
//! peers that connect and stay silent (plaintext and after TLS), idle HTTP/2 connections, header
//! blocks too large, more calls than the gateway takes at once, connections whose calls keep
//! being refused or reset, and peers that keep breaking HTTP/2's rules. Every wait is bounded.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{self, Gateway};
use common::*;
use snapgate_emulator::{EmulatorConfig, Faults};
use snapgate_gateway::config::Settings;
use snapgate_proto::GetCopyRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_types::StatusExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: the rest of a client's connection preface.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the peer closes the connection; `None` if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

/// The frame types in a server's bytes (9-byte headers, payloads skipped).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

async fn metrics(gw: &Gateway) -> String {
    raw_http(gw.admin.unwrap(), b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.1
}

/// The token of a second caller, "flood", who may do what the tests' caller may.
const FLOOD_TOKEN: &str = "flood-token-0123456789";

fn add_flood_caller(s: &mut Settings) {
    s.auth.static_tokens.push(snapgate_gateway::config::StaticToken {
        token: snapgate_gateway::config::Secret::new(FLOOD_TOKEN),
        principal: "flood".into(),
        groups: Vec::new(),
        team: None,
    });
    s.authz.policies = Some("permit(principal, action, resource);".into());
}

/// A client for `token` on a connection of its own.
async fn own_connection(gw: &Gateway, token: &str) -> gateway::Client {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", gw.addr)).unwrap().connect().await.unwrap();
    gateway::client_with(channel, Some(token))
}

fn get(name: &str) -> GetCopyRequest {
    GetCopyRequest { name: name.into(), fresh: false }
}

#[tokio::test]
async fn over_the_cap_the_next_connection_is_closed_and_open_ones_still_serve() {
    let (_emu, mut gw) = setup(seeded(), |s| s.server.max_connections = Some(2)).await;
    // The client's connection is one; a second peer that opened HTTP/2 is the other.
    gw.client.get_copy(get("billing-pg-daily")).await.unwrap();
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second.write_all(&[PREFACE, SETTINGS].concat()).await.unwrap();
    // Let the server take the second connection before the third arrives.
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics(&gw).await.contains("snapgate_connections_open{listener=\"grpc\"} 2")
        })
        .await
    );
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(&[PREFACE, SETTINGS].concat()).await;
    let answer = closed_within(&mut third, Duration::from_secs(5)).await.expect("the third connection is closed");
    assert!(answer.is_empty(), "closed before any HTTP/2: {answer:?}");
    gw.client.get_copy(get("billing-pg-daily")).await.expect("the open connection still serves");
    let scraped = metrics(&gw).await;
    assert!(scraped.contains("snapgate_connections_refused_total{listener=\"grpc\",reason=\"cap\"} 1"), "{scraped}");
    // A closed connection gives its place back.
    drop(second);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let mut fourth = TcpStream::connect(gw.addr).await.unwrap();
            fourth.write_all(&[PREFACE, SETTINGS].concat()).await.unwrap();
            // Served: the server's SETTINGS come back.
            let mut buf = [0u8; 9];
            matches!(tokio::time::timeout(Duration::from_secs(1), fourth.read_exact(&mut buf)).await, Ok(Ok(_)))
                && buf[3] == 4
        })
        .await
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let (_emu, gw) = setup(seeded(), |s| s.server.handshake_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // A trickled preface does not extend the deadline.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(&PREFACE[..4]).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await.is_some());
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await.is_some());
    // Something that is not HTTP/2 is closed at once.
    let mut http1 = TcpStream::connect(gw.addr).await.unwrap();
    http1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut http1, Duration::from_millis(900)).await.is_some());
    let scraped = metrics(&gw).await;
    assert!(scraped.contains("reason=\"handshake_timeout\"} 2"), "{scraped}");
    assert!(scraped.contains("reason=\"bad_handshake\"} 1"), "{scraped}");
}

#[tokio::test]
async fn a_peer_that_completes_tls_and_stays_silent_is_closed_too() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("edge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (_emu, gw) = setup(seeded(), |s| {
        s.server.handshake_timeout_secs = 1;
        s.auth.tls = Some(snapgate_gateway::config::TlsSettings {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: None,
            client_certificates: snapgate_gateway::config::ClientCertificates::Optional,
            reload_secs: 60,
        });
    })
    .await;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("TLS completes");
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "still open after the handshake timeout: {ended:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_the_idle_timeout() {
    let emu = emulator_with(EmulatorConfig { seed: true, copy_gib_per_sec: 1.0, ..quiet_config() }).await;
    let mut settings = gateway::settings();
    settings.server.idle_timeout_secs = 1;
    let mut gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(&[PREFACE, SETTINGS].concat()).await.unwrap();
    let received = closed_within(&mut idle, Duration::from_secs(10)).await.expect("the idle connection is closed");
    assert!(frame_types(&received).contains(&7), "GOAWAY before the close: {:?}", frame_types(&received));
    // A connection with a stream open is not idle: a watch outlives the timeout.
    gw.client.copy_cluster_snapshot(copy_req("billing-pg-daily", "idle-watch")).await.unwrap();
    let watch = snapgate_proto::WatchCopyRequest { name: "idle-watch".into() };
    let mut stream = gw.client.watch_copy(watch).await.unwrap().into_inner();
    let opened = std::time::Instant::now();
    let outlived = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.message().await.unwrap() {
            if opened.elapsed() > Duration::from_millis(2_500) {
                return event;
            }
        }
        panic!("the stream ended");
    })
    .await;
    assert!(outlived.is_ok(), "the watch's connection was closed as idle");
    let scraped = metrics(&gw).await;
    assert!(scraped.contains("reason=\"idle\"}"), "{scraped}");
}

#[tokio::test]
async fn an_oversized_header_block_fails_its_call_and_not_the_connection() {
    let (_emu, mut gw) = setup(seeded(), |s| s.server.max_header_list_bytes = 8 * 1024).await;
    let mut request = tonic::Request::new(get("billing-pg-daily"));
    request.metadata_mut().insert("x-padding", "a".repeat(16 * 1024).parse().unwrap());
    let refused = gw.client.get_copy(request).await.expect_err("the header block is over the limit");
    // h2 answers the stream alone with 431; tonic reports that as UNKNOWN.
    assert!(refused.message().contains("431"), "{refused:?}");
    // The same connection (the same channel) still serves the next call.
    gw.client.get_copy(get("billing-pg-daily")).await.expect("the connection survived");
}

/// HTTP/2 must decode a header block over the limit before it can refuse the stream; a
/// connection that keeps sending them is read at its pace, and the calls still fail alone.
#[tokio::test]
async fn a_connection_that_keeps_sending_oversized_header_blocks_is_paced() {
    let (_emu, gw) = setup(seeded(), |s| s.server.max_header_list_bytes = 8 * 1024).await;
    let mut client = own_connection(&gw, gateway::TOKEN).await;
    for _ in 0..4 {
        let mut request = tonic::Request::new(get("billing-pg-daily"));
        request.metadata_mut().insert("x-padding", "a".repeat(16 * 1024).parse().unwrap());
        let refused = client.get_copy(request).await.expect_err("the header block is over the limit");
        assert!(refused.message().contains("431"), "{refused:?}");
    }
    let paced = || async {
        metrics(&gw).await.contains(r#"snapgate_connections_paced_total{listener="grpc",reason="refusals"}"#)
    };
    assert!(eventually(Duration::from_secs(10), paced).await, "{}", metrics(&gw).await);
    client.get_copy(get("billing-pg-daily")).await.expect("the paced connection still serves");
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_refused_at_once_with_retry_info() {
    let emu = emulator_with(EmulatorConfig { seed: true, ..quiet_config() }).await;
    let mut settings = gateway::settings();
    settings.server.max_in_flight_calls = 1;
    let gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    // AWS answers slowly: the first call holds the only place while the second arrives.
    emu.emulator.set_faults(Faults { latency_ms: 3_000, throttle: None, ..Faults::default() }).unwrap();
    emu.emulator.reset_calls();
    let mut slow_client = gw.client.clone();
    let slow = tokio::spawn(async move { slow_client.get_copy(get("ledger-mysql-snap")).await });
    // The first call holds its place once AWS has it.
    let at_aws = || async { emu.emulator.calls().calls.get("DescribeDBClusterSnapshots").copied().unwrap_or(0) >= 1 };
    assert!(eventually(Duration::from_secs(5), at_aws).await);
    let mut client = gw.client.clone();
    let shed = client.get_copy(get("billing-pg-daily")).await.expect_err("the second call is shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(!slow.is_finished(), "refused while the first call was still in progress");
    assert_eq!(shed.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(1)));
    emu.emulator.set_faults(Faults { throttle: None, ..Faults::default() }).unwrap();
    slow.await.unwrap().expect("the first call completes");
    // Health is never shed.
    let addr: SocketAddr = gw.addr;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    let scraped = metrics(&gw).await;
    assert!(scraped.contains("snapgate_calls_shed_total{reason=\"in_flight\"}"), "{scraped}");
}

#[tokio::test]
async fn one_callers_flood_is_refused_while_another_caller_is_served() {
    let (_emu, mut gw) = setup(seeded(), |s| {
        s.fair_share.calls_per_sec = 1.0;
        s.fair_share.burst = 5;
        add_flood_caller(s);
    })
    .await;
    let mut flood = gateway::client_with(gw.channel.clone(), Some(FLOOD_TOKEN));
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = flood.get_copy(get("billing-pg-daily")).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the flood is refused once its burst is spent");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("flood"), "{refused:?}");
    assert!(refused.get_details_retry_info().unwrap().retry_delay.unwrap() >= Duration::from_secs(1));
    // The other caller, on the same connection, is served.
    gw.client.get_copy(get("billing-pg-daily")).await.expect("another caller's share is its own");
    assert!(metrics(&gw).await.contains("snapgate_calls_shed_total{reason=\"fair_share\"}"));
}

/// A caller's unary calls past its `fair_share.in_flight` turns wait for its own to end, while
/// another caller's calls go straight through.
#[tokio::test]
async fn a_callers_calls_past_its_turns_wait_for_its_own_and_not_anothers() {
    let (emu, mut gw) = setup(seeded(), |s| {
        s.fair_share.in_flight = 2;
        add_flood_caller(s);
    })
    .await;
    // AWS answers slowly: each of the flood's fresh reads holds a turn for a second.
    emu.emulator.set_faults(Faults { latency_ms: 1_000, throttle: None, ..Faults::default() }).unwrap();
    let mut flood = Vec::new();
    for _ in 0..3 {
        let mut client = gateway::client_with(gw.channel.clone(), Some(FLOOD_TOKEN));
        flood.push(tokio::spawn(async move {
            client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: true }).await
        }));
    }
    let waited =
        || async { metrics(&gw).await.contains(r#"snapgate_calls_waited_total{reason="caller_in_flight"} 1"#) };
    assert!(eventually(Duration::from_secs(5), waited).await, "the flood's third call waits for a turn");
    // The other caller, on the same connection, waits for none of the flood's turns.
    let mut request = tonic::Request::new(snapgate_proto::ListCopiesRequest::default());
    request.set_timeout(Duration::from_millis(500));
    gw.client.list_copies(request).await.expect("another caller's turns are its own");
    assert!(flood.iter().any(|call| !call.is_finished()), "answered while the flood's calls were running");
    for call in flood {
        call.await.unwrap().expect("the waiting call runs once one of its caller's own ends");
    }
    assert!(!metrics(&gw).await.contains(r#"snapgate_calls_shed_total{reason="caller_in_flight"}"#));
}

/// One caller's burst of fresh reads (each an AWS call) holds at most its own turns at the
/// region's pace, so another caller's AWS call waits behind two of them, not behind all; and
/// past its AWS budget the burst is refused at once, OVER_SHARE with RetryInfo.
#[tokio::test]
async fn one_callers_aws_calls_cannot_hold_another_callers_behind_them() {
    let (_emu, gw) = setup(seeded(), |s| {
        // The region's pace: a call every half second.
        s.aws.rate_limit_per_sec = 2.0;
        s.aws.rate_limit_burst = 1;
        s.fair_share.aws_calls_per_sec = 0.5;
        s.fair_share.aws_burst = 8;
        s.fair_share.aws_in_flight = 2;
        add_flood_caller(s);
    })
    .await;
    let fresh = |name: &str| GetCopyRequest { name: name.into(), fresh: true };
    let mut flood = Vec::new();
    for _ in 0..12 {
        let mut client = gateway::client_with(gw.channel.clone(), Some(FLOOD_TOKEN));
        let request = fresh("billing-pg-daily");
        flood.push(tokio::spawn(async move { client.get_copy(request).await }));
    }
    // Once the flood's budget is spent, its admitted calls queue at the region (8 calls, 4 s
    // at the region's pace if they were first come first served).
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics(&gw).await.contains("snapgate_calls_shed_total{reason=\"aws_share\"} 4")
        })
        .await,
        "the four calls past the flood's budget are refused"
    );
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(fresh("billing-pg-daily"));
    request.set_timeout(Duration::from_secs(3));
    gw.client.clone().get_copy(request).await.expect("the other caller's AWS call is not behind the whole flood");
    let waited = started.elapsed();
    let (mut served, mut refused) = (0, 0);
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(error_reason(&status), "OVER_SHARE", "{status:?}");
                assert!(status.message().contains("flood") && status.message().contains("AWS calls"), "{status:?}");
                assert!(status.get_details_retry_info().unwrap().retry_delay.unwrap() >= Duration::from_secs(1));
                refused += 1;
            }
        }
    }
    assert_eq!((served, refused), (8, 4));
    // Its own call plus at most the flood's two turns at half a second each, with room for a
    // loaded machine; all eight of the flood's would take four seconds.
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// The Rust client (and so the CLI) waits as a refusal's RetryInfo asks and tries again, for as
/// long as its retry time lasts; with none, the refusal is the caller's.
#[tokio::test]
async fn the_client_retries_a_refusal_after_the_delay_it_names() {
    let (_emu, gw) = setup(seeded(), |s| {
        s.fair_share.calls_per_sec = 1.0;
        s.fair_share.burst = 2;
    })
    .await;
    let config = |retry_for| snapgate_client::ClientConfig {
        retry_for,
        ..snapgate_client::ClientConfig::new(format!("http://{}", gw.addr)).token(gateway::TOKEN)
    };
    let patient = snapgate_client::Client::connect(&config(Duration::from_secs(30))).await.unwrap();
    for _ in 0..3 {
        patient.get("billing-pg-daily").await.expect("refusals past the share are waited out");
    }
    let impatient = snapgate_client::Client::connect(&config(Duration::ZERO)).await.unwrap();
    let refused = impatient.get("billing-pg-daily").await.expect_err("the share is spent and no retry is allowed");
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(metrics(&gw).await.contains("snapgate_calls_shed_total{reason=\"fair_share\"}"));
}

/// A storm of new connections is taken at the listener's accept rate; every one is served.
#[tokio::test]
async fn a_storm_of_connections_is_taken_at_the_accept_rate() {
    let (_emu, gw) = setup(seeded(), |s| s.server.max_accepts_per_sec = 4.0).await;
    let mut storm = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(SETTINGS).await.unwrap();
        storm.push(tcp);
    }
    for tcp in &mut storm {
        let mut first = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut first)).await.unwrap().unwrap();
        assert_eq!(first[3], 4, "the gateway's SETTINGS");
    }
    let waited = metrics(&gw).await;
    assert!(waited.contains(r#"snapgate_connections_paced_total{listener="grpc",reason="accept_rate"}"#), "{waited}");
}

/// A TCP connection from 127.0.0.2, so that holding its peer back leaves the tests' own
/// client (from 127.0.0.1) alone.
async fn tcp_from_other_peer(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A peer that keeps breaking HTTP/2's rules has each connection ended with GOAWAY; after a
/// few it is held back before its next handshake, while other peers are served as before.
#[tokio::test]
async fn a_peer_that_keeps_breaking_the_protocol_is_held_back_and_others_are_not() {
    let (_emu, gw) = setup(seeded(), |s| s.server.handshake_timeout_secs = 2).await;
    // WINDOW_UPDATE of 0 on the connection: a connection error (RFC 9113 §6.9).
    const ZERO_WINDOW_UPDATE: &[u8] = &[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for _ in 0..12 {
        let mut tcp = tcp_from_other_peer(gw.addr).await;
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(SETTINGS).await.unwrap();
        tcp.write_all(ZERO_WINDOW_UPDATE).await.unwrap();
        let answer = closed_within(&mut tcp, Duration::from_secs(5)).await.expect("the gateway ends the connection");
        assert!(frame_types(&answer).contains(&7), "GOAWAY: {:?}", frame_types(&answer));
    }
    let counted = || async {
        metrics(&gw).await.contains(r#"snapgate_connections_refused_total{listener="grpc",reason="protocol"} 12"#)
    };
    assert!(eventually(Duration::from_secs(5), counted).await, "{}", metrics(&gw).await);
    // The penalty is paid before the next handshake: no SETTINGS from the gateway while it lasts.
    const HELD: &str = r#"snapgate_connections_paced_total{listener="grpc",reason="peer"} "#;
    let held_so_far = |text: String| text.lines().find_map(|l| l.strip_prefix(HELD)?.parse::<u64>().ok()).unwrap_or(0);
    let before = held_so_far(metrics(&gw).await);
    let mut tcp = tcp_from_other_peer(gw.addr).await;
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(SETTINGS).await.unwrap();
    let held = || async { held_so_far(metrics(&gw).await) > before };
    assert!(eventually(Duration::from_secs(5), held).await, "{}", metrics(&gw).await);
    // Another peer's new connection is served at once, while that one is held.
    let mut client = own_connection(&gw, gateway::TOKEN).await;
    client.get_copy(get("billing-pg-daily")).await.expect("another peer is not held back");
    drop(tcp);
}

/// A connection that opens streams and resets them at once (CVE-2023-44487) is ended by
/// HTTP/2's guard or, when the gateway accepted the streams first, read at its pace.
#[tokio::test]
async fn a_connection_that_resets_its_streams_is_ended_or_paced() {
    let (_emu, gw) = setup(seeded(), |s| {
        s.server.paced_refusals_per_sec = 5.0;
        s.server.paced_refusals_burst = 20;
    })
    .await;
    let tcp = tcp_from_other_peer(gw.addr).await;
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut ended = false;
    for i in 0..2_000u32 {
        let Ok(mut ready) = client.ready().await else {
            ended = true;
            break;
        };
        let request = http::Request::post(format!("http://{}/snapgate.v1.SnapshotCopyService/GetCopy", gw.addr))
            .header("content-type", "application/grpc")
            .header("authorization", format!("Bearer {}", gateway::TOKEN))
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = ready.send_request(request, false) else {
            ended = true;
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        client = ready;
        if i.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
    }
    if ended {
        // Ended by HTTP/2's guard: a GOAWAY that says why, counted as the peer breaking the
        // protocol (what holds its next connections back), not a connection that merely dropped.
        let ending = tokio::time::timeout(Duration::from_secs(10), driver).await.expect("the connection ends").unwrap();
        let error = ending.expect_err("the gateway ended the connection with an error");
        assert!(error.is_go_away(), "{error:?}");
        assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{error:?}");
        let counted = || async {
            metrics(&gw).await.contains(r#"snapgate_connections_refused_total{listener="grpc",reason="protocol"} 1"#)
        };
        assert!(eventually(Duration::from_secs(10), counted).await, "{}", metrics(&gw).await);
    } else {
        let paced = || async {
            metrics(&gw).await.contains(r#"snapgate_connections_paced_total{listener="grpc",reason="refusals"}"#)
        };
        assert!(eventually(Duration::from_secs(10), paced).await, "{}", metrics(&gw).await);
        driver.abort();
    }
}

/// A connection whose calls keep being refused is read at its pace (the refusals stop costing
/// the gateway's CPU) while another connection's calls go on.
#[tokio::test]
async fn a_connection_whose_calls_keep_being_refused_is_paced() {
    let (_emu, mut gw) = setup(seeded(), |s| {
        s.fair_share.calls_per_sec = 1.0;
        s.fair_share.burst = 1;
        s.server.paced_refusals_per_sec = 5.0;
        s.server.paced_refusals_burst = 5;
        add_flood_caller(s);
    })
    .await;
    let flood = own_connection(&gw, FLOOD_TOKEN).await;
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let mut flood = flood.clone();
            tokio::spawn(async move { flood.get_copy(get("billing-pg-daily")).await.err().map(|s| s.code()) })
        })
        .collect();
    let paced = || async {
        metrics(&gw).await.contains(r#"snapgate_connections_paced_total{listener="grpc",reason="refusals"}"#)
    };
    assert!(eventually(Duration::from_secs(10), paced).await, "{}", metrics(&gw).await);
    // The other connection is not paced.
    gw.client.get_copy(get("billing-pg-daily")).await.expect("another connection's call is served");
    for call in calls {
        let code = tokio::time::timeout(Duration::from_secs(30), call).await.expect("paced, not stopped").unwrap();
        assert!(matches!(code, None | Some(Code::ResourceExhausted)), "{code:?}");
    }
}
