//! OCI image metadata: from an image's target (index or manifest) to its config, and from the
//! config's layer diff ids to the chain id that names the unpacked rootfs snapshot (the parent
//! of a container's snapshot, as `ctr run` prepares it).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What a blob is, by its media type or, failing that, by its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    Index(Vec<Descriptor>),
    Manifest { config: Descriptor },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
}

fn descriptor(v: &Value) -> Result<Descriptor> {
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Internal("image descriptor without a digest".into()))?;
    let platform = v.get("platform");
    let field = |k: &str| {
        platform
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Descriptor {
        media_type: v
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        digest: digest.to_string(),
        os: field("os"),
        architecture: field("architecture"),
        variant: field("variant"),
    })
}

/// Parses an index or a manifest.
pub fn parse_blob(media_type: &str, data: &[u8]) -> Result<Blob> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| Error::Internal(format!("image metadata is not JSON: {e}")))?;
    let is_index = INDEX_TYPES.contains(&media_type)
        || v.get("mediaType")
            .and_then(Value::as_str)
            .map(|m| INDEX_TYPES.contains(&m))
            .unwrap_or(false)
        || (v.get("manifests").is_some() && v.get("config").is_none());
    if is_index {
        let ms = v
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Internal("image index without manifests".into()))?;
        Ok(Blob::Index(
            ms.iter().map(descriptor).collect::<Result<Vec<_>>>()?,
        ))
    } else {
        let config = v
            .get("config")
            .ok_or_else(|| Error::Internal("image manifest without a config".into()))?;
        Ok(Blob::Manifest {
            config: descriptor(config)?,
        })
    }
}

/// This machine's architecture in OCI terms.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The manifest of an index for linux/`arch`; a lone manifest without platform also fits.
pub fn select_manifest<'a>(manifests: &'a [Descriptor], arch: &str) -> Option<&'a Descriptor> {
    manifests
        .iter()
        .find(|d| {
            d.os.as_deref().unwrap_or("linux") == "linux" && d.architecture.as_deref() == Some(arch)
        })
        .or_else(|| match manifests {
            [only] if only.architecture.is_none() => Some(only),
            _ => None,
        })
}

/// The layer diff ids of an image config (`rootfs.diff_ids`).
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let v: Value = serde_json::from_slice(config)
        .map_err(|e| Error::Internal(format!("image config is not JSON: {e}")))?;
    let ids = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Internal("image config without rootfs.diff_ids".into()))?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Internal("image config: a diff id is not a string".into()))
        })
        .collect()
}

/// The OCI chain id of a layer stack: `chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let mut h = Sha256::new();
        h.update(chain.as_bytes());
        h.update(b" ");
        h.update(d.as_bytes());
        chain = format!("sha256:{}", hex(&h.finalize()));
    }
    Some(chain)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids() {
        assert_eq!(chain_id(&[]), None);
        let one = vec!["sha256:aaa".to_string()];
        assert_eq!(chain_id(&one).as_deref(), Some("sha256:aaa"));
        // Known value: containerd's identity.ChainID over two diff ids.
        let two = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let mut h = Sha256::new();
        h.update(b"sha256:a sha256:b");
        assert_eq!(
            chain_id(&two).unwrap(),
            format!("sha256:{}", hex(&h.finalize()))
        );
    }

    #[test]
    fn chain_id_reference_vector() {
        // Two diff ids; the expected value computed independently with
        // `echo -n "<d0> <d1>" | sha256sum`.
        let ids = vec![
            "sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1".to_string(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef".to_string(),
        ];
        assert_eq!(
            chain_id(&ids).unwrap(),
            "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
        );
    }

    #[test]
    fn parses_index_and_manifest() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,
               "platform":{"os":"linux","architecture":"arm64"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,
               "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Blob::Index(ms) = parse_blob("", index).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_manifest(&ms, "amd64").unwrap().digest, "sha256:amd");
        assert_eq!(select_manifest(&ms, "arm64").unwrap().digest, "sha256:arm");
        assert!(select_manifest(&ms, "s390x").is_none());

        let lone = br#"{"manifests":[{"digest":"sha256:only","size":1}]}"#;
        let Blob::Index(ms) = parse_blob("application/vnd.oci.image.index.v1+json", lone).unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(select_manifest(&ms, "amd64").unwrap().digest, "sha256:only");

        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",
            "digest":"sha256:cfg","size":2},"layers":[]}"#;
        assert_eq!(
            parse_blob("application/vnd.oci.image.manifest.v1+json", manifest).unwrap(),
            Blob::Manifest {
                config: Descriptor {
                    media_type: "application/vnd.oci.image.config.v1+json".into(),
                    digest: "sha256:cfg".into(),
                    os: None,
                    architecture: None,
                    variant: None
                }
            }
        );
        assert!(parse_blob("", b"not json").is_err());
        assert!(parse_blob("", b"{}").is_err());
    }

    #[test]
    fn config_diff_ids() {
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:1","sha256:2"]}}"#;
        assert_eq!(diff_ids(cfg).unwrap(), vec!["sha256:1", "sha256:2"]);
        assert!(diff_ids(b"{}").is_err());
        assert!(diff_ids(br#"{"rootfs":{"diff_ids":[1]}}"#).is_err());
    }
}
