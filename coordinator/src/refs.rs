//! Container references (`namespace/name`) and peer URLs.

use std::fmt;

use crate::error::{Error, Result};

/// containerd's identifier limit (namespaces, container ids).
const MAX_IDENTIFIER: usize = 76;

/// `ns/name`: a containerd namespace and a container id in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerRef {
    pub namespace: String,
    pub id: String,
}

impl ContainerRef {
    pub fn parse(s: &str) -> Result<ContainerRef> {
        let (ns, id) = s.split_once('/').ok_or_else(|| {
            Error::BadRequest(format!(
                "container reference {s:?} must be NAMESPACE/NAME (e.g. default/web1)"
            ))
        })?;
        validate_identifier("namespace", ns, s)?;
        validate_identifier("container name", id, s)?;
        Ok(ContainerRef {
            namespace: ns.to_string(),
            id: id.to_string(),
        })
    }
}

/// containerd's identifier rules: alphanumerics separated by `.`, `_` or `-`, at most 76 chars.
/// (Stricter than containerd for ids, which also allows a few more separators; enough for the
/// refs we move and safe in file names and HTTP paths.)
fn validate_identifier(what: &str, v: &str, whole: &str) -> Result<()> {
    let bad =
        |why: &str| Error::BadRequest(format!("container reference {whole:?}: {what} {v:?} {why}"));
    if v.is_empty() {
        return Err(bad("is empty"));
    }
    if v.len() > MAX_IDENTIFIER {
        return Err(bad("is longer than 76 characters"));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad("may only contain letters, digits, '.', '_' and '-'"));
    }
    if !v.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !v.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(())
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

impl TryFrom<String> for ContainerRef {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        ContainerRef::parse(&s)
    }
}

impl From<ContainerRef> for String {
    fn from(r: ContainerRef) -> String {
        r.to_string()
    }
}

/// A coordinator's base URL: `http://host:port` or `https://host:port` (no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    /// `scheme://host:port`, without a trailing slash.
    base: String,
    host: String,
    port: u16,
}

impl PeerUrl {
    pub fn parse(s: &str) -> Result<PeerUrl> {
        let s = s.trim();
        let uri: hyper::Uri = s
            .parse()
            .map_err(|e| Error::BadRequest(format!("coordinator URL {s:?}: {e}")))?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some("http") => ("http", 80),
            Some("https") => ("https", 443),
            _ => {
                return Err(Error::BadRequest(format!(
                    "coordinator URL {s:?} must look like http://HOST:PORT or https://HOST:PORT"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::BadRequest(format!("coordinator URL {s:?} has no host")))?;
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err(Error::BadRequest(format!(
                "coordinator URL {s:?} must not have a path or query"
            )));
        }
        let port = uri.port_u16().unwrap_or(default_port);
        // Keep IPv6 literals bracketed in the base URL.
        let host_in_url = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(PeerUrl {
            base: format!("{scheme}://{host_in_url}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The host part, without brackets for IPv6.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_refs() {
        let r = ContainerRef::parse("default/web1").unwrap();
        assert_eq!(r.namespace, "default");
        assert_eq!(r.id, "web1");
        assert_eq!(r.to_string(), "default/web1");
        for bad in [
            "",
            "web1",
            "/web1",
            "default/",
            "a/b/c",
            "de fault/x",
            "ns/../x",
            "ns/-x",
            "ns/x.",
        ] {
            assert!(
                matches!(ContainerRef::parse(bad), Err(Error::BadRequest(_))),
                "{bad:?} accepted"
            );
        }
        let long = format!("ns/{}", "a".repeat(77));
        assert!(ContainerRef::parse(&long).is_err());
        assert!(ContainerRef::parse("k8s.io/web_1-a.b").is_ok());
    }

    #[test]
    fn ref_serde() {
        let r: ContainerRef = serde_json::from_str("\"default/web1\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"default/web1\"");
        assert!(serde_json::from_str::<ContainerRef>("\"web1\"").is_err());
    }

    #[test]
    fn parses_urls() {
        let u = PeerUrl::parse("http://10.77.0.2:7400").unwrap();
        assert_eq!(u.base(), "http://10.77.0.2:7400");
        assert_eq!(u.host(), "10.77.0.2");
        assert_eq!(u.port(), 7400);
        assert_eq!(u.join("/healthz"), "http://10.77.0.2:7400/healthz");
        assert_eq!(
            PeerUrl::parse("http://10.77.0.2:7400/").unwrap().base(),
            "http://10.77.0.2:7400"
        );
        assert_eq!(
            PeerUrl::parse("http://[::1]:7400").unwrap().base(),
            "http://[::1]:7400"
        );
        assert_eq!(PeerUrl::parse("http://[::1]:7400").unwrap().host(), "::1");
        let u = PeerUrl::parse("https://10.77.0.2:7400").unwrap();
        assert_eq!(u.join("/healthz"), "https://10.77.0.2:7400/healthz");
        assert_eq!(PeerUrl::parse("https://b").unwrap().port(), 443);
        for bad in ["", "10.77.0.2:7400", "http://10.77.0.2:7400/v1", "ftp://x"] {
            assert!(PeerUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
