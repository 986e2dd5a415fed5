//! Authentication and authorization end to end: certificates made here with rcgen, tokens
//! signed here with real keys, the real gateway over gRPC (TLS where it matters), and the
//! emulator's call counter proving that a refused call reaches no AWS API.
// A test reports failure by panicking: unwrapping in its helpers is that report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::gateway::{self, client_with};
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::json;
use snapgate_emulator::{EmulatorConfig, EmulatorHandle};
use snapgate_gateway::config::{
    AuthSettings, AuthzSettings, ClientCertificates, HttpSettings, JwtSettings, Settings, TlsSettings,
};
use snapgate_proto::GetCopyRequest;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_types::StatusExt;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "snapgate";
const CI_SPIFFE: &str = "spiffe://corp.test/ns/ci/sa/runner";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snapgate-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA and the certificates it signs, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> (Pki, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        (Pki { dir: dir.to_owned(), ca }, Issuer::new(params, key))
    }

    /// Signs a leaf certificate with `sans`; returns (cert, key) file paths.
    fn leaf(&self, issuer: &Issuer<'_, KeyPair>, name: &str, sans: Vec<SanType>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// An RSA signing key of the test issuer and its JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public_pem: String,
    jwk: Jwk,
}

fn rsa_key(kid: &str) -> SigningKey {
    let pair = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    SigningKey { kid: kid.into(), encoding, public_pem: pair.public_key_pem(), jwk }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, team: Option<&str>, groups: &[&str]) -> serde_json::Value {
    let mut c =
        json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 600, "iat": now(), "groups": groups });
    if let Some(team) = team {
        c["team"] = json!(team);
    }
    c
}

fn sign(key: &SigningKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

const POLICIES: &str = r#"
@id("team-copies-own-clusters-in-place")
permit(principal, action == Snapgate::Action::"CopyClusterSnapshot", resource)
when { principal has team && resource.hasTag("team") && resource.getTag("team") == principal.team
       && !context.cross_region && !context.cross_account };

@id("backup-crosses-regions-with-the-backup-key")
permit(principal, action == Snapgate::Action::"CopyClusterSnapshot", resource)
when { principal.groups.contains("backup") && context has kms_key && context.kms_key == "alias/snapgate-backup" };

@id("watch-what-you-may-copy")
permit(principal, action in [Snapgate::Action::"WatchCopy", Snapgate::Action::"GetCopy"], resource)
when { principal has team && resource.hasTag("team") && resource.getTag("team") == principal.team };

@id("ci-runner-by-certificate")
permit(principal == Snapgate::Caller::"spiffe://corp.test/ns/ci/sa/runner", action, resource);

@id("graphs-stay-home")
forbid(principal, action == Snapgate::Action::"CopyClusterSnapshot", resource)
when { resource.family == "neptune" && context.cross_region };
"#;

/// The gateway with TLS (client certificates optional, so token callers need none), JWTs
/// checked against `jwks`, and `POLICIES` in a file.
struct Setup {
    emu: EmulatorHandle,
    gateway: gateway::Gateway,
    pki: Pki,
    client_cert: (PathBuf, PathBuf),
    policy_file: PathBuf,
}

fn auth_settings(
    dir: &Path,
    pki: &Pki,
    server: &(PathBuf, PathBuf),
    mode: ClientCertificates,
    jwks: &Path,
) -> Settings {
    let policy_file = dir.join("policies.cedar");
    if !policy_file.exists() {
        std::fs::write(&policy_file, POLICIES).unwrap();
    }
    Settings {
        auth: AuthSettings {
            tls: Some(TlsSettings {
                cert_file: server.0.clone(),
                key_file: server.1.clone(),
                client_ca_file: Some(pki.ca.clone()),
                client_certificates: mode,
                reload_secs: 1,
            }),
            jwt: Some(JwtSettings {
                issuer: ISSUER.into(),
                audiences: vec![AUDIENCE.into()],
                jwks_file: Some(jwks.to_owned()),
                jwks_url: None,
                jwks_ca_file: None,
                jwks_refresh_secs: 300,
                algorithms: vec!["RS256".into(), "ES256".into()],
                leeway_secs: 5,
                groups_claim: "groups".into(),
                team_claim: "team".into(),
            }),
            static_tokens: Vec::new(),
        },
        authz: AuthzSettings { policy_file: Some(policy_file), policies: None, reload_secs: 1 },
        http: HttpSettings { listen: Some("127.0.0.1:0".parse().unwrap()) },
        ..gateway::settings()
    }
}

async fn setup(name: &str, mode: ClientCertificates, key: &SigningKey) -> Setup {
    let dir = scratch(name);
    let (pki, issuer) = Pki::new(&dir, "corp");
    let server_cert = pki.leaf(
        &issuer,
        "server",
        vec![SanType::DnsName("localhost".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())],
    );
    let client_cert = pki.leaf(&issuer, "ci-runner", vec![SanType::URI(CI_SPIFFE.try_into().unwrap())]);
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![key.jwk.clone()] }).unwrap()).unwrap();
    let settings = auth_settings(&dir, &pki, &server_cert, mode, &jwks);
    let policy_file = settings.authz.policy_file.clone().unwrap();
    let emu = emulator_with(EmulatorConfig { seed: true, copy_gib_per_sec: 0.01, ..quiet_config() }).await;
    let gateway = gateway::try_start(settings, &emu.endpoint_url(), "AKIDTEST").await.expect("gateway starts");
    Setup { emu, gateway, pki, client_cert, policy_file }
}

async fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn aws_calls(emu: &EmulatorHandle) -> u64 {
    emu.emulator.calls().calls.values().sum()
}

#[tokio::test]
async fn bad_credentials_are_unauthenticated_and_reach_no_aws_api() {
    let key = rsa_key("k1");
    let s = setup("bad-credentials", ClientCertificates::Optional, &key).await;
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, None).await.expect("TLS without a client certificate");
    let other = rsa_key("k1");
    let good = claims("svc-payments", Some("platform"), &[]);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let hmac_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(key.public_pem.as_bytes())).unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(serde_json::to_string(&good).unwrap().as_bytes())
    );
    let unknown_kid = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k-unknown".into());
        jsonwebtoken::encode(&header, &good, &key.encoding).unwrap()
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no credential", None, "no credentials"),
        ("expired", Some(sign(&key, &with(&|c| c["exp"] = json!(now() - 3600)))), "expired"),
        ("not yet valid", Some(sign(&key, &with(&|c| c["nbf"] = json!(now() + 3600)))), "not yet valid"),
        ("wrong issuer", Some(sign(&key, &with(&|c| c["iss"] = json!("https://evil.test")))), "wrong issuer"),
        ("wrong audience", Some(sign(&key, &with(&|c| c["aud"] = json!("other")))), "wrong audience"),
        ("bad signature", Some(sign(&other, &good)), "bad signature"),
        ("alg none", Some(alg_none), "invalid bearer token"),
        ("HMAC with the RSA public key", Some(hmac_with_public_key), "not accepted"),
        ("key id not in the JWKS", Some(unknown_kid), "unknown signing key"),
        ("malformed", Some("abc.def".into()), "malformed"),
        ("no sub", Some(sign(&key, &with(&|c| drop(c.as_object_mut().unwrap().remove("sub"))))), "claim"),
    ];
    s.emu.emulator.reset_calls();
    for (name, token, message) in cases {
        let mut client = client_with(channel.clone(), token.as_deref());
        let status = client.copy_cluster_snapshot(copy_req("billing-pg-daily", "nope")).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert!(status.message().contains(message), "{name}: {}", status.message());
        let status =
            client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}");
    }
    assert_eq!(aws_calls(&s.emu), 0, "a refused call must reach no AWS API");

    // The good token works over the same connection.
    let mut client = client_with(channel, Some(&sign(&key, &good)));
    client.copy_cluster_snapshot(copy_req("billing-pg-daily", "good-token-copy")).await.expect("valid token");
}

#[tokio::test]
async fn a_client_certificate_names_the_caller_and_other_cas_are_refused() {
    let key = rsa_key("k1");
    let s = setup("mtls", ClientCertificates::Optional, &key).await;
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, Some(&s.client_cert)).await.unwrap();
    let mut client = client_with(channel, None);
    // Only the certificate's SPIFFE id is permitted this cross-region copy.
    let req = copy_req("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap", "ci-copy");
    let made = client.copy_cluster_snapshot(req).await.expect("the CI runner may copy anything");
    assert!(made.into_inner().name.ends_with(":ci-copy"));

    // A certificate from another CA never gets a connection.
    let dir = scratch("mtls-other");
    let (other, issuer) = Pki::new(&dir, "other");
    let stranger = other.leaf(&issuer, "stranger", vec![SanType::URI(CI_SPIFFE.try_into().unwrap())]);
    s.emu.emulator.reset_calls();
    match tls_channel(s.gateway.addr, &s.pki.ca, Some(&stranger)).await {
        Err(_) => {}
        Ok(channel) => {
            let status = client_with(channel, None)
                .copy_cluster_snapshot(copy_req("billing-pg-daily", "stranger"))
                .await
                .expect_err("a certificate from another CA");
            assert!(matches!(status.code(), Code::Unavailable | Code::Unknown), "{status:?}");
        }
    }
    assert_eq!(aws_calls(&s.emu), 0);
}

/// The error a watch ends with, skipping its events; `None` if it is still open after `within`.
async fn ends_with_error(
    stream: &mut tonic::Streaming<snapgate_proto::CopyEvent>,
    within: Duration,
) -> Option<tonic::Status> {
    tokio::time::timeout(within, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_reload_that_withdraws_access_ends_open_watches() {
    let key = rsa_key("k1");
    let s = setup("revoke", ClientCertificates::Optional, &key).await;
    // The CI runner (by certificate) copies; the copy carries the payments team's tag.
    let ci = client_with(tls_channel(s.gateway.addr, &s.pki.ca, Some(&s.client_cert)).await.unwrap(), None);
    let mut request = copy_req("billing-pg-daily", "revoke-watch");
    request.tags = tags(&[("team", "payments")]);
    ci.clone().copy_cluster_snapshot(request).await.unwrap();
    // A payments caller may watch it, by "watch-what-you-may-copy".
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let mut payments = client_with(channel, Some(&sign(&key, &claims("svc-payments", Some("payments"), &[]))));
    let watch = snapgate_proto::WatchCopyRequest { name: "revoke-watch".into() };
    let mut stream = payments.watch_copy(watch).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("the first event");
    // Another caller's watch of the same copy, still permitted after the reload.
    let mut ci_stream = ci
        .clone()
        .watch_copy(snapgate_proto::WatchCopyRequest { name: "revoke-watch".into() })
        .await
        .unwrap()
        .into_inner();
    ci_stream.message().await.unwrap().expect("the CI runner's first event");

    let revoked = format!(
        "{POLICIES}\n@id(\"payments-stop-watching\")\nforbid(principal, action == Snapgate::Action::\"WatchCopy\", resource)\nwhen {{ principal has team && principal.team == \"payments\" }};\n"
    );
    std::fs::write(&s.policy_file, &revoked).unwrap();
    // The copy takes hours at this speed: the stream ends only because access was withdrawn.
    let ended =
        ends_with_error(&mut stream, Duration::from_secs(15)).await.expect("the watch ends within the reload interval");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("payments-stop-watching"), "{ended:?}");
    // The CI runner's watch goes on: no error, no end (the copy moves a percent in 12 s).
    let still = tokio::time::timeout(Duration::from_secs(2), ci_stream.message()).await;
    assert!(matches!(still, Err(_) | Ok(Ok(Some(_)))), "{still:?}");
}

#[tokio::test]
async fn a_verified_token_stops_working_when_its_key_leaves_the_jwks() {
    let (key, other) = (rsa_key("k1"), rsa_key("k2"));
    let dir = scratch("jwks-drop");
    let (pki, issuer) = Pki::new(&dir, "corp");
    let server_cert = pki.leaf(
        &issuer,
        "server",
        vec![SanType::DnsName("localhost".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())],
    );
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![key.jwk.clone()] }).unwrap()).unwrap();
    let settings = auth_settings(&dir, &pki, &server_cert, ClientCertificates::Optional, &jwks);
    let emu = emulator_with(EmulatorConfig { seed: true, ..quiet_config() }).await;
    let server = gateway::try_start(settings, &emu.endpoint_url(), "AKIDTEST").await.unwrap();
    let channel = tls_channel(server.addr, &pki.ca, None).await.unwrap();
    let mut client = client_with(channel, Some(&sign(&key, &claims("svc-orders", Some("orders"), &[]))));
    let authenticated = |status: &tonic::Status| status.code() != Code::Unauthenticated;
    // Authenticated (denied or not, the token was accepted), twice: the second from the cache.
    for _ in 0..2 {
        let outcome = client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await;
        assert!(outcome.as_ref().err().is_none_or(authenticated), "{outcome:?}");
    }
    // The IdP rotates k1 out; the first token signed by k2 makes the gateway read the JWKS again.
    std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![other.jwk.clone()] }).unwrap()).unwrap();
    let channel = tls_channel(server.addr, &pki.ca, None).await.unwrap();
    let mut rotated = client_with(channel, Some(&sign(&other, &claims("svc-orders", Some("orders"), &[]))));
    let outcome = rotated.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await;
    assert!(outcome.as_ref().err().is_none_or(authenticated), "the new key is taken: {outcome:?}");
    // The cached verification of the k1 token ended with its key.
    let status = client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_watch_ends_when_the_key_that_signed_its_token_leaves_the_jwks() {
    let (key, other) = (rsa_key("k1"), rsa_key("k2"));
    let dir = scratch("jwks-watch");
    let (pki, issuer) = Pki::new(&dir, "corp");
    let server_cert = pki.leaf(
        &issuer,
        "server",
        vec![SanType::DnsName("localhost".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())],
    );
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![key.jwk.clone()] }).unwrap()).unwrap();
    std::fs::write(dir.join("policies.cedar"), "permit(principal, action, resource);").unwrap();
    let settings = auth_settings(&dir, &pki, &server_cert, ClientCertificates::Optional, &jwks);
    let emu = emulator_with(EmulatorConfig { seed: true, copy_gib_per_sec: 0.01, ..quiet_config() }).await;
    let server = gateway::try_start(settings, &emu.endpoint_url(), "AKIDTEST").await.unwrap();
    let channel = tls_channel(server.addr, &pki.ca, None).await.unwrap();
    let mut client = client_with(channel, Some(&sign(&key, &claims("svc-orders", Some("orders"), &[]))));
    client.copy_cluster_snapshot(copy_req("billing-pg-daily", "key-watch")).await.unwrap();
    let watch = snapgate_proto::WatchCopyRequest { name: "key-watch".into() };
    let mut stream = client.watch_copy(watch).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("the first event");

    // k1 is rotated out; the first k2 token makes the gateway read the JWKS again.
    std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![other.jwk.clone()] }).unwrap()).unwrap();
    let channel = tls_channel(server.addr, &pki.ca, None).await.unwrap();
    let mut rotated = client_with(channel, Some(&sign(&other, &claims("svc-orders", Some("orders"), &[]))));
    rotated.get_copy(GetCopyRequest { name: "key-watch".into(), fresh: false }).await.expect("k2 is trusted");
    let ended =
        ends_with_error(&mut stream, Duration::from_secs(10)).await.expect("the watch ends once its key is withdrawn");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
}

/// curl against the HTTP/JSON listener over TLS: `(HTTP status, body)`.
async fn curl_tls(args: &[&str]) -> (u16, serde_json::Value) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text} {output:?}"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn http_json_takes_the_same_client_certificates_and_policies_over_tls() {
    let key = rsa_key("k1");
    let s = setup("mtls-http", ClientCertificates::Optional, &key).await;
    let base = format!("https://127.0.0.1:{}", s.gateway.http.expect("the HTTP/JSON listener").port());
    let ca = s.pki.ca.to_str().unwrap();
    let (cert, key_file) = (s.client_cert.0.to_str().unwrap(), s.client_cert.1.to_str().unwrap());
    let body = r#"{"sourceSnapshot": "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:orders-aurora-west-snap", "targetSnapshotId": "ci-http-copy"}"#;
    // The CI runner's certificate is its identity, as on the gRPC listener, over HTTP/1.1.
    let url = format!("{base}/v1/copies");
    let (code, copy) =
        curl_tls(&["--http1.1", "--cacert", ca, "--cert", cert, "--key", key_file, "-d", body, &url]).await;
    assert_eq!(code, 200, "{copy}");
    assert!(copy["name"].as_str().unwrap().ends_with(":ci-http-copy"), "{copy}");
    // And over HTTP/2.
    let url = format!("{base}/v1/copies/{}", copy["name"].as_str().unwrap());
    let (code, got) = curl_tls(&["--http2", "--cacert", ca, "--cert", cert, "--key", key_file, &url]).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["snapshotId"], "ci-http-copy");

    // No certificate and no token: 401; a JWT whose team owns nothing there: 403.
    s.emu.emulator.reset_calls();
    let (code, refused) = curl_tls(&["--cacert", ca, &url]).await;
    assert_eq!((code, refused["code"].as_i64()), (401, Some(16)), "{refused}");
    let token = format!("authorization: Bearer {}", sign(&key, &claims("alice", Some("payments"), &[])));
    let (code, denied) = curl_tls(&["--cacert", ca, "-H", &token, &url]).await;
    assert_eq!((code, denied["code"].as_i64()), (403, Some(7)), "{denied}");
    assert_eq!(denied["details"][0]["reason"], "POLICY_DENIED", "{denied}");
}

#[tokio::test]
async fn required_client_certificates_refuse_connections_without_one() {
    let key = rsa_key("k1");
    let s = setup("mtls-required", ClientCertificates::Required, &key).await;
    s.emu.emulator.reset_calls();
    let token = sign(&key, &claims("svc", Some("platform"), &[]));
    match tls_channel(s.gateway.addr, &s.pki.ca, None).await {
        Err(_) => {}
        Ok(channel) => {
            let status = client_with(channel, Some(&token))
                .copy_cluster_snapshot(copy_req("billing-pg-daily", "no-cert"))
                .await
                .expect_err("no client certificate");
            assert!(matches!(status.code(), Code::Unavailable | Code::Unknown), "{status:?}");
        }
    }
    assert_eq!(aws_calls(&s.emu), 0);
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, Some(&s.client_cert)).await.unwrap();
    client_with(channel, None)
        .copy_cluster_snapshot(copy_req("billing-pg-daily", "with-cert"))
        .await
        .expect("with one");
}

#[tokio::test]
async fn policies_decide_by_account_region_engine_kms_key_and_tags() {
    let key = rsa_key("k1");
    let s = setup("policies", ClientCertificates::Optional, &key).await;
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let as_ = |sub: &str, team: Option<&str>, groups: &[&str]| {
        client_with(channel.clone(), Some(&sign(&key, &claims(sub, team, groups))))
    };
    let platform = as_("svc-platform", Some("platform"), &[]);
    let payments = as_("svc-payments", Some("payments"), &[]);
    let backup = as_("svc-backup", None, &["backup"]);

    // The seed snapshots carry team=platform: the platform team copies them in place.
    let mut c = platform.clone();
    let mut req = copy_req("billing-pg-daily", "platform-copy");
    req.copy_tags = true;
    let made = c.copy_cluster_snapshot(req).await.expect("own cluster, same region");
    // ...and may watch what it copied (the copy kept the team tag).
    c.get_copy(GetCopyRequest { name: made.into_inner().name, fresh: false }).await.expect("watch what you may copy");

    s.emu.emulator.reset_calls();
    let denied = |status: tonic::Status| {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, "POLICY_DENIED");
        assert_eq!(info.metadata["action"], "CopyClusterSnapshot");
        (status.message().to_owned(), info.metadata.get("policies").cloned())
    };
    // Another team's snapshot (by tag): denied by default, no copy call.
    let (message, policies) = denied(
        payments.clone().copy_cluster_snapshot(copy_req("billing-pg-daily", "payments-copy")).await.unwrap_err(),
    );
    assert!(message.contains("no policy permits"), "{message}");
    assert_eq!(policies, None);
    // Its own team, but across regions: denied.
    let mut cross =
        copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:orders-aurora-2026-11-20", "platform-west");
    cross.destination_region = "us-west-2".into();
    denied(platform.clone().copy_cluster_snapshot(cross.clone()).await.unwrap_err());
    // The backup service crosses regions only with the backup key.
    let mut with_key = cross.clone();
    with_key.kms_key_id = "alias/snapgate-backup".into();
    denied(backup.clone().copy_cluster_snapshot(cross.clone()).await.unwrap_err());
    let mut wrong_key = cross.clone();
    wrong_key.kms_key_id = "alias/aws/rds".into();
    denied(backup.clone().copy_cluster_snapshot(wrong_key).await.unwrap_err());
    assert_eq!(s.emu.emulator.calls().get("CopyDBClusterSnapshot"), 0, "denied copies make no copy call");
    backup.clone().copy_cluster_snapshot(with_key).await.expect("backup key, cross-region");
    // A forbid wins over the backup permit and is named.
    let mut graph = copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:graph-neptune-snap", "graph-west");
    graph.destination_region = "us-west-2".into();
    graph.kms_key_id = "alias/snapgate-backup".into();
    let (message, policies) = denied(backup.clone().copy_cluster_snapshot(graph).await.unwrap_err());
    assert!(message.contains("graphs-stay-home"), "{message}");
    assert_eq!(policies.as_deref(), Some("graphs-stay-home"));
    // Watching needs its own permit: payments may not watch platform's copy.
    let status =
        payments.clone().get_copy(GetCopyRequest { name: "platform-copy".into(), fresh: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn policy_reloads_take_effect_and_a_broken_file_keeps_the_last_good_set() {
    let key = rsa_key("k1");
    let s = setup("reload", ClientCertificates::Optional, &key).await;
    let channel = tls_channel(s.gateway.addr, &s.pki.ca, None).await.unwrap();
    let mut payments = client_with(channel, Some(&sign(&key, &claims("svc-payments", Some("payments"), &[]))));
    let status = payments.copy_cluster_snapshot(copy_req("billing-pg-daily", "reload-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let added = format!(
        "{POLICIES}\n@id(\"payments-too\")\npermit(principal == Snapgate::Caller::\"svc-payments\", action, resource);\n"
    );
    std::fs::write(&s.policy_file, &added).unwrap();
    let allowed = eventually(Duration::from_secs(10), || {
        let mut c = payments.clone();
        async move { c.copy_cluster_snapshot(copy_req("billing-pg-daily", "reload-1")).await.is_ok() }
    })
    .await;
    assert!(allowed, "the added permit took effect without a restart");

    std::fs::write(&s.policy_file, "permit(principal, action, resource) when { nonsense").unwrap();
    let metrics = format!("http://{}/metrics", s.gateway.admin.unwrap());
    let failed_reload = eventually(Duration::from_secs(10), || {
        let metrics = metrics.clone();
        async move { scrape(&metrics).await.contains(r#"snapgate_policy_reloads_total{reason="failed"} 1"#) }
    })
    .await;
    assert!(failed_reload, "the broken file was read and refused");
    payments
        .copy_cluster_snapshot(copy_req("billing-pg-daily", "reload-2"))
        .await
        .expect("the last good set stays in force");
}

#[tokio::test]
async fn a_broken_policy_stops_start_naming_the_policy() {
    let emu = emulator_with(quiet_config()).await;
    let mut settings = gateway::settings();
    settings.authz.policies =
        Some(r#"@id("typo-policy") permit(principal, action, resource) when { resource.enigne == "neptune" };"#.into());
    let error = gateway::try_start(settings, &emu.endpoint_url(), "AKIDTEST").await.err().expect("start refused");
    let error = format!("{error:#}");
    assert!(error.contains("typo-policy") && error.contains("enigne"), "{error}");

    let mut open = gateway::settings();
    open.auth = AuthSettings::default();
    let error = gateway::try_start(open, &emu.endpoint_url(), "AKIDTEST").await.err().expect("no authentication");
    assert!(format!("{error:#}").contains("no way to authenticate"), "{error:#}");
}

#[tokio::test]
async fn a_jwks_url_is_refetched_for_a_new_key_id_and_at_most_so_often() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let k1 = rsa_key("k1");
    let k2 = rsa_key("k2");
    let document = Arc::new(Mutex::new(serde_json::to_string(&JwkSet { keys: vec![k1.jwk.clone()] }).unwrap()));
    let fetches = Arc::new(AtomicU64::new(0));
    let app = {
        let (document, fetches) = (document.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = document.lock().unwrap().clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let emu = emulator_with(EmulatorConfig { seed: true, ..quiet_config() }).await;
    let mut settings = gateway::settings();
    settings.auth.jwt = Some(JwtSettings {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks_file: None,
        jwks_url: Some(format!("http://{idp}/jwks.json")),
        jwks_ca_file: None,
        jwks_refresh_secs: 300,
        algorithms: vec!["RS256".into()],
        leeway_secs: 5,
        groups_claim: "groups".into(),
        team_claim: "team".into(),
    });
    settings.authz.policies = Some(r#"permit(principal == Snapgate::Caller::"svc", action, resource);"#.into());
    let gw = gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once at start");
    let get = |token: String| {
        let mut c = client_with(gw.channel.clone(), Some(&token));
        async move { c.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await }
    };
    get(sign(&k1, &claims("svc", None, &[]))).await.expect("k1 is in the JWKS");

    // The issuer rotates: k2 is published, then used. The first k2 token fetches again.
    *document.lock().unwrap() = serde_json::to_string(&JwkSet { keys: vec![k1.jwk.clone(), k2.jwk.clone()] }).unwrap();
    get(sign(&k2, &claims("svc", None, &[]))).await.expect("a rotated-in key is picked up");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // Tokens naming keys that do not exist cannot make the gateway hammer the issuer.
    let k3 = rsa_key("k3");
    for _ in 0..5 {
        let status = get(sign(&k3, &claims("svc", None, &[]))).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "unknown key ids refetch at most every 30 s");
}

async fn scrape(url: &str) -> String {
    let addr: SocketAddr = url.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap();
    raw_http(addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.1
}

#[tokio::test]
async fn certificates_reload_without_a_restart() {
    let key = rsa_key("k1");
    let s = setup("tls-reload", ClientCertificates::Optional, &key).await;
    // The client keeps its own copy of the CA that signed the server's certificate.
    let server_ca = s.pki.dir.join("server-ca-copy.pem");
    std::fs::copy(&s.pki.ca, &server_ca).unwrap();
    let (other, issuer) = Pki::new(&s.pki.dir, "partner");
    let partner = other.leaf(&issuer, "partner-client", vec![SanType::URI(CI_SPIFFE.try_into().unwrap())]);
    let works = |identity: (PathBuf, PathBuf)| {
        let (addr, ca) = (s.gateway.addr, server_ca.clone());
        async move {
            match tls_channel(addr, &ca, Some(&identity)).await {
                Ok(channel) => client_with(channel, None)
                    .get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false })
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(works(s.client_cert.clone()).await);
    assert!(!works(partner.clone()).await, "the partner CA is not trusted yet");
    // The operator switches the trusted client CA on disk; no restart.
    std::fs::copy(&other.ca, &s.pki.ca).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || works(partner.clone())).await,
        "the new CA is trusted after the reload"
    );
    assert!(!works(s.client_cert.clone()).await, "the old CA no longer is");
}

/// The audit trail of a `serve` process, in the file `[audit] path` names: one JSON record per
/// decision with who asked (and how), what, on which resource, the decision and the policies
/// behind it; one per refused authentication; counted in the metrics, none dropped.
#[tokio::test]
async fn every_call_leaves_an_audit_record_with_caller_action_resource_decision_and_policies() {
    let emu = emulator_with(seeded()).await;
    let dir = scratch_dir("audit-trail");
    let audit = dir.join("audit.jsonl");
    let store = format!("data_dir = \"{}\"", dir.join("data").display());
    let config = common::serve::config(&emu.endpoint_url(), &store)
        .replace("policies = 'permit(", "policies = '@id(\"testers-read\") permit(");
    let config = format!("{config}[audit]\npath = \"{}\"\n", audit.display());
    let gateway = common::serve::spawn(&config, &dir, "audit").await;
    let mut client = gateway::connect(gateway.addr).await;
    let copy = client.get_copy(GetCopyRequest { name: "billing-pg-daily".into(), fresh: false }).await.unwrap();
    let resource = copy.into_inner().name;
    let channel = Channel::from_shared(format!("http://{}", gateway.addr)).unwrap().connect().await.unwrap();
    let refused = client_with(channel, Some("not-a-token")).get_copy(GetCopyRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is one JSON object"))
            .collect()
    };
    assert!(eventually(Duration::from_secs(10), || async { records().len() >= 2 }).await, "{:?}", records());
    let records = records();
    let decision = records.iter().find(|r| r["event"] == "authorization").expect("a decision record");
    assert_eq!(decision["target"], "snapgate::audit");
    assert_eq!(decision["caller"], "tester");
    assert_eq!(decision["authn"], "static_token");
    assert_eq!(decision["action"], "GetCopy");
    assert_eq!(decision["resource"], resource.as_str());
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["policies"], json!(["testers-read"]));
    assert!(decision["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let refusal = records.iter().find(|r| r["event"] == "authentication").expect("a refusal record");
    assert_eq!(refusal["decision"], "unauthenticated");
    assert_eq!(refusal["method"], "GetCopy");
    assert!(!std::fs::read_to_string(&audit).unwrap().contains("not-a-token"), "no token in the trail");
    assert!(gateway.metric("snapgate_audit_records_total").await >= 2.0);
    assert_eq!(gateway.metric("snapgate_audit_records_dropped_total").await, 0.0);
}
