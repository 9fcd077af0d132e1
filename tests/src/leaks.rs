//! Leak checks: what a container leaves behind after deletion (processes, cgroups, mounts, bundle,
//! runc state, shim sockets and shim processes).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::containerd::Containerd;
use crate::ctr::Ctr;
use crate::procfs::{self, ProcId};
use crate::sweep;
use crate::util::wait_for;

/// What a running container occupies, recorded while it runs, to check after deletion.
#[derive(Clone, Debug)]
pub struct Footprint {
    pub id: String,
    pub namespace: String,
    /// The task pid and every process in its cgroup tree (outer, service, execs), with their argv.
    pub procs: Vec<(ProcId, String)>,
    /// Absolute cgroup dirs of the task's processes in every hierarchy.
    pub cgroup_dirs: Vec<PathBuf>,
    pub bundle: PathBuf,
    /// The shim's socket from the bundle's `address` file.
    pub shim_socket: Option<PathBuf>,
    /// Shim processes serving this id (`-id <id>`), empty when a pod's shim serves it.
    pub shim_pids: Vec<ProcId>,
}

fn hierarchy_dir(line: &procfs::CgroupLine) -> Option<PathBuf> {
    let mounts = procfs::mounts();
    if line.hierarchy == 0 && line.controllers.is_empty() {
        return mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| PathBuf::from(&m.mount_point));
    }
    let want: Vec<&str> = line.controllers.split(',').collect();
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .find(|m| {
            let opts: Vec<&str> = m.super_options.split(',').collect();
            want.iter().all(|w| opts.contains(w))
        })
        .map(|m| PathBuf::from(&m.mount_point))
}

/// Absolute cgroup dirs of `pid`, skipping hierarchies where it shares our own cgroup.
pub fn cgroup_dirs_of(pid: i32) -> Vec<PathBuf> {
    let me = procfs::cgroups(std::process::id() as i32);
    procfs::cgroups(pid)
        .into_iter()
        // A container's cgroup is never a hierarchy's root (a process caught while joining its
        // cgroups one hierarchy at a time can still show "/").
        .filter(|l| l.path != "/")
        .filter(|l| {
            !me.iter()
                .any(|m| m.hierarchy == l.hierarchy && m.path == l.path)
        })
        .filter_map(|l| hierarchy_dir(&l).map(|d| d.join(l.path.trim_start_matches('/'))))
        .collect()
}

/// Records the footprint of running task `id` (namespace of `ctr`).
#[track_caller]
pub fn footprint(c: &Containerd, ctr: &Ctr, id: &str) -> Footprint {
    let task = ctr.expect_task(id);
    footprint_of_pid(c, ctr.namespace(), id, task.pid, &ctr.task_pids(id))
}

/// Footprint from a known task pid (CRI: the pid from ContainerStatus) and extra pids.
pub fn footprint_of_pid(
    c: &Containerd,
    namespace: &str,
    id: &str,
    pid: i32,
    extra: &[i32],
) -> Footprint {
    let mut pids: Vec<i32> = vec![pid];
    pids.extend_from_slice(extra);
    // Everything in the task's cgroup tree (any hierarchy where it is not in our cgroup).
    let me = procfs::cgroups(std::process::id() as i32);
    for line in procfs::cgroups(pid) {
        if line.path != "/"
            && !me
                .iter()
                .any(|m| m.hierarchy == line.hierarchy && m.path == line.path)
        {
            pids.extend(procfs::pids_in_cgroup_tree(&line.path));
            break;
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let procs: Vec<(ProcId, String)> = pids
        .iter()
        .filter_map(|&p| ProcId::of(p).map(|id| (id, procfs::cmdline_str(p))))
        .collect();
    let mut cgroup_dirs: Vec<PathBuf> = pids.iter().flat_map(|&p| cgroup_dirs_of(p)).collect();
    cgroup_dirs.sort();
    cgroup_dirs.dedup();
    let bundle = c.bundle_dir(namespace, id);
    let shim_socket = fs::read_to_string(bundle.join("address"))
        .ok()
        .and_then(|a| sweep::socket_path_of(&a));
    let sock = c.socket().to_string_lossy().into_owned();
    let shim_pids = procfs::pids_with_arg_pair("-id", id)
        .into_iter()
        .filter(|&p| procfs::cmdline(p).iter().any(|a| a == &sock))
        .filter_map(ProcId::of)
        .collect();
    Footprint {
        id: id.into(),
        namespace: namespace.into(),
        procs,
        cgroup_dirs,
        bundle,
        shim_socket,
        shim_pids,
    }
}

/// What of the footprint is still there (empty when all is gone). Shim processes and sockets are
/// checked by [`check_instance_clean`] (a shim may serve several tasks).
pub fn check_footprint_gone(fp: &Footprint) -> Vec<String> {
    let mut left = Vec::new();
    for (p, cmd) in &fp.procs {
        if p.alive() {
            left.push(format!("process {} still runs: {cmd}", p.pid));
        }
    }
    for d in &fp.cgroup_dirs {
        if d.exists() {
            left.push(format!("cgroup dir still exists: {}", d.display()));
        }
    }
    if fp.bundle.exists() {
        left.push(format!("bundle dir still exists: {}", fp.bundle.display()));
    }
    for m in procfs::mounts_under(&fp.bundle) {
        left.push(format!("mount left under the bundle: {m}"));
    }
    left
}

#[track_caller]
pub fn assert_footprint_gone(fp: &Footprint, timeout: Duration) {
    let mut last = Vec::new();
    let ok = wait_for(timeout, Duration::from_millis(200), || {
        last = check_footprint_gone(fp);
        last.is_empty().then_some(())
    });
    if ok.is_none() {
        panic!(
            "container {} left things behind after deletion:\n  - {}",
            fp.id,
            last.join("\n  - ")
        );
    }
}

/// Files named state.json (runc state) belonging to the instance: inside its dir, in a path with a
/// component equal to its namespace, or in a path containing one of `ids` (long ids only).
pub fn runc_state_files(c: &Containerd, ids: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let inst = c.dir().to_path_buf();
    let skip: Vec<PathBuf> = ["root", "rootfs", "img"]
        .iter()
        .map(|s| inst.join(s))
        .collect();
    let base = crate::containerd::base_dir();
    fn walk(d: &Path, depth: usize, f: &mut dyn FnMut(&Path), skip: &dyn Fn(&Path) -> bool) {
        if depth == 0 || skip(d) {
            return;
        }
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    walk(&e.path(), depth - 1, f, skip);
                } else if ft.is_file() && e.file_name() == "state.json" {
                    f(&e.path());
                }
            }
        }
    }
    let ns = c.namespace().to_string();
    let skipper = |p: &Path| {
        skip.iter().any(|s| p == s)
            // Other instances under the base dir are not ours.
            || (p.parent() == Some(base.as_path()) && p != inst)
    };
    walk(
        Path::new("/run"),
        9,
        &mut |p: &Path| {
            let s = p.to_string_lossy();
            let ours = p.starts_with(&inst)
                || p.components().any(|comp| comp.as_os_str() == ns.as_str())
                || ids
                    .iter()
                    .any(|id| id.len() >= 12 && s.contains(id.as_str()));
            if ours {
                out.push(p.to_path_buf());
            }
        },
        &skipper,
    );
    out
}

/// Everything the instance should no longer have once all its tasks and containers are deleted.
/// `ids` are the (long, unique) ids of CRI containers/pods to look for in runc state paths.
pub fn check_instance_clean(
    c: &Containerd,
    footprints: &[Footprint],
    ids: &[String],
) -> Vec<String> {
    let mut left = Vec::new();
    for ctr in [c.ctr(), c.ctr_k8s()] {
        for t in ctr.tasks() {
            left.push(format!(
                "task {} ({}) still listed in namespace {}",
                t.id,
                t.status,
                ctr.namespace()
            ));
        }
        let cs = ctr.cmd(&["containers", "ls", "-q"]);
        for id in cs.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            left.push(format!(
                "container {id} still listed in namespace {}",
                ctr.namespace()
            ));
        }
    }
    let sock = c.socket().to_string_lossy().into_owned();
    for p in procfs::pids_with_arg_pair("-address", &sock) {
        left.push(format!("shim process still runs: {}", procfs::diagnose(p)));
    }
    let daemon = c.pid();
    let cg = c.cgroup_root();
    for p in procfs::all_pids() {
        if Some(p) == daemon || p == std::process::id() as i32 {
            continue;
        }
        let in_cg = procfs::cgroups(p)
            .iter()
            .any(|l| procfs::cgroup_is_under(&l.path, &cg) || l.path == cg);
        let rooted =
            matches!(procfs::root_of(p), Some(r) if r.starts_with(c.dir()) && r != c.dir());
        if in_cg || rooted {
            left.push(format!(
                "process {p} of the instance still runs: {}",
                procfs::cmdline_str(p)
            ));
        }
    }
    for fp in footprints {
        for l in check_footprint_gone(fp) {
            left.push(format!("{}: {l}", fp.id));
        }
        for s in &fp.shim_pids {
            if s.alive() {
                left.push(format!("{}: shim {} still runs", fp.id, s.pid));
            }
        }
        if let Some(s) = &fp.shim_socket {
            if fs::symlink_metadata(s).is_ok() {
                left.push(format!(
                    "{}: shim socket {} still exists",
                    fp.id,
                    s.display()
                ));
            }
        }
    }
    for m in procfs::mounts_under(c.dir()) {
        left.push(format!("mount left under the instance dir: {m}"));
    }
    for root in sweep::instance_cgroup_dirs(c.namespace()) {
        for d in procfs::subdirs_deepest_first(&root) {
            left.push(format!("cgroup dir left: {}", d.display()));
        }
    }
    for f in runc_state_files(c, ids) {
        left.push(format!("runc state left: {}", f.display()));
    }
    let tasks_dir = c.dir().join("state/io.containerd.runtime.v2.task");
    for d in procfs::subdirs_deepest_first(&tasks_dir) {
        if d.parent() != Some(tasks_dir.as_path()) {
            left.push(format!("bundle dir left: {}", d.display()));
        }
    }
    left
}

/// Polls [`check_instance_clean`] up to `timeout` (shims exit asynchronously after the last delete).
#[track_caller]
pub fn assert_instance_clean(
    c: &Containerd,
    footprints: &[Footprint],
    ids: &[String],
    timeout: Duration,
) {
    let mut last = Vec::new();
    let ok = wait_for(timeout, Duration::from_millis(250), || {
        last = check_instance_clean(c, footprints, ids);
        last.is_empty().then_some(())
    });
    if ok.is_none() {
        panic!(
            "instance {} is not clean {timeout:?} after deleting everything:\n  - {}",
            c.name(),
            last.join("\n  - ")
        );
    }
}
