//! Finding a container's service process and checking that it runs nested in the outer container:
//! sibling pid namespace, cgroup below the outer's, the outer's network namespace.

use std::time::Duration;

use crate::procfs;
use crate::util::wait_for;

/// Controllers whose cgroup paths the nesting checks compare (v1 hierarchies on this host).
pub const NESTING_CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// The cgroup path to search under: the first of memory, pids, or v2 the process has.
fn search_path(pid: i32) -> Option<String> {
    NESTING_CONTROLLERS
        .iter()
        .chain(std::iter::once(&""))
        .find_map(|c| procfs::cgroup_path(pid, c).filter(|p| p != "/"))
}

/// Processes whose cgroup lies strictly below `outer`'s and whose argv contains `needle`.
/// The topmost match first (a match whose parent also matches comes later).
pub fn processes_below(outer: i32, needle: &str) -> Vec<i32> {
    let Some(base) = search_path(outer) else {
        return Vec::new();
    };
    let mut found: Vec<i32> = procfs::pids_in_cgroup_tree(&base)
        .into_iter()
        .filter(|&p| p != outer)
        .filter(|&p| {
            NESTING_CONTROLLERS
                .iter()
                .chain(std::iter::once(&""))
                .any(
                    |c| match (procfs::cgroup_path(p, c), procfs::cgroup_path(outer, c)) {
                        (Some(sp), Some(op)) if op != "/" => procfs::cgroup_is_under(&sp, &op),
                        _ => false,
                    },
                )
        })
        .filter(|&p| procfs::cmdline_str(p).contains(needle))
        .collect();
    let set = found.clone();
    found.sort_by_key(|&p| {
        let parent_matches = procfs::stat(p)
            .map(|(_, pp, _)| set.contains(&pp))
            .unwrap_or(false);
        (parent_matches, p)
    });
    found
}

/// Waits for the service process of the container whose task pid (the outer) is `outer`: a
/// process below the outer's cgroup running a command containing `needle`.
pub fn find_service(outer: i32, needle: &str, timeout: Duration) -> Option<i32> {
    wait_for(timeout, Duration::from_millis(100), || {
        processes_below(outer, needle).first().copied()
    })
}

/// Describes a process for failure messages.
pub fn describe(pid: i32) -> String {
    format!(
        "pid {pid} argv={:?} nspid={:?} ns(pid)={:?} ns(net)={:?} cgroups={:?}",
        procfs::cmdline(pid),
        procfs::nspid(pid),
        procfs::ns(pid, "pid"),
        procfs::ns(pid, "net"),
        procfs::cgroups(pid)
            .iter()
            .map(|c| format!("{}:{}", c.controllers, c.path))
            .collect::<Vec<_>>()
    )
}

/// Checks that `service` runs nested in the outer container whose holder is `outer`; returns the
/// list of violations (empty when nested as promised).
pub fn nesting_violations(outer: i32, service: i32) -> Vec<String> {
    let mut v = Vec::new();
    if outer == service {
        v.push("the service is the task's own process: not nested".into());
        return v;
    }
    // The outer: a holder, pid 1 of its own pid namespace.
    let nspid = procfs::nspid(outer);
    if nspid.last() != Some(&1) || nspid.len() < 2 {
        v.push(format!(
            "outer {outer} is not pid 1 of its own pid namespace (NSpid {nspid:?})"
        ));
    }
    if !procfs::cmdline_str(outer).contains("ums-holder") {
        v.push(format!(
            "outer {outer} does not run /ums-holder: {:?}",
            procfs::cmdline(outer)
        ));
    }
    let (op, sp) = (procfs::ns(outer, "pid"), procfs::ns(service, "pid"));
    if op.is_none() || op == sp {
        v.push(format!(
            "service {service} shares the outer's pid namespace ({op:?})"
        ));
    }
    let host_pid = procfs::ns(std::process::id() as i32, "pid");
    if sp == host_pid {
        v.push(format!("service {service} runs in the host pid namespace"));
    }
    for c in NESTING_CONTROLLERS {
        match (
            procfs::cgroup_path(outer, c),
            procfs::cgroup_path(service, c),
        ) {
            (Some(o), Some(s)) if procfs::cgroup_is_under(&s, &o) => {}
            (o, s) => v.push(format!(
                "{c} cgroup of the service ({s:?}) is not under the outer's ({o:?})"
            )),
        }
    }
    for kind in ["net", "ipc", "uts"] {
        let (o, s) = (procfs::ns(outer, kind), procfs::ns(service, kind));
        if o.is_none() || o != s {
            v.push(format!(
                "{kind} namespace differs: outer {o:?}, service {s:?}"
            ));
        }
    }
    v
}

#[track_caller]
pub fn assert_nested(outer: i32, service: i32) {
    let v = nesting_violations(outer, service);
    if !v.is_empty() {
        panic!(
            "service is not nested as promised:\n  - {}\n  outer:   {}\n  service: {}",
            v.join("\n  - "),
            describe(outer),
            describe(service)
        );
    }
}
