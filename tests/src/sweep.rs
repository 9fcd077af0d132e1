//! Forceful teardown of an instance dir: kills every process that belongs to it (containerd,
//! shims, container processes), unmounts, removes cgroups, runc state, shim sockets, the CNI
//! bridge, and the dir. Used on drop, for stale dirs of crashed runs, and by `ums-test-sweep`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procfs;

#[derive(Default)]
pub struct SweepReport {
    pub actions: Vec<String>,
    pub problems: Vec<String>,
}

impl SweepReport {
    /// Nothing had to be killed, unmounted or removed besides the dir itself.
    pub fn is_clean(&self) -> bool {
        self.actions.is_empty() && self.problems.is_empty()
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "nothing left");
        }
        write!(f, "{}", self.actions.join("; "))?;
        if !self.problems.is_empty() {
            write!(f, "; PROBLEMS: {}", self.problems.join("; "))?;
        }
        Ok(())
    }
}

/// Processes that belong to the instance: containerd with its config, shims with `-address <sock>`,
/// anything in the instance's cgroup tree (`/<ns>`), rooted or referencing paths in the dir.
pub fn instance_pids(dir: &Path, ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let ancestors = ancestors(me);
    let d = dir.to_string_lossy().to_string();
    let sock = dir.join("c.sock").to_string_lossy().to_string();
    let cg = format!("/{ns}");
    procfs::all_pids()
        .into_iter()
        .filter(|p| *p != me && !ancestors.contains(p))
        .filter(|&p| {
            let args = procfs::cmdline(p);
            if args
                .iter()
                .any(|a| a == &sock || a.starts_with(&format!("{d}/")))
            {
                return true;
            }
            if procfs::cgroups(p)
                .iter()
                .any(|c| c.path == cg || procfs::cgroup_is_under(&c.path, &cg))
            {
                return true;
            }
            matches!(procfs::root_of(p), Some(r) if r.starts_with(dir))
        })
        .collect()
}

/// The ancestors of `pid`, its parent first.
pub fn ancestors(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    let mut p = pid;
    while let Some((_, pp, _)) = procfs::stat(p) {
        if pp <= 0 || v.contains(&pp) {
            break;
        }
        v.push(pp);
        p = pp;
    }
    v
}

/// The instance's cgroup dirs `<mount>/<ns>` in every hierarchy.
pub fn instance_cgroup_dirs(ns: &str) -> Vec<PathBuf> {
    procfs::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(ns))
        .filter(|p| p.is_dir())
        .collect()
}

/// Shim socket paths recorded in bundle `address` files under the instance's state dir.
pub fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let tasks = dir.join("state/io.containerd.runtime.v2.task");
    if let Ok(nss) = fs::read_dir(&tasks) {
        for ns in nss.flatten() {
            if let Ok(ids) = fs::read_dir(ns.path()) {
                for id in ids.flatten() {
                    if let Ok(a) = fs::read_to_string(id.path().join("address")) {
                        if let Some(p) = socket_path_of(&a) {
                            out.push(p);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `unix:///run/containerd/s/abc` -> `/run/containerd/s/abc` (abstract sockets have no path).
pub fn socket_path_of(address: &str) -> Option<PathBuf> {
    let a = address.trim();
    let a = a.strip_prefix("unix://").unwrap_or(a);
    if a.starts_with('/') {
        Some(PathBuf::from(a))
    } else {
        None
    }
}

/// Thaws the cgroup tree `rel` (e.g. `ums-x` or `default/web`) in every hierarchy: SIGKILL waits
/// for a frozen task.
pub fn thaw_tree(rel: &str) {
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        return;
    }
    for m in procfs::cgroup_mounts() {
        let root = m.join(rel);
        if !root.is_dir() {
            continue;
        }
        let mut dirs = procfs::subdirs_deepest_first(&root);
        dirs.push(root);
        for d in dirs {
            let f = d.join("freezer.state");
            if fs::read_to_string(&f)
                .map(|s| s.trim() != "THAWED")
                .unwrap_or(false)
            {
                let _ = fs::write(&f, "THAWED");
            }
            let f2 = d.join("cgroup.freeze");
            if fs::read_to_string(&f2)
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
            {
                let _ = fs::write(&f2, "0");
            }
        }
    }
}

/// SIGKILLs whatever `pids()` lists until it lists nothing (15 s at most), calling `thaw()`
/// before each round. Records what it killed, or the survivors as a problem.
pub fn kill_until_gone(
    r: &mut SweepReport,
    mut thaw: impl FnMut(),
    mut pids: impl FnMut() -> Vec<i32>,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut killed: Vec<(i32, String)> = Vec::new();
    loop {
        thaw();
        let pids = pids();
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            if !killed.iter().any(|(k, _)| k == p) {
                killed.push((*p, format!("{p} ({})", procfs::cmdline_str(*p))));
            }
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        if Instant::now() > deadline {
            r.problems
                .push(format!("processes survive SIGKILL: {pids:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !killed.is_empty() {
        let descs: Vec<String> = killed.into_iter().map(|(_, d)| d).collect();
        r.actions.push(format!("killed {}", descs.join(", ")));
    }
}

/// Unmounts (lazily) every mount at or below `dir` in our mount namespace, deepest first.
pub fn unmount_under(r: &mut SweepReport, dir: &Path) {
    for round in 0..5 {
        let ms = procfs::mounts_under(dir);
        if ms.is_empty() {
            break;
        }
        if round == 0 {
            r.actions.push(format!("unmounted {}", ms.join(", ")));
        }
        for m in &ms {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if round == 4 {
            r.problems
                .push(format!("mounts remain: {:?}", procfs::mounts_under(dir)));
        }
    }
}

/// Removes the cgroup trees `rels` (paths relative to each hierarchy's root, e.g. `/default/web`)
/// in every hierarchy, deepest first, retrying for 5 s while dying tasks keep them busy. Returns
/// how many directories below the roots were removed (the roots themselves are not counted).
pub fn remove_cgroup_trees(r: &mut SweepReport, rels: &[String]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut removed = 0;
    loop {
        let mut left = Vec::new();
        for m in procfs::cgroup_mounts() {
            for rel in rels {
                let rel = rel.trim_matches('/');
                if rel.is_empty() {
                    continue;
                }
                let root = m.join(rel);
                if !root.is_dir() {
                    continue;
                }
                for d in procfs::subdirs_deepest_first(&root) {
                    match fs::remove_dir(&d) {
                        Ok(()) => removed += 1,
                        Err(_) if d.exists() => left.push(d),
                        Err(_) => {}
                    }
                }
                if fs::remove_dir(&root).is_err() && root.exists() {
                    left.push(root);
                }
            }
        }
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            r.problems
                .push(format!("cgroup dirs could not be removed: {left:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    removed
}

/// Removes shim sockets (from bundles' `address` files, collected before the shims died) that
/// are still there.
pub fn remove_sockets(r: &mut SweepReport, sockets: Vec<PathBuf>) {
    for s in sockets {
        if fs::symlink_metadata(&s).is_ok() {
            r.actions
                .push(format!("removed shim socket {}", s.display()));
            let _ = fs::remove_file(&s);
        }
    }
}

pub fn sweep_instance(dir: &Path, ns: &str) -> SweepReport {
    let mut r = SweepReport::default();
    let sockets = shim_sockets(dir);

    // Processes: thaw frozen cgroups first (SIGKILL waits for a frozen task), then kill until none.
    kill_until_gone(&mut r, || thaw_tree(ns), || instance_pids(dir, ns));

    // Mounts under the dir (container rootfs, shm, netns files, ...), deepest first.
    unmount_under(&mut r, dir);

    // cgroups of the instance (the empty `/<ns>` parent made by runc's mkdir -p is expected: not
    // counted).
    let removed = remove_cgroup_trees(&mut r, &[ns.to_string()]);
    if removed > 0 {
        r.actions
            .push(format!("removed {removed} cgroup dirs under /{ns}"));
    }

    // runc state of ctr-run runc containers without --runc-root, and shim sockets of killed shims.
    let runc_root = Path::new("/run/containerd/runc").join(ns);
    if runc_root.exists() {
        if fs::read_dir(&runc_root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            r.actions
                .push(format!("removed runc state {}", runc_root.display()));
        }
        let _ = fs::remove_dir_all(&runc_root);
    }
    remove_sockets(&mut r, sockets);

    r.actions.extend(crate::net::release_for_dir(dir));

    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            r.problems.push(format!("removing {}: {e}", dir.display()));
        }
    }
    r
}

/// Sweeps every instance dir under the base dir (for hack/test.sh after a crashed run).
pub fn sweep_all() -> Vec<(PathBuf, SweepReport)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(crate::containerd::base_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            let ns = crate::containerd::namespace_for(&name);
            let rep = sweep_instance(&e.path(), &ns);
            out.push((e.path(), rep));
        }
    }
    out
}
