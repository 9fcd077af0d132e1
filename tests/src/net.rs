//! A unique CNI bridge name and subnet per instance, leased through lock files so that parallel
//! instances never share a bridge or an address range.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::containerd::base_dir;

pub struct NetLease {
    pub index: u32,
    pub network: String,
    pub bridge: String,
    pub subnet: String,
    lease_file: PathBuf,
}

fn lease_dir() -> PathBuf {
    base_dir().join(".net")
}

/// The bridge name for lease `index` (at most 15 characters).
pub fn bridge_name(index: u32) -> String {
    format!("umsbr{index}")
}

impl NetLease {
    /// Takes the first free index in 1..=250; a lease whose instance dir no longer exists is stale
    /// and taken over (its bridge deleted first).
    pub fn acquire(instance_dir: &Path) -> std::io::Result<NetLease> {
        let dir = lease_dir();
        fs::create_dir_all(&dir)?;
        for index in 1..=250u32 {
            let lease_file = dir.join(index.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lease_file)
            {
                Ok(mut f) => {
                    f.write_all(instance_dir.to_string_lossy().as_bytes())?;
                    let bridge = bridge_name(index);
                    delete_link(&bridge);
                    return Ok(NetLease {
                        index,
                        network: format!("ums-test-{index}"),
                        bridge,
                        subnet: format!("10.213.{index}.0/24"),
                        lease_file,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&lease_file).unwrap_or_default();
                    if owner.is_empty() || !Path::new(&owner).exists() {
                        // Stale: its instance is gone. Free it and let the next round take it.
                        delete_link(&bridge_name(index));
                        let _ = fs::remove_file(&lease_file);
                        if let Ok(mut f) = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&lease_file)
                        {
                            f.write_all(instance_dir.to_string_lossy().as_bytes())?;
                            return Ok(NetLease {
                                index,
                                network: format!("ums-test-{index}"),
                                bridge: bridge_name(index),
                                subnet: format!("10.213.{index}.0/24"),
                                lease_file,
                            });
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("all 250 test subnets are leased"))
    }

    /// Deletes the bridge and frees the lease.
    pub fn release(self) {
        delete_link(&self.bridge);
        let _ = fs::remove_file(&self.lease_file);
    }
}

/// Releases the lease (and bridge) held by an instance dir, if any: for sweeping stale instances.
pub fn release_for_dir(instance_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let want = instance_dir.to_string_lossy();
    if let Ok(rd) = fs::read_dir(lease_dir()) {
        for e in rd.flatten() {
            if fs::read_to_string(e.path())
                .map(|o| o == want)
                .unwrap_or(false)
            {
                if let Some(index) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                    if delete_link(&bridge_name(index)) {
                        done.push(format!("deleted bridge {}", bridge_name(index)));
                    }
                }
                let _ = fs::remove_file(e.path());
            }
        }
    }
    done
}

/// `ip link del NAME` when the link exists; true if it existed.
pub fn delete_link(name: &str) -> bool {
    if !Path::new("/sys/class/net").join(name).exists() {
        return false;
    }
    let _ = Command::new("ip").args(["link", "del", name]).output();
    true
}
