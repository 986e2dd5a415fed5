//! The gateway's address, in the forms people type: `HOST:PORT` as grpcurl takes it (plain
//! HTTP/2, or TLS when a CA or a client certificate is given), or an `http://` or `https://`
//! URL. Anything else is refused with the forms accepted, never taken for an address that
//! merely does not answer.

use std::fmt;
use std::str::FromStr;

/// The forms an address may take, for error messages and help.
pub const ADDRESS_FORMS: &str =
    "HOST:PORT (TLS when a CA or client certificate is given), http://HOST:PORT, or https://HOST:PORT";

/// A parsed gateway address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddr {
    scheme: Scheme,
    /// `host:port`, or `host` for a URL that leaves the port to its scheme.
    authority: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    /// `HOST:PORT`: TLS when the connection has TLS settings.
    Bare,
}

/// Why a string is not a gateway address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a gateway address ({why}); use {ADDRESS_FORMS}")]
pub struct AddrError {
    input: String,
    why: &'static str,
}

impl GatewayAddr {
    /// The URI tonic connects to: `https` when the address says so, or when it is `HOST:PORT`
    /// and `tls_settings` (a CA or a client certificate) were given.
    pub fn uri(&self, tls_settings: bool) -> String {
        format!("{}://{}", if self.is_tls(tls_settings) { "https" } else { "http" }, self.authority)
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self, tls_settings: bool) -> bool {
        match self.scheme {
            Scheme::Https => true,
            Scheme::Http => false,
            Scheme::Bare => tls_settings,
        }
    }
}

impl fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Http => write!(f, "http://{}", self.authority),
            Scheme::Https => write!(f, "https://{}", self.authority),
            Scheme::Bare => f.write_str(&self.authority),
        }
    }
}

impl FromStr for GatewayAddr {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<GatewayAddr, AddrError> {
        let error = |why| AddrError { input: input.to_owned(), why };
        let trimmed = input.trim();
        let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = trimmed.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if trimmed.contains("://") {
            return Err(error("the scheme must be http or https"));
        } else {
            (Scheme::Bare, trimmed)
        };
        // A URL may end in one slash; a path, query or user name is no gateway's.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(error("no host"));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
            return Err(error("only a host and a port, with no path"));
        }
        let (host, port) = split_host_port(authority).map_err(error)?;
        if port.is_none() && scheme == Scheme::Bare {
            return Err(error("no port"));
        }
        Ok(GatewayAddr { scheme, authority: format!("{host}{}", port.map(|p| format!(":{p}")).unwrap_or_default()) })
    }
}

/// The host (a name, an IPv4 address or a bracketed IPv6 address) and the port, if any.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let end = inner.find(']').ok_or("an IPv6 address needs its closing ']'")?;
        inner[..end].parse::<std::net::Ipv6Addr>().map_err(|_| "not an IPv6 address")?;
        let after = &inner[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err("only a port may follow an IPv6 address"),
        };
        (&authority[..end + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => return Err("an IPv6 address goes in brackets: [::1]:PORT"),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let label = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if !host.starts_with('[') && !host.chars().all(label) {
        return Err("the host has characters no host name has");
    }
    let port = match port {
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
            Ok(port) => Some(port),
        },
        None => None,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<GatewayAddr, AddrError> {
        s.parse()
    }

    #[test]
    fn host_and_port_are_plain_unless_tls_settings_are_given() {
        let addr = parse("127.0.0.1:50051").unwrap();
        assert_eq!(addr.uri(false), "http://127.0.0.1:50051");
        assert_eq!(addr.uri(true), "https://127.0.0.1:50051");
        assert_eq!(parse("gateway.internal:443").unwrap().uri(true), "https://gateway.internal:443");
        assert_eq!(parse("[::1]:8443").unwrap().uri(false), "http://[::1]:8443");
        assert_eq!(parse("localhost:50051").unwrap().to_string(), "localhost:50051");
    }

    #[test]
    fn urls_say_their_own_scheme() {
        assert_eq!(parse("http://127.0.0.1:50051").unwrap().uri(true), "http://127.0.0.1:50051");
        assert_eq!(parse("https://snapgate.svc:8443/").unwrap().uri(false), "https://snapgate.svc:8443");
        assert_eq!(parse("https://snapgate.svc").unwrap().uri(false), "https://snapgate.svc");
        assert_eq!(parse(" http://[::1]:1 ").unwrap().to_string(), "http://[::1]:1");
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_accepted() {
        for bad in [
            "",
            "127.0.0.1",
            "localhost",
            ":50051",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:port",
            "grpc://127.0.0.1:50051",
            "http://",
            "http://127.0.0.1:50051/snapgate",
            "http://user@127.0.0.1:50051",
            "::1:50051",
            "[::1:50051",
            "[nope]:1",
            "gate way:50051",
            "http://127.0.0.1:50051?x=1",
        ] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains("HOST:PORT") && error.contains("https://HOST:PORT"), "{bad}: {error}");
        }
    }
}
