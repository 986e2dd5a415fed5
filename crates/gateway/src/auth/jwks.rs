//! The issuer's signing keys (a JWKS document), from a file or an HTTPS URL. Keys are cached;
//! the document is refreshed periodically and, at most every [`MIN_REFETCH`], when a token
//! names a key id the cache does not hold, which is how rotated keys arrive.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::config::JwtSettings;
use crate::tasks::Tasks;

/// Unknown key ids trigger a refetch at most this often, so junk tokens cannot hammer the IdP.
const MIN_REFETCH: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One signing key.
pub(crate) struct Key {
    pub key: DecodingKey,
    /// The algorithm the JWKS pins the key to, if it does.
    pub algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`, usable only when a token names none.
    anonymous: Vec<Arc<Key>>,
}

enum Source {
    File(PathBuf),
    Url { uri: http::Uri, client: Box<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>> },
}

pub(crate) struct Jwks {
    source: Source,
    keys: ArcSwap<KeySet>,
    /// Present for [`MIN_REFETCH`] after an unknown key id caused a fetch: while it is, no
    /// other fetch is made for one, and a burst of such tokens shares one fetch (moka's single
    /// flight).
    recent_fetch: moka::future::Cache<(), ()>,
    refresh: Duration,
    /// Bumped whenever new keys are taken: holders of a verified token check their key again.
    generation: crate::bell::Generation,
}

impl Jwks {
    /// A file must load at start. A URL that cannot be fetched yet does not stop start (the
    /// IdP may be starting too): tokens are refused until a refresh succeeds.
    pub(crate) async fn new(settings: &JwtSettings, tasks: &Tasks) -> anyhow::Result<Arc<Jwks>> {
        let source = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(url)) => Source::Url { uri: url.parse()?, client: Box::new(https_client(settings)?) },
            (None, None) => anyhow::bail!("auth.jwt: set jwks_file or jwks_url"),
        };
        let jwks = Arc::new(Jwks {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            recent_fetch: moka::future::Cache::builder().max_capacity(1).time_to_live(MIN_REFETCH).build(),
            refresh: Duration::from_secs(settings.jwks_refresh_secs),
            generation: crate::bell::Generation::default(),
        });
        match jwks.fetch().await {
            Ok(set) => jwks.keys.store(Arc::new(set)),
            Err(error) if matches!(jwks.source, Source::Url { .. }) => {
                tracing::warn!(error = format!("{error:#}"), "JWKS not fetched yet; tokens are refused until it is");
            }
            Err(error) => return Err(error.context("auth.jwt.jwks_file")),
        }
        let weak = Arc::downgrade(&jwks);
        let stopping = tasks.stopping();
        tasks.spawn(async move {
            while let Some(interval) = weak.upgrade().map(|j| j.refresh) {
                tokio::select! {
                    () = stopping.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
                let Some(jwks) = weak.upgrade() else { break };
                jwks.fetch_and_store().await;
            }
        });
        Ok(jwks)
    }

    /// The key a token's header names: by `kid`, or the only key-id-less key when it names none.
    pub(crate) async fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        self.refetch().await;
        self.lookup(kid)
    }

    /// Changes whenever new keys are taken.
    pub(crate) fn changes(&self) -> &crate::bell::Generation {
        &self.generation
    }

    /// The key in hand for `kid`, without fetching.
    pub(crate) fn lookup(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.by_id.get(kid).cloned(),
            None if keys.anonymous.len() == 1 => keys.anonymous.first().cloned(),
            None => None,
        }
    }

    /// Fetches the document again for an unknown key id, unless one was fetched for that
    /// reason less than [`MIN_REFETCH`] ago.
    async fn refetch(&self) {
        self.recent_fetch.get_with((), self.fetch_and_store()).await;
    }

    /// Fetches the document and takes its keys; a failed fetch keeps the keys in hand.
    async fn fetch_and_store(&self) {
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(keys = set.by_id.len() + set.anonymous.len(), "JWKS refreshed");
                self.keys.store(Arc::new(set));
                self.generation.bump();
            }
            Err(error) => tracing::warn!(error = format!("{error:#}"), "JWKS refresh failed; keeping the keys in hand"),
        }
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let body = match &self.source {
            Source::File(path) => {
                tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?
            }
            Source::Url { uri, client } => {
                let request = http::Request::get(uri.clone())
                    .header(http::header::ACCEPT, "application/json")
                    .body(Empty::<Bytes>::new())?;
                let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
                    .await
                    .map_err(|_| anyhow::anyhow!("GET {uri}: no answer within {FETCH_TIMEOUT:?}"))?
                    .with_context(|| format!("GET {uri}"))?;
                anyhow::ensure!(response.status().is_success(), "GET {uri}: HTTP {}", response.status());
                let body = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect(),
                )
                .await
                .map_err(|_| anyhow::anyhow!("GET {uri}: body not received within {FETCH_TIMEOUT:?}"))?
                .map_err(|e| anyhow::anyhow!("GET {uri}: {e}"))?;
                body.to_bytes().to_vec()
            }
        };
        parse(&body)
    }
}

/// Parses a JWKS document key by key: a key the gateway cannot use (an unknown type, an
/// encryption key) is skipped with a warning rather than failing the whole document.
fn parse(body: &[u8]) -> anyhow::Result<KeySet> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).context("not a JWKS document (a JSON object with 'keys')")?;
    let mut set = KeySet::default();
    for (i, value) in document.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(index = i, %error, "JWKS key skipped: not a key this gateway can use");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let algorithm = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => Arc::new(Key { key, algorithm }),
            Err(error) => {
                tracing::warn!(index = i, %error, "JWKS key skipped");
                continue;
            }
        };
        match jwk.common.key_id {
            Some(kid) => {
                set.by_id.insert(kid, key);
            }
            None => set.anonymous.push(key),
        }
    }
    Ok(set)
}

fn https_client(settings: &JwtSettings) -> anyhow::Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>> {
    let mut roots = RootCertStore::empty();
    match &settings.jwks_ca_file {
        Some(path) => {
            for cert in super::tls::read_certs(path).context("auth.jwt.jwks_ca_file")? {
                roots.add(cert).context("auth.jwt.jwks_ca_file")?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let doc = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","use":"sig","alg":"ES256"},
            {"kty":"weird","kid":"b"},
            {"kty":"EC","crv":"P-256","kid":"c","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","use":"enc"}
        ]}"#;
        let set = parse(doc).unwrap();
        assert_eq!(set.by_id.len(), 1);
        assert_eq!(set.by_id["a"].algorithm, Some(Algorithm::ES256));
        assert!(parse(b"[]").is_err());
    }
}
