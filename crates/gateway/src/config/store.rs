//! `[store]`: where copy jobs are kept (SQLite by default, PostgreSQL for replicas).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Secret, Violations};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` for PostgreSQL (replicas share its queue), or
    /// `sqlite:PATH`; empty: the SQLite file `snapgate.sqlite` in `data_dir`.
    pub url: Option<Secret>,
    /// Directory of the default SQLite file (created when missing).
    pub data_dir: PathBuf,
    /// Connections to PostgreSQL at most (SQLite uses a few).
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings { url: None, data_dir: PathBuf::from("snapgate-data"), max_connections: 10 }
    }
}

impl StoreSettings {
    /// The URL to connect to.
    pub fn url(&self) -> String {
        match &self.url {
            Some(url) if !url.expose().is_empty() => url.expose().to_owned(),
            _ => format!("sqlite://{}?mode=rwc", self.data_dir.join("snapgate.sqlite").display()),
        }
    }

    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        let url = self.url();
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url,
        }
    }

    pub(crate) fn validate(&self, v: &mut Violations) {
        v.at_least("store.max_connections", u64::from(self.max_connections), 1);
    }
}
