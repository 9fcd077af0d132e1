//! Keeps a shim's resident set small while it idles: a shim per pod stays up for the pod's
//! whole life, and what it maps once at start-up (code that ran only to create the task,
//! fault-around neighbours, the embedded holder) would otherwise count in its RSS forever.
//!
//! Only clean, read-only, file-backed pages are dropped: their mapping goes, the page cache
//! keeps them (shared with every other shim), and they fault back in when used again. Pages a
//! private mapping copied on write (relocations) are never touched: dropping those would
//! revert them to the file's content.
use std::{path::Path, time::Duration};

use log::debug;

/// Drops the mappings of `len` bytes at `ptr`, a read-only file-backed range (whole pages
/// inside it only).
pub fn drop_range(ptr: *const u8, len: usize) {
    let page = page_size();
    let start = (ptr as usize).div_ceil(page) * page;
    let end = (ptr as usize + len) / page * page;
    if end > start {
        // SAFETY: the caller passes a read-only file-backed range; after MADV_DONTNEED its
        // pages fault in again from the file if they are read.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Drops every read-only file-backed mapping of this process that holds no anonymous
/// (copied-on-write) page: the code and constants of the shim and its libraries. Reads
/// /proc/self/smaps: call it off the async threads (spawn_blocking).
pub fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut dropped = 0usize;
    for (start, end) in clean_file_ranges(&smaps) {
        // SAFETY: a read-only file mapping without anonymous pages: dropping its pages loses
        // nothing, they fault in again from the page cache.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            dropped += end - start;
        }
    }
    debug!("dropped {} KiB of clean file mappings", dropped / 1024);
}

/// How long after a burst of work (create, start, a migration) the pages it mapped are
/// dropped: long enough for the calls that follow it (containerd's state, wait, events) to be
/// over, so that they do not map them right back.
const SETTLE: Duration = Duration::from_secs(1);

/// [`drop_clean_file_pages`] once the shim has settled after the work just done.
pub fn drop_clean_file_pages_soon() {
    tokio::spawn(async {
        tokio::time::sleep(SETTLE).await;
        let _ = tokio::task::spawn_blocking(drop_clean_file_pages).await;
    });
}

/// Ranges of /proc/self/smaps entries that are file-backed, not writable, and hold no
/// anonymous page.
fn clean_file_ranges(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                let perms = fields.next().unwrap_or("");
                let path = fields.nth(3).unwrap_or("");
                let file_backed = Path::new(path).is_absolute();
                current = (file_backed
                    && perms.starts_with('r')
                    && perms.as_bytes().get(1) == Some(&b'-'))
                .then_some((a, b));
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings() {
        let smaps = "\
55d000000000-55d000100000 r--p 00000000 08:01 1 /usr/bin/shim
Anonymous:             0 kB
55d000100000-55d000500000 r-xp 00100000 08:01 1 /usr/bin/shim
Rss:                 100 kB
Anonymous:             0 kB
55d000500000-55d000600000 r--p 00500000 08:01 1 /usr/bin/shim
Anonymous:            12 kB
55d000600000-55d000610000 rw-p 00600000 08:01 1 /usr/bin/shim
Anonymous:             0 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_ranges(smaps),
            vec![
                (0x55d000000000, 0x55d000100000),
                (0x55d000100000, 0x55d000500000)
            ]
        );
    }

    #[test]
    fn own_smaps_parses() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!clean_file_ranges(&smaps).is_empty());
    }
}
