//! The memory probe: what touching fresh anonymous memory for the first time, and freeing it,
//! costs on this machine. A restore allocates every page of the service at the destination,
//! and the source's teardown frees them: the 1024 MiB total target cannot go below these on
//! the CPUs that also carry the link.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::sys;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryProbe {
    /// Size touched and freed each time (MiB, 4 KiB pages as the machine's THP setting gives).
    pub mib: u64,
    /// First write to every page (allocation and zeroing), ms.
    pub touch_ms: Vec<f64>,
    /// munmap of the touched memory, ms.
    pub free_ms: Vec<f64>,
    pub error: Option<String>,
}

/// `reps` x (map `mib` MiB, write a byte to each page, unmap), in this process.
pub fn probe(mib: u64, reps: u32) -> MemoryProbe {
    let mut p = MemoryProbe {
        mib,
        ..Default::default()
    };
    let len = (mib as usize) << 20;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    for _ in 0..reps {
        // SAFETY: a fresh private anonymous mapping, not aliased; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            p.error = Some(format!(
                "mmap {mib} MiB: {}",
                std::io::Error::last_os_error()
            ));
            break;
        }
        let t = Instant::now();
        let base = addr.cast::<u8>();
        for off in (0..len).step_by(page) {
            // SAFETY: off < len, inside the mapping; volatile so the write is not elided.
            unsafe { base.add(off).write_volatile(1) };
        }
        p.touch_ms.push(sys::ms_since(t));
        let t = Instant::now();
        // SAFETY: the mapping made above, no reference into it is left.
        unsafe { libc::munmap(addr, len) };
        p.free_ms.push(sys::ms_since(t));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_and_frees() {
        let p = probe(4, 2);
        assert_eq!((p.touch_ms.len(), p.free_ms.len()), (2, 2), "{p:?}");
        assert!(p.error.is_none() && p.touch_ms.iter().all(|&t| t > 0.0));
    }
}
