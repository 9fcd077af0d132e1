//! install_files / remove_files on a host root in a temporary directory: the files land in
//! /opt/ums/bin, the shim and criu are linked onto the host's PATH, a foreign criu is left alone,
//! and the uninstall takes away exactly what the install made.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use ums_node_installer::node::{install_files, remove_files, HostRoot, INSTALL_DIR};
use ums_node_installer::Error;

fn sources(dir: &Path) -> Vec<PathBuf> {
    ["containerd-shim-ums-v1", "criu", "criu-sync", "ums"]
        .iter()
        .map(|n| {
            let p = dir.join(n);
            fs::write(&p, format!("#!/bin/sh\necho {n}\n")).unwrap();
            p
        })
        .collect()
}

#[test]
fn install_copies_links_and_uninstall_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("image");
    fs::create_dir(&src).unwrap();
    let host = tmp.path().join("host");
    let root = HostRoot::new(&host);
    let files = sources(&src);

    for _ in 0..2 {
        let r = install_files(&root, &files).unwrap();
        assert_eq!(r.installed.len(), 4);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(
            r.linked,
            [
                PathBuf::from("/usr/local/bin/containerd-shim-ums-v1"),
                PathBuf::from("/usr/local/sbin/criu")
            ]
        );
    }
    let shim = host.join("opt/ums/bin/containerd-shim-ums-v1");
    assert_eq!(
        fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(host.join("usr/local/bin/containerd-shim-ums-v1")).unwrap(),
        Path::new(INSTALL_DIR).join("containerd-shim-ums-v1")
    );
    // Leaves no temporary file behind.
    let names: Vec<_> = fs::read_dir(host.join("opt/ums/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");

    let removed = remove_files(&root).unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(!host.join("opt/ums").exists());
    assert!(fs::symlink_metadata(host.join("usr/local/bin/containerd-shim-ums-v1")).is_err());
    assert!(
        host.join("usr/local/sbin").is_dir(),
        "the host's directories stay"
    );
}

#[test]
fn a_criu_of_the_host_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("image");
    fs::create_dir(&src).unwrap();
    let host = tmp.path().join("host");
    fs::create_dir_all(host.join("usr/local/sbin")).unwrap();
    fs::write(host.join("usr/local/sbin/criu"), "host's own").unwrap();
    fs::create_dir_all(host.join("usr/local/bin")).unwrap();
    symlink(
        "/usr/bin/elsewhere",
        host.join("usr/local/bin/containerd-shim-ums-v1"),
    )
    .unwrap();
    let root = HostRoot::new(&host);

    let r = install_files(&root, &sources(&src)).unwrap();
    assert!(r.linked.is_empty(), "{:?}", r.linked);
    assert_eq!(r.skipped.len(), 2);
    assert!(r.skipped.iter().all(|e| matches!(e, Error::Foreign { .. })));
    remove_files(&root).unwrap();
    assert_eq!(
        fs::read_to_string(host.join("usr/local/sbin/criu")).unwrap(),
        "host's own"
    );
    assert!(fs::symlink_metadata(host.join("usr/local/bin/containerd-shim-ums-v1")).is_ok());
}
