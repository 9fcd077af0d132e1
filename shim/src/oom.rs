//! OOM notifications for an outer's memory cgroup (the service's lies below it, so an OOM
//! kill in the service is seen here). cgroup v1: an eventfd registered on
//! memory.oom_control; cgroup v2: the oom_kill counter of memory.events, polled.
use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

pub enum OomWatcher {
    V1 {
        cgroup: PathBuf,
        efd: AsyncFd<EventFd>,
        _oom_control: OwnedFd,
    },
    V2 {
        events: PathBuf,
        seen: u64,
    },
}

/// The memory cgroup directory of `pid`, for the v1 memory controller or the v2 hierarchy.
fn memory_cgroup(pid: i32) -> Result<(PathBuf, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(Error::io(format!("read /proc/{pid}/cgroup")))?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == "memory") {
            return Ok((
                Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                false,
            ));
        }
    }
    if crate::metrics::unified_only() {
        if let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) {
            return Ok((
                Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                true,
            ));
        }
    }
    Err(Error::NotFound(format!("no memory cgroup for pid {pid}")))
}

fn oom_kills(events: &Path) -> Option<u64> {
    std::fs::read_to_string(events)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

impl OomWatcher {
    pub fn new(pid: i32) -> Result<Self> {
        let (cgroup, unified) = memory_cgroup(pid)?;
        if unified {
            let events = cgroup.join("memory.events");
            let seen = oom_kills(&events).unwrap_or(0);
            return Ok(OomWatcher::V2 { events, seen });
        }
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let oom_control: OwnedFd = std::fs::File::open(cgroup.join("memory.oom_control"))
            .map_err(Error::io("open memory.oom_control"))?
            .into();
        std::fs::write(
            cgroup.join("cgroup.event_control"),
            format!("{} {}", efd.as_fd().as_raw_fd(), oom_control.as_raw_fd()),
        )
        .map_err(Error::io("register OOM eventfd"))?;
        // SAFETY: the EventFd owns its fd and moves into the AsyncFd, which outlives the
        // registration.
        let efd = unsafe { AsyncFd::register(efd) }
            .map_err(|e| Error::io("register eventfd")(std::io::Error::other(e.to_string())))?;
        Ok(OomWatcher::V1 {
            cgroup,
            efd,
            _oom_control: oom_control,
        })
    }

    /// Waits for the next OOM kill; None once the cgroup is gone.
    pub async fn next(&mut self) -> Option<()> {
        match self {
            OomWatcher::V1 { cgroup, efd, .. } => {
                loop {
                    let mut guard = efd.readable().await.ok()?;
                    // Err: spurious readiness, wait again.
                    if guard
                        .try_io(|fd| fd.get_ref().read().map_err(std::io::Error::from))
                        .is_ok()
                    {
                        break;
                    }
                }
                // v1 also signals when the cgroup is removed.
                cgroup.exists().then_some(())
            }
            OomWatcher::V2 { events, seen } => loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = oom_kills(events)?;
                if now > *seen {
                    *seen = now;
                    return Some(());
                }
            },
        }
    }
}
