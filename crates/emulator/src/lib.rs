#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! The local RDS query-API emulator: snapgate's embedded default (`dev`) and its test backend.
//! It speaks the AWS query protocol well enough that aws-sdk-rds and boto3 cannot tell it from
//! RDS for the actions snapgate uses, and adds what no other fake offers: copies that take time.
//!
//! `spawn` runs it in-process on a port of the caller's choosing (port 0 works); the
//! `snapgate emulator` command runs the same code standalone.

mod actions;
mod faults;
mod model;
mod presign;
mod query;
mod seed;
mod server;
mod xml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use snapgate_domain::AccountId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{CallCounts, FailCopies, Faults, Throttle};
pub use seed::{SEED_PARTNER_ACCESS_KEY, SEED_PARTNER_ACCOUNT};

/// The account every access key not listed in `access_keys` belongs to.
pub const DEFAULT_ACCOUNT: &str = "123456789012";

/// How the emulator behaves; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Account of access keys not listed in `access_keys`.
    pub default_account: String,
    /// Access key id to account id.
    pub access_keys: BTreeMap<String, String>,
    /// Access key id to secret key, for verifying the signatures of presigned URLs.
    pub secret_keys: BTreeMap<String, String>,
    /// Refuse a presigned URL signed with a key not in `secret_keys`; by default such a URL
    /// passes every other check (algorithm, scope and region, expiry, what it asks for) and
    /// its signature is logged as not verifiable.
    pub strict_presign: bool,
    /// Simulated copy throughput; a copy of N GiB takes N / this seconds.
    pub copy_gib_per_sec: f64,
    /// Manual cluster snapshots allowed per account and region (RDS's default quota is 100).
    pub snapshot_quota: usize,
    /// Copies from other regions in progress at once into one region per account (AWS: 5).
    pub cross_region_copy_limit: usize,
    /// Every available cluster takes an automated snapshot each this many seconds after its
    /// creation, as RDS does once a day in its backup window (86400 is AWS's cadence; tests
    /// take seconds). `None` (the default): only the one a new cluster takes.
    pub backup_interval_secs: Option<u64>,
    /// Load the dev seed data (clusters and snapshots of every engine in two regions).
    pub seed: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            default_account: DEFAULT_ACCOUNT.to_owned(),
            access_keys: BTreeMap::new(),
            secret_keys: BTreeMap::new(),
            strict_presign: false,
            copy_gib_per_sec: 2.0,
            snapshot_quota: 100,
            cross_region_copy_limit: 5,
            backup_interval_secs: None,
            seed: false,
            max_body_bytes: 1 << 20,
            faults: Faults::default(),
        }
    }
}

impl EmulatorConfig {
    pub fn validate(&self) -> Result<(), String> {
        let is_account = AccountId::is_valid;
        if !is_account(&self.default_account) {
            return Err("default_account must be a 12-digit account id".into());
        }
        if let Some((key, _)) = self.access_keys.iter().find(|(_, a)| !is_account(a)) {
            return Err(format!("access_keys.{key} must map to a 12-digit account id"));
        }
        if !(self.copy_gib_per_sec > 0.0 && self.copy_gib_per_sec.is_finite()) {
            return Err("copy_gib_per_sec must be a positive number".into());
        }
        if self.backup_interval_secs == Some(0) {
            return Err("backup_interval_secs must be at least 1 (or left out: no backups)".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        self.faults.validate().map_err(|e| format!("faults: {e}"))
    }

    pub fn account_for(&self, access_key: &str) -> &str {
        self.access_keys.get(access_key).map(String::as_str).unwrap_or(&self.default_account)
    }
}

/// The emulator's shared state; cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    config: EmulatorConfig,
    world: Mutex<model::World>,
    faults: Mutex<faults::FaultState>,
}

impl Emulator {
    pub fn new(config: EmulatorConfig) -> Result<Emulator, String> {
        config.validate()?;
        let mut world = model::World::default();
        let mut config = config;
        if config.seed {
            seed::load(&mut world, &mut config);
        }
        let faults = faults::FaultState::new(config.faults.clone());
        Ok(Emulator { inner: Arc::new(Inner { config, world: Mutex::new(world), faults: Mutex::new(faults) }) })
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.inner.config
    }

    /// The emulator's HTTP service (the query API and the `/_emulator` admin API), to serve
    /// on a listener of one's own or to call in process (the fuzz target does).
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    fn world(&self) -> MutexGuard<'_, model::World> {
        // A panic while holding the lock cannot leave the world half-changed in a way that
        // matters more than stopping the emulator would, so a poisoned lock is taken over.
        self.inner.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fault_state(&self) -> MutexGuard<'_, faults::FaultState> {
        self.inner.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Calls received so far, per action.
    pub fn calls(&self) -> CallCounts {
        self.fault_state().counts.clone()
    }

    /// Copies in progress per destination (account, region) now, with the most cross-region
    /// copies ever in progress at once there.
    pub fn copies(&self) -> Vec<CopiesInProgress> {
        let mut world = self.world();
        world.advance(std::time::Instant::now());
        let mut destinations: std::collections::BTreeSet<(String, String)> = world
            .snapshots
            .values()
            .filter(|s| s.copy.is_some())
            .map(|s| (s.key.account.clone(), s.key.region.clone()))
            .collect();
        destinations.extend(world.copies_made.keys().cloned());
        destinations
            .into_iter()
            .map(|(account, region)| {
                let (cross_region, all) = world.copies_in_progress(&account, &region);
                let peak = world.peak_cross_region_copies.get(&(account.clone(), region.clone())).copied().unwrap_or(0);
                let made = world.copies_made.get(&(account.clone(), region.clone())).copied().unwrap_or(0);
                CopiesInProgress {
                    account,
                    region,
                    cross_region_in_progress: cross_region,
                    in_progress: all,
                    peak_cross_region_in_progress: peak,
                    copies_made: made,
                }
            })
            .collect()
    }

    pub fn reset_calls(&self) {
        self.fault_state().counts = CallCounts::default();
    }

    pub fn faults(&self) -> Faults {
        self.fault_state().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.fault_state().set_faults(faults);
        Ok(())
    }

    /// Creates a customer-managed KMS key and returns its ARN.
    pub fn add_kms_key(&self, account: &str, region: &str, alias: Option<&str>) -> String {
        self.world().add_kms_key(account, region, alias)
    }

    /// Sets a cluster's status (to make `InvalidDBClusterStateFault` reachable).
    pub fn set_cluster_status(&self, account: &str, region: &str, cluster: &str, status: &str) -> bool {
        match self.world().clusters.get_mut(&model::Key::new(account, region, cluster)) {
            Some(c) => {
                c.status = status.to_owned();
                true
            }
            None => false,
        }
    }
}

/// The copies of one destination, as `/_emulator/copies` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopiesInProgress {
    pub account: String,
    pub region: String,
    /// Copies from other regions in progress now (what AWS's limit counts).
    pub cross_region_in_progress: usize,
    /// All copies in progress now.
    pub in_progress: usize,
    /// The most cross-region copies ever in progress at once.
    pub peak_cross_region_in_progress: usize,
    /// Copies made there so far (each CopyDBClusterSnapshot that made a snapshot).
    pub copies_made: usize,
}

/// A running emulator: its address, its state, and a way to stop it.
pub struct EmulatorHandle {
    pub emulator: Emulator,
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL to give an AWS SDK (`AWS_ENDPOINT_URL`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `addr` (port 0 picks a free port) and serves the emulator in the background.
pub async fn spawn(config: EmulatorConfig, addr: SocketAddr) -> anyhow::Result<EmulatorHandle> {
    let emulator = Emulator::new(config).map_err(|e| anyhow::anyhow!("emulator configuration: {e}"))?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let router = emulator.router();
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "emulator server stopped");
        }
    });
    tracing::info!(%addr, "RDS emulator listening");
    Ok(EmulatorHandle { emulator, addr, stop, task })
}
