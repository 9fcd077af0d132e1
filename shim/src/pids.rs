//! Which container process a reaped pid belongs to. Exits can arrive before the pid is
//! known (a short exec), so unclaimed exits are kept for a while.
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The service's init or an exec (exec_id set).
    Service { exec_id: String },
    /// The outer's holder.
    Outer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container: String,
    pub role: Role,
}

/// Exits of unknown pids kept for late registrations (most are runc's own processes).
const UNCLAIMED_MAX: usize = 1024;

#[derive(Default)]
pub struct PidTable {
    owners: HashMap<i32, Owner>,
    unclaimed: VecDeque<(i32, i32)>,
}

impl PidTable {
    /// Records `pid`'s owner; if the pid already exited, returns its exit code instead.
    pub fn register(&mut self, pid: i32, owner: Owner) -> Option<i32> {
        if let Some(i) = self.unclaimed.iter().position(|&(p, _)| p == pid) {
            return self.unclaimed.remove(i).map(|(_, code)| code);
        }
        self.owners.insert(pid, owner);
        None
    }

    /// An exit was reaped: its owner, if any (then forgotten).
    pub fn exited(&mut self, pid: i32, code: i32) -> Option<Owner> {
        let owner = self.owners.remove(&pid);
        if owner.is_none() {
            if self.unclaimed.len() == UNCLAIMED_MAX {
                self.unclaimed.pop_front();
            }
            self.unclaimed.push_back((pid, code));
        }
        owner
    }

    pub fn forget_container(&mut self, container: &str) {
        self.owners.retain(|_, o| o.container != container);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        Owner {
            container: c.into(),
            role: Role::Outer,
        }
    }

    #[test]
    fn exit_before_registration_is_not_lost() {
        let mut t = PidTable::default();
        assert_eq!(t.exited(10, 3), None);
        assert_eq!(t.register(10, owner("a")), Some(3));
        // consumed once
        assert_eq!(t.register(10, owner("a")), None);
        assert_eq!(t.exited(10, 0), Some(owner("a")));
    }

    #[test]
    fn unclaimed_is_bounded_and_forget_works() {
        let mut t = PidTable::default();
        for pid in 0..(UNCLAIMED_MAX as i32 + 5) {
            t.exited(100_000 + pid, 0);
        }
        assert_eq!(t.unclaimed.len(), UNCLAIMED_MAX);
        assert_eq!(t.register(100_000, owner("a")), None);
        t.register(7, owner("b"));
        t.forget_container("b");
        assert_eq!(t.exited(7, 0), None);
    }
}
