//! `[aws]`: the AWS side. Credentials always come from the standard chain (environment,
//! profile, web identity, container and instance roles); these settings override the standard
//! variables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapgate_domain::AccountId;

use super::Violations;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSettings {
    /// Default region of copies (else `AWS_REGION` / the profile's region).
    pub region: Option<String>,
    /// RDS endpoint (else `AWS_ENDPOINT_URL_RDS` / `AWS_ENDPOINT_URL`); for emulators.
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call, retries with backoff and jitter included.
    pub max_attempts: u32,
    /// How long one attempt may take, in milliseconds, before it is abandoned and retried. A
    /// copy whose answer was lost this way is found by the retry, not made twice.
    pub attempt_timeout_ms: u64,
    /// The account the gateway's own credentials belong to. Known, it lets the gateway tell
    /// shared sources from its own before calling AWS.
    #[serde(deserialize_with = "super::digits_as_text")]
    pub account_id: Option<String>,
    /// Client-side limit of AWS calls per second, per account and region (RDS allows 12/s
    /// sustained per account, shared with every other client).
    pub rate_limit_per_sec: f64,
    /// Calls allowed at once before the rate applies.
    pub rate_limit_burst: u32,
    /// The regions requests may name (in source ARNs, `source_region`, `destination_region`,
    /// copy names); default: every region of AWS's commercial partition. Add GovCloud or China
    /// regions where the gateway's credentials reach them.
    pub regions: Option<Vec<String>>,
    /// Other accounts copies may go to, each with the role the gateway assumes there.
    pub accounts: BTreeMap<String, AccountRole>,
}

impl Default for AwsSettings {
    fn default() -> AwsSettings {
        AwsSettings {
            region: None,
            endpoint_url: None,
            max_attempts: 5,
            attempt_timeout_ms: 20_000,
            account_id: None,
            rate_limit_per_sec: 8.0,
            rate_limit_burst: 40,
            regions: None,
            accounts: BTreeMap::new(),
        }
    }
}

/// A role in another account, assumed with STS AssumeRole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountRole {
    pub role_arn: String,
    /// The external id the role's trust policy requires, if any.
    pub external_id: Option<String>,
    /// Session name, shown in CloudTrail.
    pub session_name: String,
}

impl Default for AccountRole {
    fn default() -> AccountRole {
        AccountRole { role_arn: String::new(), external_id: None, session_name: "snapgate".into() }
    }
}

impl AwsSettings {
    /// The regions requests may name.
    pub fn served_regions(&self) -> Vec<String> {
        match &self.regions {
            Some(regions) => regions.clone(),
            None => snapgate_domain::region::COMMERCIAL_REGIONS.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    /// How long one attempt of an AWS call may take before it is retried.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    pub(crate) fn validate(&self, v: &mut Violations) {
        const REGION: &str = "is not a region name (like us-east-1)";
        if let Some(region) = &self.region {
            if !snapgate_domain::is_region_name(region) {
                v.push("aws.region", format!("'{region}' {REGION}"));
            } else if !self.served_regions().contains(region) {
                v.push("aws.region", format!("'{region}' is not among aws.regions"));
            }
        }
        for (i, bad) in self.served_regions().iter().enumerate().filter(|(_, r)| !snapgate_domain::is_region_name(r)) {
            v.push(format!("aws.regions[{i}]"), format!("'{bad}' {REGION}"));
        }
        if let Some(url) = &self.endpoint_url {
            let ok = url.starts_with("http://") || url.starts_with("https://");
            v.check(ok, "aws.endpoint_url", format!("'{url}' must start with http:// or https://"));
        }
        if let Some(account) = &self.account_id {
            v.check(
                AccountId::is_valid(account),
                "aws.account_id",
                format!("'{account}' is not a 12-digit account id"),
            );
        }
        for (account, role) in &self.accounts {
            let field = format!("aws.accounts.{account}");
            v.check(AccountId::is_valid(account), field.clone(), "the key must be a 12-digit account id");
            let arn = snapgate_domain::Arn::parse(&role.role_arn);
            let is_role = arn.as_ref().is_some_and(|a| a.service == "iam" && a.resource.starts_with("role/"));
            v.check(is_role, format!("{field}.role_arn"), format!("'{}' is not an IAM role ARN", role.role_arn));
            v.check(!role.session_name.is_empty(), format!("{field}.session_name"), "must not be empty");
        }
        v.rate("aws.rate_limit_per_sec", self.rate_limit_per_sec);
        v.at_least("aws.rate_limit_burst", u64::from(self.rate_limit_burst), 1);
        v.check((1..=20).contains(&self.max_attempts), "aws.max_attempts", "must be between 1 and 20");
        v.positive("aws.attempt_timeout_ms", self.attempt_timeout_ms);
    }
}
