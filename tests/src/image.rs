//! Writes an OCI image layout tarball (oci-layout, index.json, blobs/sha256/...) with one
//! uncompressed layer made from a rootfs directory, for `ctr images import` (containerd 1.6 and 2.x).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What goes into the image config.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Full reference, e.g. `localhost/ums-test/busybox:1`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl ImageSpec {
    pub fn new(name: &str, entrypoint: &[&str], cmd: &[&str]) -> ImageSpec {
        ImageSpec {
            name: name.into(),
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }
}

/// The sandbox (pause) image's process, for an image made from a busybox rootfs: a shell that
/// exits promptly on SIGTERM/SIGINT (sh as pid 1 only dies from handled signals).
pub const PAUSE_ENTRYPOINT: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 1; done",
];

/// A pause image (made from a busybox rootfs) named `name`: no registry serves one here.
pub fn pause_spec(name: &str) -> ImageSpec {
    ImageSpec::new(name, &PAUSE_ENTRYPOINT, &[])
}

/// A busybox image named `name` whose default command is `/bin/sh`.
pub fn busybox_spec(name: &str) -> ImageSpec {
    ImageSpec::new(name, &[], &["/bin/sh"])
}

pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// A tar of `rootfs` with the files' owners and fixed mtimes, entries sorted, paths relative ("bin/sh").
pub fn layer_tar(rootfs: &Path) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    fn add(b: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> io::Result<()> {
        let full = root.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&full)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel_e = rel.join(e.file_name());
            let path = e.path();
            let md = fs::symlink_metadata(&path)?;
            let mut h = tar::Header::new_gnu();
            // The files' owners (root in test rootfs; Debian's own, e.g. group shadow, in the
            // outer image).
            h.set_uid(md.uid().into());
            h.set_gid(md.gid().into());
            h.set_mtime(0);
            h.set_mode(md.permissions().mode() & 0o7777);
            let ft = md.file_type();
            if ft.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &rel_e, fs::read_link(&path)?)?;
            } else if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &rel_e, io::empty())?;
                add(b, root, &rel_e)?;
            } else if ft.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(md.size());
                b.append_data(&mut h, &rel_e, fs::File::open(&path)?)?;
            }
            // Devices, fifos and sockets are not needed in test images.
        }
        Ok(())
    }
    add(&mut b, rootfs, Path::new(""))?;
    b.into_inner()
}

/// Writes the image tarball to `out` and returns the manifest digest (`sha256:...`).
pub fn write_oci_tarball(rootfs: &Path, spec: &ImageSpec, out: &Path) -> io::Result<String> {
    let layer = layer_tar(rootfs)?;
    let layer_hex = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": spec.env,
            "Entrypoint": if spec.entrypoint.is_empty() { serde_json::Value::Null } else { json!(spec.entrypoint) },
            "Cmd": if spec.cmd.is_empty() { serde_json::Value::Null } else { json!(spec.cmd) },
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "ums-tests image writer" }],
    }))?;
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": format!("sha256:{config_hex}"), "size": config.len() },
        "layers": [{ "mediaType": MT_LAYER, "digest": format!("sha256:{layer_hex}"), "size": layer.len() }],
    }))?;
    let manifest_hex = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": spec.name,
            },
        }],
    }))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;

    let mut b = tar::Builder::new(fs::File::create(out)?);
    let mut put = |name: &str, data: &[u8]| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data)
    };
    put("oci-layout", layout)?;
    put("index.json", &index)?;
    put(&format!("blobs/sha256/{config_hex}"), &config)?;
    put(&format!("blobs/sha256/{manifest_hex}"), &manifest)?;
    put(&format!("blobs/sha256/{layer_hex}"), &layer)?;
    b.into_inner()?.flush()?;
    Ok(format!("sha256:{manifest_hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_layout() {
        let root = crate::util::scratch_path("img-root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), b"hi").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/alias")).unwrap();
        let out = crate::util::scratch_path("img.tar");
        let digest = write_oci_tarball(
            &root,
            &ImageSpec::new("localhost/x/y:1", &[], &["/bin/hello"]),
            &out,
        )
        .unwrap();
        assert!(digest.starts_with("sha256:"));
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names[0], "oci-layout");
        assert_eq!(names[1], "index.json");
        assert_eq!(names.len(), 5);
        assert!(names.contains(&format!("blobs/sha256/{}", &digest[7..])));
        let layer = layer_tar(&root).unwrap();
        let mut ar = tar::Archive::new(&layer[..]);
        let lnames: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(lnames, vec!["bin", "bin/alias", "bin/hello"]);
        fs::remove_dir_all(&root).unwrap();
        fs::remove_file(&out).unwrap();
    }
}
