//! The AWS query protocol on the way in: form-encoded parameters, the SigV4 credential scope,
//! and the error envelope on the way out. Parameters are consumed as an action reads them, so
//! anything the action did not expect is reported, as a mistyped parameter name should be.

use std::collections::BTreeMap;

use axum::http::StatusCode;

/// An error as AWS's query protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AwsError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> AwsError {
        AwsError { status, code: code.to_owned(), message: message.into() }
    }
    /// A 400 fault with the given code.
    pub(crate) fn client(code: &str, message: impl Into<String>) -> AwsError {
        AwsError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn not_found(code: &str, message: impl Into<String>) -> AwsError {
        AwsError::new(StatusCode::NOT_FOUND, code, message)
    }
    pub(crate) fn invalid_value(message: impl Into<String>) -> AwsError {
        AwsError::client("InvalidParameterValue", message)
    }
    pub(crate) fn invalid_combination(message: impl Into<String>) -> AwsError {
        AwsError::client("InvalidParameterCombination", message)
    }
    pub(crate) fn missing(name: &str) -> AwsError {
        AwsError::client("MissingParameter", format!("The request must contain the parameter {name}"))
    }
    /// `Sender` for faults of the caller, `Receiver` for the service's own.
    pub(crate) fn fault_type(&self) -> &'static str {
        if self.status.is_server_error() { "Receiver" } else { "Sender" }
    }
}

/// The parameters of one request, decoded from the query string and the form body.
#[derive(Debug, Default)]
pub(crate) struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` text strictly: a bad percent escape or bytes
    /// that are not UTF-8 are errors rather than silently replaced characters.
    pub(crate) fn decode_into(&mut self, raw: &[u8]) -> Result<(), AwsError> {
        for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = percent_decode(name)?;
            let value = percent_decode(value)?;
            if name.is_empty() {
                return Err(malformed("a parameter has an empty name"));
            }
            if self.values.insert(name.clone(), value).is_some() {
                return Err(AwsError::invalid_value(format!("The parameter {name} was given more than once")));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Params {
        Params { values: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    /// Every parameter, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(crate) fn peek(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    pub(crate) fn require(&mut self, name: &str) -> Result<String, AwsError> {
        match self.take(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(AwsError::missing(name)),
        }
    }

    pub(crate) fn take_bool(&mut self, name: &str) -> Result<Option<bool>, AwsError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(AwsError::invalid_value(format!("Invalid boolean value for {name}: {v}"))),
        }
    }

    pub(crate) fn take_int(&mut self, name: &str) -> Result<Option<i64>, AwsError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| AwsError::invalid_value(format!("Invalid integer value for {name}: {v}"))),
        }
    }

    /// Takes an indexed list of structures, `PREFIX.N.FIELD...`, returning one map of
    /// `FIELD...` to value per index, ordered by index (which counts from 1).
    pub(crate) fn take_struct_list(&mut self, prefix: &str) -> Result<Vec<BTreeMap<String, String>>, AwsError> {
        let dotted = format!("{prefix}.");
        let names: Vec<String> = self.values.keys().filter(|k| k.starts_with(&dotted)).cloned().collect();
        let mut by_index: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
        for name in names {
            let rest = &name[dotted.len()..];
            let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
            let index: usize = index
                .parse()
                .ok()
                .filter(|i| *i >= 1 && *i <= 1000)
                .ok_or_else(|| AwsError::invalid_value(format!("Invalid list index in parameter {name}")))?;
            let value = self.values.remove(&name).unwrap_or_default();
            by_index.entry(index).or_default().insert(field.to_owned(), value);
        }
        Ok(by_index.into_values().collect())
    }

    /// Takes an indexed list of strings, `PREFIX.N`.
    pub(crate) fn take_string_list(&mut self, prefix: &str) -> Result<Vec<String>, AwsError> {
        let items = self.take_struct_list(prefix)?;
        items
            .into_iter()
            .map(|mut item| {
                item.remove("")
                    .filter(|_| item.is_empty())
                    .ok_or_else(|| AwsError::invalid_value(format!("Malformed list parameter {prefix}")))
            })
            .collect()
    }

    /// Takes `Tags.Tag.N.Key` / `Tags.Tag.N.Value`.
    pub(crate) fn take_tags(&mut self) -> Result<Vec<(String, String)>, AwsError> {
        self.take_struct_list("Tags.Tag")?
            .into_iter()
            .map(|mut tag| {
                let key = tag.remove("Key").ok_or_else(|| AwsError::missing("Tags.Tag.N.Key"))?;
                let value = tag.remove("Value").unwrap_or_default();
                match tag.keys().next() {
                    Some(other) => Err(AwsError::invalid_value(format!("Unknown tag field {other}"))),
                    None => Ok((key, value)),
                }
            })
            .collect()
    }

    /// Refuses whatever parameters the action did not read.
    pub(crate) fn finish(self) -> Result<(), AwsError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) => Err(AwsError::invalid_value(format!("Unknown parameter: {name}"))),
        }
    }
}

fn malformed(message: &str) -> AwsError {
    // AWS's common errors list MalformedQueryString as 404, oddly but documented.
    AwsError::not_found("MalformedQueryString", message)
}

fn percent_decode(raw: &[u8]) -> Result<String, AwsError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3).ok_or_else(|| malformed("truncated percent escape"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| malformed("bad percent escape"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed("bad percent escape"))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed("parameters must be UTF-8"))
}

/// The parameters SigV4 query authentication adds to a presigned request (the security token
/// only with temporary credentials).
pub(crate) const SIGV4_QUERY_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// The access key and region of a SigV4 credential scope
/// (`AKID/YYYYMMDD/REGION/SERVICE/aws4_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialScope {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl CredentialScope {
    pub(crate) fn parse(credential: &str) -> Option<CredentialScope> {
        let parts: Vec<&str> = credential.split('/').collect();
        match parts.as_slice() {
            [key, date, region, service, "aws4_request"]
                if !key.is_empty() && date.len() == 8 && snapgate_domain::is_region_name(region) =>
            {
                Some(CredentialScope {
                    access_key: (*key).to_owned(),
                    date: (*date).to_owned(),
                    region: (*region).to_owned(),
                    service: (*service).to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Reads the scope from an `Authorization: AWS4-HMAC-SHA256 Credential=…, …` header.
    pub(crate) fn from_authorization(header: &str) -> Option<CredentialScope> {
        let rest = header.strip_prefix("AWS4-HMAC-SHA256")?.trim_start();
        rest.split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix("Credential="))
            .and_then(CredentialScope::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_with_plus_and_escapes() {
        let mut p = Params::default();
        p.decode_into(b"Action=CopyDBClusterSnapshot&Tags.Tag.1.Key=a%20b&Tags.Tag.1.Value=c+d&Empty=").unwrap();
        assert_eq!(p.peek("Action"), Some("CopyDBClusterSnapshot"));
        assert_eq!(p.take_tags().unwrap(), vec![("a b".to_owned(), "c d".to_owned())]);
        assert_eq!(p.take("Empty").as_deref(), Some(""));
    }

    #[test]
    fn bad_escapes_and_invalid_utf8_are_malformed() {
        for raw in [&b"A=%zz"[..], b"A=%4", b"A=%ff%fe", b"=x"] {
            let err = Params::default().decode_into(raw).unwrap_err();
            assert_eq!(err.code, "MalformedQueryString", "{raw:?}");
        }
    }

    #[test]
    fn lists_come_back_in_index_order_and_leftovers_are_refused() {
        let mut p = Params::from_pairs([
            ("Filters.Filter.2.Name", "engine"),
            ("Filters.Filter.2.Values.Value.1", "neptune"),
            ("Filters.Filter.1.Name", "db-cluster-id"),
            ("Filters.Filter.1.Values.Value.1", "c1"),
            ("Bogus", "1"),
        ]);
        let filters = p.take_struct_list("Filters.Filter").unwrap();
        assert_eq!(filters[0]["Name"], "db-cluster-id");
        assert_eq!(filters[1]["Values.Value.1"], "neptune");
        assert_eq!(p.finish().unwrap_err().message, "Unknown parameter: Bogus");
    }

    #[test]
    fn credential_scope_names_key_and_region() {
        let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/eu-west-1/rds/aws4_request, SignedHeaders=host, Signature=abc";
        let scope = CredentialScope::from_authorization(header).unwrap();
        assert_eq!(scope.access_key, "AKIDEXAMPLE");
        assert_eq!(scope.region, "eu-west-1");
        assert_eq!(CredentialScope::from_authorization("Basic abc"), None);
    }
}
