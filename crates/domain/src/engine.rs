//! The engines that share the RDS `CopyDBClusterSnapshot` API, and where their rules differ.

use std::fmt;

/// A DB cluster engine, as the `Engine` field of a `DBClusterSnapshot` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Engine {
    AuroraMysql,
    AuroraPostgresql,
    /// RDS for MySQL Multi-AZ DB cluster.
    Mysql,
    /// RDS for PostgreSQL Multi-AZ DB cluster.
    Postgres,
    Neptune,
    Docdb,
    /// An engine AWS added after this code was written: RDS rules apply.
    Other(String),
}

/// The service family whose documented rules apply to an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineFamily {
    Rds,
    Neptune,
    Docdb,
}

impl Engine {
    /// Reads an engine name as AWS reports it (`aurora` is the legacy Aurora MySQL 5.6 name).
    pub fn parse(name: &str) -> Engine {
        match name.to_ascii_lowercase().as_str() {
            "aurora" | "aurora-mysql" => Engine::AuroraMysql,
            "aurora-postgresql" => Engine::AuroraPostgresql,
            "mysql" => Engine::Mysql,
            "postgres" => Engine::Postgres,
            "neptune" => Engine::Neptune,
            "docdb" => Engine::Docdb,
            other => Engine::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Engine::AuroraMysql => "aurora-mysql",
            Engine::AuroraPostgresql => "aurora-postgresql",
            Engine::Mysql => "mysql",
            Engine::Postgres => "postgres",
            Engine::Neptune => "neptune",
            Engine::Docdb => "docdb",
            Engine::Other(name) => name,
        }
    }

    pub fn family(&self) -> EngineFamily {
        match self {
            Engine::Neptune => EngineFamily::Neptune,
            Engine::Docdb => EngineFamily::Docdb,
            _ => EngineFamily::Rds,
        }
    }

    /// Whether snapgate (and the emulator) know this engine's cluster snapshots.
    pub fn is_known(&self) -> bool {
        !matches!(self, Engine::Other(_))
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EngineFamily {
    /// Whether tag keys and values may contain `@`. The RDS API reference allows it; Neptune's
    /// (seed `boto3-neptune-copy_db_cluster_snapshot.txt`) and DocumentDB's do not.
    pub fn tags_allow_at_sign(self) -> bool {
        matches!(self, EngineFamily::Rds)
    }

    /// Whether a copy from `source_region` into `destination_region` needs a presigned URL.
    /// DocumentDB needs one for every cross-region copy; RDS only between GovCloud regions
    /// (elsewhere RDS ignores it); Neptune never takes one.
    pub fn needs_presigned_url(self, source_region: &str, destination_region: &str) -> bool {
        if source_region == destination_region {
            return false;
        }
        match self {
            EngineFamily::Docdb => true,
            EngineFamily::Rds => source_region.starts_with("us-gov-") && destination_region.starts_with("us-gov-"),
            EngineFamily::Neptune => false,
        }
    }

    /// The family's code in policies: "rds", "neptune" or "docdb".
    pub fn code(self) -> &'static str {
        match self {
            EngineFamily::Rds => "rds",
            EngineFamily::Neptune => "neptune",
            EngineFamily::Docdb => "docdb",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineFamily::Rds => "RDS",
            EngineFamily::Neptune => "Neptune",
            EngineFamily::Docdb => "DocumentDB",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_aurora_name_is_aurora_mysql() {
        assert_eq!(Engine::parse("aurora"), Engine::AuroraMysql);
        assert_eq!(Engine::parse("AURORA-POSTGRESQL"), Engine::AuroraPostgresql);
    }

    #[test]
    fn unknown_engines_follow_rds_rules() {
        let engine = Engine::parse("aurora-future");
        assert!(!engine.is_known());
        assert_eq!(engine.family(), EngineFamily::Rds);
    }

    #[test]
    fn presigned_urls_are_needed_only_where_aws_uses_them() {
        assert!(EngineFamily::Docdb.needs_presigned_url("us-east-1", "us-west-2"));
        assert!(!EngineFamily::Docdb.needs_presigned_url("us-east-1", "us-east-1"));
        assert!(!EngineFamily::Rds.needs_presigned_url("us-east-1", "us-west-2"));
        assert!(EngineFamily::Rds.needs_presigned_url("us-gov-west-1", "us-gov-east-1"));
        assert!(!EngineFamily::Neptune.needs_presigned_url("us-east-1", "us-west-2"));
    }
}
