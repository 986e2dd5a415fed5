//! `[audit]`: where the audit trail's records go and how many may wait for the writer.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// A file the records are appended to (one JSON object a line); none: standard error,
    /// beside the log lines.
    pub path: Option<PathBuf>,
    /// Records that may wait for the writer thread; past that, records are dropped (and
    /// counted in `snapgate_audit_records_dropped_total`) rather than delaying a call.
    pub queue_records: usize,
}

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings { path: None, queue_records: 65_536 }
    }
}

impl AuditSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        v.at_least("audit.queue_records", self.queue_records as u64, 1);
        if let Some(path) = &self.path {
            v.check(!path.as_os_str().is_empty(), "audit.path", "must name a file");
        }
    }
}
