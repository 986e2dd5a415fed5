//! Seed data for `dev` and demos: a cluster and snapshot of every engine, encrypted and not,
//! in two regions, and snapshots shared from a second account.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::EmulatorConfig;
use crate::actions::snapshot_of;
use crate::model::{Cluster, Key, World};
use snapgate_domain::Engine;

/// The second account of the seed data, which shares snapshots with the default account.
pub const SEED_PARTNER_ACCOUNT: &str = "210987654321";
/// An access key that the seeded emulator maps to [`SEED_PARTNER_ACCOUNT`].
pub const SEED_PARTNER_ACCESS_KEY: &str = "AKIAPARTNER000000001";

struct Seed {
    account: &'static str,
    region: &'static str,
    cluster: &'static str,
    engine: Engine,
    gib: i32,
    encrypted: bool,
    snapshot: &'static str,
    shared: bool,
}

pub(crate) fn load(world: &mut World, config: &mut EmulatorConfig) {
    let main = config.default_account.clone();
    config.access_keys.entry(SEED_PARTNER_ACCESS_KEY.to_owned()).or_insert_with(|| SEED_PARTNER_ACCOUNT.to_owned());
    for region in ["us-east-1", "us-west-2"] {
        world.default_kms_key(&main, region);
        world.add_kms_key(&main, region, Some("alias/snapgate-backup"));
    }
    let seeds = [
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "orders-aurora",
            engine: Engine::AuroraMysql,
            gib: 200,
            encrypted: true,
            snapshot: "orders-aurora-2026-11-20",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "billing-pg",
            engine: Engine::AuroraPostgresql,
            gib: 120,
            encrypted: false,
            snapshot: "billing-pg-daily",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "ledger-mysql",
            engine: Engine::Mysql,
            gib: 100,
            encrypted: false,
            snapshot: "ledger-mysql-snap",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "reports-postgres",
            engine: Engine::Postgres,
            gib: 80,
            encrypted: true,
            snapshot: "reports-postgres-snap",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "graph-neptune",
            engine: Engine::Neptune,
            gib: 60,
            encrypted: true,
            snapshot: "graph-neptune-snap",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-east-1",
            cluster: "catalog-docdb",
            engine: Engine::Docdb,
            gib: 50,
            encrypted: true,
            snapshot: "catalog-docdb-snap",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-west-2",
            cluster: "orders-aurora-west",
            engine: Engine::AuroraMysql,
            gib: 150,
            encrypted: false,
            snapshot: "orders-aurora-west-snap",
            shared: false,
        },
        Seed {
            account: "",
            region: "us-west-2",
            cluster: "catalog-docdb-west",
            engine: Engine::Docdb,
            gib: 40,
            encrypted: true,
            snapshot: "catalog-docdb-west-snap",
            shared: false,
        },
        Seed {
            account: SEED_PARTNER_ACCOUNT,
            region: "us-east-1",
            cluster: "partner-aurora",
            engine: Engine::AuroraPostgresql,
            gib: 90,
            encrypted: false,
            snapshot: "partner-aurora-share",
            shared: true,
        },
        Seed {
            account: SEED_PARTNER_ACCOUNT,
            region: "us-east-1",
            cluster: "partner-vault",
            engine: Engine::AuroraMysql,
            gib: 30,
            encrypted: true,
            snapshot: "partner-vault-share",
            shared: true,
        },
    ];
    let day_ago = SystemTime::now() - Duration::from_secs(86_400);
    for seed in seeds {
        let account = if seed.account.is_empty() { main.as_str() } else { seed.account };
        let kms_key_arn = seed.encrypted.then(|| world.default_kms_key(account, seed.region));
        let cluster = Cluster {
            key: Key::new(account, seed.region, seed.cluster),
            engine: seed.engine.clone(),
            engine_version: match seed.engine {
                Engine::AuroraMysql => "8.0.mysql_aurora.3.05.2",
                Engine::AuroraPostgresql | Engine::Postgres => "15.4",
                Engine::Mysql => "8.0.35",
                Engine::Neptune => "1.3.1.0",
                _ => "5.0.0",
            }
            .into(),
            allocated_storage: seed.gib,
            encrypted: seed.encrypted,
            kms_key_arn,
            master_username: "admin".into(),
            port: match seed.engine {
                Engine::AuroraPostgresql | Engine::Postgres => 5432,
                Engine::Neptune => 8182,
                Engine::Docdb => 27017,
                _ => 3306,
            },
            status: "available".into(),
            create_time: day_ago - Duration::from_secs(86_400 * 30),
            resource_id: format!("cluster-SEED{}", seed.cluster.to_ascii_uppercase().replace('-', "")),
            tags: vec![("team".into(), "platform".into()), ("env".into(), "dev".into())],
        };
        let mut snapshot = snapshot_of(&cluster, seed.snapshot, "manual", vec![("team".into(), "platform".into())]);
        snapshot.create_time = day_ago;
        if seed.shared {
            snapshot.shared_with = BTreeSet::from([main.clone()]);
        }
        if seed.engine == Engine::AuroraMysql && seed.account.is_empty() && seed.region == "us-east-1" {
            let mut automated =
                snapshot_of(&cluster, &format!("rds:{}-2026-11-21-03-00", seed.cluster), "automated", vec![]);
            automated.create_time = day_ago;
            world.snapshots.insert(automated.key.clone(), automated);
        }
        world.snapshots.insert(snapshot.key.clone(), snapshot);
        world.clusters.insert(cluster.key.clone(), cluster);
    }
}
