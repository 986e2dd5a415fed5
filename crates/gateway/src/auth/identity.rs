//! The identity in a client certificate (already verified against the client CAs by rustls):
//! its SPIFFE id when it has a URI SAN (exactly one, as the X509-SVID spec requires), else its
//! first DNS SAN, else its subject CN.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The caller id of a DER certificate, or why it has none.
pub(crate) fn from_certificate(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "the certificate cannot be parsed".to_string())?;
    let san =
        cert.subject_alternative_name().map_err(|_| "the certificate has a malformed SAN extension".to_string())?;
    let names = san.map(|ext| ext.value.general_names.as_slice()).unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] if uri.starts_with("spiffe://") => return Ok((*uri).to_owned()),
        [uri] => return Err(format!("its URI SAN '{}' is not a SPIFFE id", printable(uri))),
        [] => {}
        many => return Err(format!("it has {} URI SANs; an X509-SVID has exactly one", many.len())),
    }
    if let Some(dns) = names.iter().find_map(|n| match n {
        GeneralName::DNSName(dns) => Some(*dns),
        _ => None,
    }) {
        return Ok(dns.to_owned());
    }
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
        && !cn.is_empty()
    {
        return Ok(cn.to_owned());
    }
    Err("it names no SPIFFE id, DNS name or common name".into())
}

/// A bounded, control-character-free rendering for messages.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    #[test]
    fn the_spiffe_id_wins_over_dns_and_cn() {
        let der = cert(
            vec![SanType::DnsName("svc.local".try_into().unwrap()), uri("spiffe://corp/ns/backup/sa/svc")],
            Some("cn"),
        );
        assert_eq!(from_certificate(&der).unwrap(), "spiffe://corp/ns/backup/sa/svc");
    }

    #[test]
    fn dns_then_common_name_when_there_is_no_uri() {
        assert_eq!(
            from_certificate(&cert(vec![SanType::DnsName("a.svc".try_into().unwrap())], Some("x"))).unwrap(),
            "a.svc"
        );
        assert_eq!(from_certificate(&cert(vec![], Some("batch-job"))).unwrap(), "batch-job");
    }

    #[test]
    fn ambiguous_or_empty_certificates_name_nobody() {
        let two = cert(vec![uri("spiffe://a/x"), uri("spiffe://a/y")], None);
        assert!(from_certificate(&two).unwrap_err().contains("exactly one"));
        assert!(from_certificate(&cert(vec![uri("https://example.com/x")], None)).unwrap_err().contains("SPIFFE"));
        assert!(from_certificate(&cert(vec![], None)).is_err());
        assert!(from_certificate(b"not a certificate").is_err());
    }
}
