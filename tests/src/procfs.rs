//! Reading processes, namespaces, cgroups and mounts from /proc and /sys/fs/cgroup.

use std::fs;
use std::path::{Path, PathBuf};

/// Every pid in /proc (processes, not threads).
pub fn all_pids() -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// argv of a process (empty for kernel threads and vanished processes).
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// argv joined with spaces, for messages and substring matching.
pub fn cmdline_str(pid: i32) -> String {
    cmdline(pid).join(" ")
}

/// The `(state, ppid, starttime)` fields of `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// A process identity that survives pid reuse: pid plus start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> Option<ProcId> {
        stat(pid).map(|(_, _, start)| ProcId { pid, start })
    }

    /// The same process still exists and is not a zombie.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((st, _, start)) if start == self.start && st != 'Z' && st != 'X')
    }
}

/// A process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((st, _, _)) if st != 'Z' && st != 'X')
}

/// `readlink /proc/<pid>/ns/<kind>`, e.g. `pid:[4026531836]`.
pub fn ns(pid: i32, kind: &str) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The NSpid line of `/proc/<pid>/status`: the pid in each nested pid namespace, outermost first.
pub fn nspid(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("NSpid:")).map(|l| {
                l["NSpid:".len()..]
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// One line of `/proc/<pid>/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Comma-separated controllers ("memory", "cpu,cpuacct", "name=systemd", "" for v2).
    pub controllers: String,
    pub path: String,
}

pub fn cgroups(pid: i32) -> Vec<CgroupLine> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let mut it = l.splitn(3, ':');
                    Some(CgroupLine {
                        hierarchy: it.next()?.parse().ok()?,
                        controllers: it.next()?.to_string(),
                        path: it.next()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup path of `pid` for a v1 controller ("memory", "pids", ...) or "" for the v2 hierarchy.
pub fn cgroup_path(pid: i32, controller: &str) -> Option<String> {
    cgroups(pid)
        .into_iter()
        .find(|c| {
            if controller.is_empty() {
                c.hierarchy == 0 && c.controllers.is_empty()
            } else {
                c.controllers.split(',').any(|x| x == controller)
            }
        })
        .map(|c| c.path)
}

/// True when `child` is strictly below `parent` in a cgroup tree (`/a/b` under `/a`).
pub fn cgroup_is_under(child: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    child.len() > parent.len() + 1
        && child.starts_with(parent)
        && child.as_bytes()[parent.len()] == b'/'
}

/// Mount points of the cgroup hierarchies: every directory directly under /sys/fs/cgroup that is a
/// cgroup mount (v1 controllers, name=systemd, and `unified` for v2; or /sys/fs/cgroup itself on a
/// pure v2 host).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The directory of a v1 controller's hierarchy (e.g. /sys/fs/cgroup/memory) or of v2 ("").
pub fn cgroup_mount_for(controller: &str) -> Option<PathBuf> {
    for m in mounts() {
        if controller.is_empty() && m.fstype == "cgroup2" {
            return Some(PathBuf::from(m.mount_point));
        }
        if m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == controller) {
            return Some(PathBuf::from(m.mount_point));
        }
    }
    None
}

/// A cgroup file of `pid`'s cgroup for `controller`, e.g. ("memory", "memory.limit_in_bytes").
pub fn cgroup_file(pid: i32, controller: &str, file: &str) -> Option<PathBuf> {
    let mount = cgroup_mount_for(controller)?;
    let path = cgroup_path(pid, controller)?;
    Some(mount.join(path.trim_start_matches('/')).join(file))
}

/// Every directory under `root`, deepest first.
pub fn subdirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let path = e.path();
                    walk(&path, out);
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct Mount {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

pub fn mounts() -> Vec<Mount> {
    mounts_of("self")
}

/// Mounts seen by a process (`"self"` or a pid).
pub fn mounts_of(pid: &str) -> Vec<Mount> {
    let s = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(Mount {
                mount_point: unescape_mount(pre.get(4)?),
                fstype: post.first()?.to_string(),
                source: post.get(1).map(|s| unescape_mount(s)).unwrap_or_default(),
                super_options: post.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in our mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().trim_end_matches('/').to_string();
    let mut v: Vec<String> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| mp == &d || mp.starts_with(&format!("{d}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// `readlink /proc/<pid>/root`.
pub fn root_of(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/root")).ok()
}

/// All processes whose cgroup path (any hierarchy) is at or below `path`.
pub fn pids_in_cgroup_tree(path: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            cgroups(p)
                .iter()
                .any(|c| c.path == path || cgroup_is_under(&c.path, path))
        })
        .collect()
}

/// Processes whose argv contains `needle` as one argument followed by `value` (e.g. `-address`, sock).
pub fn pids_with_arg_pair(needle: &str, value: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            let a = cmdline(p);
            a.windows(2).any(|w| w[0] == needle && w[1] == value)
        })
        .collect()
}

/// The children of `pid` (by ppid).
pub fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| matches!(stat(p), Some((_, pp, _)) if pp == pid))
        .collect()
}

/// For a thread blocked in open/openat (e.g. a fifo without a peer): the path and flags it opens,
/// read from /proc/<pid>/task/<tid>/syscall and the process's memory.
fn blocked_open_path(pid: i32, tid: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let sc = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let f: Vec<&str> = sc.split_whitespace().collect();
    let nr: i64 = f.first()?.parse().ok()?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    // x86_64: open = 2 (path, flags), openat = 257 (dirfd, path, flags).
    let (ptr, flags) = match nr {
        2 => (hex(f.get(1)?)?, hex(f.get(2)?)?),
        257 => (hex(f.get(2)?)?, hex(f.get(3)?)?),
        _ => return None,
    };
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    mem.seek(SeekFrom::Start(ptr)).ok()?;
    let mut buf = vec![0u8; 512];
    let n = mem.read(&mut buf).ok()?;
    let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    let mode = match flags & 3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    };
    let nb = if flags & 0o4000 != 0 {
        "|O_NONBLOCK"
    } else {
        ""
    };
    Some(format!(
        "{} {mode}{nb}",
        String::from_utf8_lossy(&buf[..end])
    ))
}

/// A process's threads (name, state, wait channel) and open files, for failure messages about
/// processes that should have exited.
pub fn diagnose(pid: i32) -> String {
    let mut out = format!("pid {pid}: {}", cmdline_str(pid));
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut tids: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        tids.sort();
        for tid in tids {
            let base = format!("/proc/{pid}/task/{tid}");
            let comm = fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
            let wchan = fs::read_to_string(format!("{base}/wchan")).unwrap_or_default();
            let st = fs::read_to_string(format!("{base}/stat"))
                .ok()
                .and_then(|s| {
                    s.rfind(')')
                        .and_then(|i| s[i + 2..].split_whitespace().next().map(String::from))
                });
            let stack = fs::read_to_string(format!("{base}/stack")).unwrap_or_default();
            let top: Vec<&str> = stack
                .lines()
                .take(3)
                .map(|l| l.split_whitespace().last().unwrap_or(""))
                .collect();
            out.push_str(&format!(
                "\n      thread {tid} {} state={} wchan={} kstack={}",
                comm.trim(),
                st.unwrap_or_default(),
                wchan.trim(),
                top.join("<")
            ));
            if let Some(path) = blocked_open_path(pid, &tid) {
                out.push_str(&format!(" blocked-in-open({path})"));
            }
        }
    }
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut fds: Vec<(i32, String)> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().parse().ok()?;
                Some((
                    n,
                    fs::read_link(e.path())
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ))
            })
            .collect();
        fds.sort();
        let list: Vec<String> = fds.iter().map(|(n, t)| format!("{n}->{t}")).collect();
        out.push_str(&format!("\n      fds: {}", list.join(" ")));
    }
    out.push_str(&format!("\n      children: {:?}", children(pid)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under() {
        assert!(cgroup_is_under("/a/b/svc", "/a/b"));
        assert!(cgroup_is_under("/a/b/svc", "/a/b/"));
        assert!(!cgroup_is_under("/a/bc", "/a/b"));
        assert!(!cgroup_is_under("/a/b", "/a/b"));
    }

    #[test]
    fn self_info() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(ns(me, "pid").unwrap().starts_with("pid:["));
        assert!(!cgroups(me).is_empty());
        assert!(!mounts().is_empty());
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
    }
}
