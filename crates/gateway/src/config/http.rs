//! `[http]` and `[admin]`: the listeners beside gRPC. The HTTP/JSON listener serves the same
//! RPCs, authentication and authorization as gRPC (for curl, Step Functions HTTP tasks and Argo
//! HTTP templates) with the gRPC listener's TLS (`auth.tls`) and limits (`server`); the admin
//! listener serves Prometheus metrics and HTTP health, in plaintext, for probes and scrapers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP/JSON listener (HTTP/1.1 and HTTP/2); none turns it off.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`; none turns the listener off.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminSettings {
    fn default() -> AdminSettings {
        AdminSettings { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}
