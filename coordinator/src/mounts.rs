//! Bind mounts whose source exists on one system only.
//!
//! A CRI container binds files that containerd's CRI plugin made for its pod under its own root
//! and state dirs: `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` and the pod's `/dev/shm`
//! (`.../io.containerd.grpc.v1.cri/sandboxes/<pod>/...`). The destination has no such pod, and
//! runc maps every bind mount of the spec for CRIU when it restores (a missing source fails the
//! restore; a mount left out of the spec leaves CRIU without a mapping for it). So the source
//! sends them ([`collect`]: a file with its content, a directory empty) and the destination
//! makes them in its state dir, `<state>/mounts/<ns>/<id>/<migration>/` ([`plan`],
//! [`materialize`]), and points the mounts there. The files belong to the container from then
//! on: they go when it migrates on ([`remove_container`]) or, at the coordinator's start, once
//! it no longer exists.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::api::{LocalMount, LocalMountKind};
use crate::error::{Error, Result};
use crate::image::hex;
use crate::refs::ContainerRef;
use crate::spec::system_local_mounts;

/// The largest file carried over.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// At most this many local mounts per container.
const MAX_MOUNTS: usize = 32;

/// `<state dir>/mounts`: the mount sources this coordinator makes.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("mounts")
}

/// `<state dir>/mounts/<ns>/<id>`: those of one container.
pub fn container_dir(state_dir: &Path, r: &ContainerRef) -> PathBuf {
    root(state_dir).join(&r.namespace).join(&r.id)
}

/// `<state dir>/mounts/<ns>/<id>/<migration>`: those of one incoming migration.
pub fn migration_dir(state_dir: &Path, r: &ContainerRef, migration_id: &str) -> PathBuf {
    container_dir(state_dir, r).join(migration_id)
}

/// Source side: the bind mounts of `spec` that only exist on this system (see
/// [`system_local_mounts`]), read for the destination. Also returns notes on what is not
/// carried over (the content of a directory).
pub async fn collect(spec: &Value, state_dir: &Path) -> Result<(Vec<LocalMount>, Vec<String>)> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (destination, source) in system_local_mounts(spec, &root(state_dir)) {
        let meta = tokio::fs::metadata(&source).await.map_err(|e| {
            Error::io(
                format!("the source of the mount {destination}: {source}"),
                e,
            )
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_file() {
            if meta.len() > MAX_FILE_BYTES {
                return Err(Error::Unsupported(format!(
                    "the mount {destination} ({source}) is a file of {} bytes: at most \
                     {MAX_FILE_BYTES} are carried over",
                    meta.len()
                )));
            }
            let content = tokio::fs::read(&source)
                .await
                .map_err(|e| Error::io(format!("reading {source}"), e))?;
            out.push(LocalMount {
                destination,
                kind: LocalMountKind::File,
                mode,
                content_hex: hex(&content),
            });
        } else if meta.is_dir() {
            let mut entries = tokio::fs::read_dir(&source)
                .await
                .map_err(|e| Error::io(format!("reading {source}"), e))?;
            let mut n = 0usize;
            while entries
                .next_entry()
                .await
                .map_err(|e| Error::io(format!("reading {source}"), e))?
                .is_some()
            {
                n += 1;
            }
            if n > 0 {
                notes.push(format!(
                    "the {n} entries of {destination} ({source}) are not carried over: it \
                     starts empty at the destination"
                ));
            }
            out.push(LocalMount {
                destination,
                kind: LocalMountKind::Dir,
                mode,
                content_hex: String::new(),
            });
        } else {
            return Err(Error::Unsupported(format!(
                "the mount {destination} ({source}) is neither a file nor a directory"
            )));
        }
    }
    Ok((out, notes))
}

/// Destination side: where the local mounts go in `dir`, by destination (checked: absolute
/// destinations without `..`, each once, at most a few).
pub fn plan(dir: &Path, mounts: &[LocalMount]) -> Result<HashMap<String, String>> {
    if mounts.len() > MAX_MOUNTS {
        return Err(Error::BadRequest(format!(
            "{} local mounts: at most {MAX_MOUNTS}",
            mounts.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = HashMap::new();
    for (i, m) in mounts.iter().enumerate() {
        let d = Path::new(&m.destination);
        let ok = d.is_absolute()
            && d.components().all(|c| !matches!(c, Component::ParentDir))
            && seen.insert(m.destination.clone());
        if !ok {
            return Err(Error::BadRequest(format!(
                "local mount destination {:?} must be an absolute path without `..`, given once",
                m.destination
            )));
        }
        let base: String = d
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("root")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{i}-{base}"));
        out.insert(m.destination.clone(), path.to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Destination side: makes the files and directories [`plan`] named.
pub async fn materialize(dir: &Path, mounts: &[LocalMount]) -> Result<()> {
    let planned = plan(dir, mounts)?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    for m in mounts {
        let path = &planned[&m.destination];
        match m.kind {
            LocalMountKind::File => {
                let content = m.content()?;
                if content.len() as u64 > MAX_FILE_BYTES {
                    return Err(Error::BadRequest(format!(
                        "local mount {}: more than {MAX_FILE_BYTES} bytes",
                        m.destination
                    )));
                }
                tokio::fs::write(path, content)
                    .await
                    .map_err(|e| Error::io(format!("writing {path}"), e))?;
            }
            LocalMountKind::Dir => tokio::fs::create_dir_all(path)
                .await
                .map_err(|e| Error::io(format!("creating {path}"), e))?,
        }
        let mode = if m.mode == 0 {
            match m.kind {
                LocalMountKind::File => 0o644,
                LocalMountKind::Dir => 0o755,
            }
        } else {
            m.mode & 0o7777
        };
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|e| Error::io(format!("chmod {path}"), e))?;
    }
    Ok(())
}

/// The content of the pod's `/etc/hostname` among the local mounts.
pub fn hostname(mounts: &[LocalMount]) -> Option<String> {
    let m = mounts
        .iter()
        .find(|m| m.destination == "/etc/hostname" && m.kind == LocalMountKind::File)?;
    String::from_utf8(m.content().ok()?)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Removes a directory of mount sources; an absent one is fine. Then the container's dir if
/// that left it empty.
pub async fn remove(dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
    }
    if let Some(parent) = dir.parent() {
        let _ = tokio::fs::remove_dir(parent).await;
    }
    Ok(())
}

/// Removes all the mount sources of a container that is gone from this system.
pub async fn remove_container(state_dir: &Path, r: &ContainerRef) -> Result<()> {
    remove(&container_dir(state_dir, r)).await
}

/// The containers (`<ns>/<id>`) that have mount sources here.
pub fn containers_with_mounts(state_dir: &Path) -> Vec<ContainerRef> {
    let mut out = Vec::new();
    let Ok(nss) = std::fs::read_dir(root(state_dir)) else {
        return out;
    };
    for ns in nss.flatten() {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let r = format!(
                "{}/{}",
                ns.file_name().to_string_lossy(),
                id.file_name().to_string_lossy()
            );
            if let Ok(r) = ContainerRef::parse(&r) {
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ums-mounts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn collect_plan_materialize() {
        let a = tmp("a");
        let sandbox = a.join("root/io.containerd.grpc.v1.cri/sandboxes/abc");
        let shm = a.join("state/io.containerd.grpc.v1.cri/sandboxes/abc/shm");
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::create_dir_all(&shm).unwrap();
        std::fs::write(sandbox.join("hostname"), "pod1\n").unwrap();
        std::fs::write(sandbox.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(shm.join("seg"), "x").unwrap();
        let other = a.join("data");
        std::fs::create_dir_all(&other).unwrap();
        let bind = |d: &str, s: &Path| json!({"destination": d, "type": "bind", "source": s, "options": ["rbind", "rw"]});
        let spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            bind("/etc/hostname", &sandbox.join("hostname")),
            bind("/etc/hosts", &sandbox.join("hosts")),
            bind("/dev/shm", &shm),
            bind("/data", &other),
        ]});
        let state = a.join("coordinator");
        let (mounts, notes) = collect(&spec, &state).await.unwrap();
        let dests: Vec<&str> = mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, ["/etc/hostname", "/etc/hosts", "/dev/shm"]);
        assert_eq!(mounts[2].kind, LocalMountKind::Dir);
        assert_eq!(mounts[2].mode, 0o1777);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("/dev/shm"), "{notes:?}");
        assert_eq!(hostname(&mounts).as_deref(), Some("pod1"));

        let b = tmp("b");
        let r = ContainerRef::parse("k8s.io/c1").unwrap();
        let dir = migration_dir(&b, &r, "m-1");
        let planned = plan(&dir, &mounts).unwrap();
        assert_eq!(planned["/etc/hosts"], dir.join("1-hosts").to_string_lossy());
        materialize(&dir, &mounts).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&planned["/etc/hosts"]).unwrap(),
            "127.0.0.1 localhost\n"
        );
        let shm_b = std::fs::metadata(&planned["/dev/shm"]).unwrap();
        assert!(shm_b.is_dir());
        assert_eq!(shm_b.permissions().mode() & 0o7777, 0o1777);
        assert_eq!(containers_with_mounts(&b), vec![r.clone()]);

        // Migrating on from here: the files this coordinator made are local too.
        let mut spec_b = spec.clone();
        crate::spec::remap_mount_sources(&mut spec_b, &planned);
        let (again, _) = collect(&spec_b, &b).await.unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(again[1].content_hex, mounts[1].content_hex);

        remove_container(&b, &r).await.unwrap();
        assert!(!container_dir(&b, &r).exists());
        assert!(containers_with_mounts(&b).is_empty());
        remove(&dir).await.unwrap();
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn plan_refuses_bad_destinations() {
        let m = |d: &str| LocalMount {
            destination: d.into(),
            kind: LocalMountKind::File,
            mode: 0o644,
            content_hex: String::new(),
        };
        let dir = Path::new("/x");
        assert!(plan(dir, &[m("etc/hosts")]).is_err());
        assert!(plan(dir, &[m("/etc/../../hosts")]).is_err());
        assert!(plan(dir, &[m("/etc/hosts"), m("/etc/hosts")]).is_err());
        let p = plan(dir, &[m("/etc/a b"), m("/")]).unwrap();
        assert_eq!(p["/etc/a b"], "/x/0-a_b");
        assert_eq!(p["/"], "/x/1-root");
    }
}
