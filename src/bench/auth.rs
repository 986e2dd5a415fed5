//! `snapgate bench auth`: what authentication and authorization cost per call, next to what a
//! whole call costs. Keys are made for the run; the policies are the shipped examples.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use snapgate_domain::ClusterSnapshot;
use snapgate_gateway::config::{AuthSettings, JwtSettings, Secret, StaticToken};
use snapgate_gateway::policy::{self, Action, CopyContext};
use snapgate_gateway::{AuthMethod, Authenticator, Caller};
use snapgate_gateway::{Metrics, Tasks};

#[derive(Debug, clap::Args)]
pub(crate) struct AuthBenchArgs {
    /// Iterations of each measured step.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: u32,
    /// GetCopy calls through the whole gateway (against the embedded emulator), for scale.
    #[arg(long, default_value_t = 2_000)]
    pub calls: u32,
}

const EXAMPLES: &str = include_str!("../../deploy/policies/examples.cedar");

/// An identity provider for a benchmark: a P-256 key made for the run, its JWKS in a file, the
/// gateway's JWT settings that trust it, and ES256 tokens it signs.
pub(crate) struct BenchIssuer {
    signing: EncodingKey,
    pub settings: JwtSettings,
}

impl BenchIssuer {
    pub(crate) fn new(dir: &std::path::Path) -> anyhow::Result<BenchIssuer> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let signing = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256)?;
        jwk.common.key_id = Some("bench".into());
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, serde_json::to_string(&JwkSet { keys: vec![jwk] })?)?;
        let settings = JwtSettings {
            issuer: "https://idp.bench".into(),
            audiences: vec!["snapgate".into()],
            jwks_file: Some(jwks),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            algorithms: vec!["ES256".into()],
            leeway_secs: 30,
            groups_claim: "groups".into(),
            team_claim: "team".into(),
        };
        Ok(BenchIssuer { signing, settings })
    }

    /// A token for `subject` valid for an hour; `jti` makes tokens of one subject distinct.
    pub(crate) fn token(&self, subject: &str, jti: Option<usize>) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let mut claims = serde_json::json!({
            "iss": "https://idp.bench", "aud": "snapgate", "sub": subject, "team": "payments",
            "groups": ["backup-service"], "exp": now + 3600, "iat": now,
        });
        if let Some(jti) = jti {
            claims["jti"] = serde_json::json!(jti);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("bench".into());
        Ok(jsonwebtoken::encode(&header, &claims, &self.signing)?)
    }
}

pub(crate) async fn auth(args: AuthBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("snapgate-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let issuer = BenchIssuer::new(&dir)?;
    let settings = AuthSettings {
        jwt: Some(issuer.settings.clone()),
        static_tokens: vec![StaticToken {
            token: Secret::new("bench-static-token-0123"),
            principal: "bench".into(),
            groups: Vec::new(),
            team: None,
        }],
        tls: None,
    };
    let authenticator = Authenticator::new(&settings, Metrics::new(), &Tasks::new()).await?;
    let jwt = format!("Bearer {}", issuer.token("svc-payments", None)?);

    let n = args.iterations.max(1);
    let static_us = per_call(n, || async {
        authenticator.authenticate(Some(b"Bearer bench-static-token-0123"), None).await.is_ok()
    })
    .await;
    // A token seen before is answered from the verified-token cache; a new one is verified.
    let jwt_us = per_call(n, || async { authenticator.authenticate(Some(jwt.as_bytes()), None).await.is_ok() }).await;
    let fresh_tokens = (0..n + 100)
        .map(|i| issuer.token("svc-payments", Some(i as usize)).map(|t| format!("Bearer {t}")))
        .collect::<Result<Vec<_>, _>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let authenticator = &authenticator;
    let jwt_first_us = per_call(n, || {
        let token = &fresh_tokens[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % fresh_tokens.len()];
        async move { authenticator.authenticate(Some(token.as_bytes()), None).await.is_ok() }
    })
    .await;

    let policies = policy::parse_policies(EXAMPLES).map_err(anyhow::Error::msg)?;
    let caller = Caller {
        id: "svc-payments".into(),
        method: AuthMethod::Jwt,
        groups: vec!["backup-service".into()],
        team: Some("payments".into()),
        issuer: None,
    };
    let snapshot = ClusterSnapshot {
        arn: "arn:aws:rds:us-east-1:111111111111:cluster-snapshot:orders-2026-11-22".into(),
        id: "orders-2026-11-22".into(),
        region: "us-east-1".into(),
        account: "111111111111".into(),
        cluster_id: "orders".into(),
        engine: "aurora-postgresql".into(),
        encrypted: true,
        tags: vec![("team".into(), "payments".into()), ("env".into(), "prod".into())],
        snapshot_type: "manual".into(),
        ..ClusterSnapshot::default()
    };
    let context = CopyContext {
        destination_account: "111111111111".into(),
        destination_region: "eu-west-1".into(),
        target: "orders-copy".into(),
        kms_key: Some("alias/snapgate-backup".into()),
        tags: vec![("owner".into(), "payments".into())],
        copy_tags: true,
        cross_region: true,
        cross_account: false,
        plan: None,
    };
    let decide_us = per_call(n, || async {
        policy::decide(&policies, &caller, Action::CopyClusterSnapshot, &snapshot, Some(&context)).allowed
    })
    .await;

    let call_us = whole_calls(args.calls.max(1)).await?;
    let auth_us = jwt_us + decide_us;
    println!("snapgate bench auth: {n} iterations per step, {} GetCopy calls through the gateway", args.calls);
    println!("  authenticate, static token: {static_us:>8.1} us");
    println!(
        "  authenticate, JWT ES256, first use of a token: {jwt_first_us:>8.1} us (signature, iss, aud, exp/nbf, claims)"
    );
    println!(
        "  authenticate, JWT ES256, the same token again: {jwt_us:>8.1} us (verified-token cache, key still in the JWKS)"
    );
    println!(
        "  authorize (Cedar, {} example policies, schema-checked request): {decide_us:>8.1} us",
        policies.num_of_policies()
    );
    println!("  authn (JWT) + authz per call: {auth_us:.1} us");
    println!(
        "  a whole GetCopy call (client, gateway, emulator's RDS answer; static token): {call_us:.1} us; \
         JWT authn + authz would be {:.1} % of it (a real RDS call takes tens of milliseconds)",
        100.0 * auth_us / (call_us + jwt_us - static_us)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Mean wall time of `step` over `n` runs, in microseconds (after a warm-up).
async fn per_call<F, Fut>(n: u32, step: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..n.min(100) {
        std::hint::black_box(step().await);
    }
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(step().await);
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Mean latency of sequential GetCopy calls through the real gateway on loopback.
async fn whole_calls(calls: u32) -> anyhow::Result<f64> {
    let (emu, mut client, _scratch) = crate::bench::unthrottled_gateway().await?;
    let get = snapgate_proto::GetCopyRequest { name: "billing-pg-daily".into(), fresh: false };
    for _ in 0..50 {
        client.get_copy(get.clone()).await?;
    }
    let started = Instant::now();
    for _ in 0..calls {
        client.get_copy(get.clone()).await?;
    }
    let mean = started.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
    emu.stop().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(mean)
}
