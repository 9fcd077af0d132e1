//! Reads CRIU's `stats-dump` / `stats-restore` images: the honest source of frozen and restore
//! times (CRIU's stats.proto: StatsEntry { dump = 1, restore = 2 }, times in microseconds), and
//! its pagemap images (how many pages a lazy dump left for the lazy-pages daemon: CRIU 4.2's
//! stats do not count them).
use std::{collections::HashMap, path::Path};

/// The varint fields of one message: field number -> value.
type Fields = HashMap<u32, u64>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CriuStats {
    /// dump: time the tasks were frozen (µs)
    pub frozen_us: u64,
    /// dump: time to dump the memory (µs)
    pub memdump_us: u64,
    pub pages_written: u64,
    /// restore: time of the restore (µs)
    pub restore_us: u64,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Varint fields of a message, and its length-delimited fields' raw bytes.
fn decode(buf: &[u8]) -> Option<(Fields, HashMap<u32, &[u8]>)> {
    let (mut ints, mut nested) = (HashMap::new(), HashMap::new());
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                ints.insert(field, varint(buf, &mut pos)?);
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                nested.insert(field, buf.get(pos..pos.checked_add(len)?)?);
                pos += len;
            }
            1 => pos += 8,
            5 => pos += 4,
            _ => return None,
        }
    }
    Some((ints, nested))
}

/// Parses a stats image: two u32 magics, then one u32-length-prefixed StatsEntry.
pub fn parse(image: &[u8]) -> Option<CriuStats> {
    let len = u32::from_le_bytes(image.get(8..12)?.try_into().ok()?) as usize;
    let entry = image.get(12..12usize.checked_add(len)?)?;
    let (_, nested) = decode(entry)?;
    let mut s = CriuStats::default();
    if let Some(dump) = nested.get(&1) {
        let (f, _) = decode(dump)?;
        s.frozen_us = f.get(&2).copied().unwrap_or(0);
        s.memdump_us = f.get(&3).copied().unwrap_or(0);
        s.pages_written = f.get(&7).copied().unwrap_or(0);
    }
    if let Some(restore) = nested.get(&2) {
        let (f, _) = decode(restore)?;
        s.restore_us = f.get(&4).copied().unwrap_or(0);
    }
    Some(s)
}

/// `stats-dump` or `stats-restore` in CRIU's work (or image) directory.
pub fn read(dir: &Path, name: &str) -> Option<CriuStats> {
    parse(&std::fs::read(dir.join(name)).ok()?)
}

/// pagemap_entry flag: the pages are fetched lazily (post-copy).
const PE_LAZY: u64 = 1 << 1;

/// Pages marked lazy in one pagemap image: after the 8-byte magic, u32-length-prefixed
/// messages, a pagemap_head then pagemap_entry { vaddr = 1, compat_nr_pages = 2, flags = 4,
/// nr_pages = 5 }.
pub fn lazy_pages_in(image: &[u8]) -> Option<u64> {
    let mut pos = 8;
    let mut first = true;
    let mut pages = 0;
    while pos < image.len() {
        let len = u32::from_le_bytes(image.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos += 4;
        let msg = image.get(pos..pos.checked_add(len)?)?;
        pos += len;
        if std::mem::take(&mut first) {
            continue;
        }
        let (f, _) = decode(msg)?;
        if f.get(&4).copied().unwrap_or(0) & PE_LAZY != 0 {
            pages += f.get(&5).or_else(|| f.get(&2)).copied().unwrap_or(0);
        }
    }
    Some(pages)
}

/// Pages left lazy by a dump, over the pagemap images of `dir`.
pub fn lazy_pages(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("pagemap-") && n.ends_with(".img")
        })
        .filter_map(|e| lazy_pages_in(&std::fs::read(e.path()).ok()?))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dump_and_restore_entries() {
        // dump { frozen_time(2)=300, memdump_time(3)=5, pages_written(7)=1000 }
        let dump = [0x10, 0xac, 0x02, 0x18, 0x05, 0x38, 0xe8, 0x07];
        // restore { restore_time(4)=70000 }
        let restore = [0x20, 0xf0, 0xa2, 0x04];
        let mut entry = vec![0x0a, dump.len() as u8];
        entry.extend_from_slice(&dump);
        entry.extend_from_slice(&[0x12, restore.len() as u8]);
        entry.extend_from_slice(&restore);
        let mut img = vec![0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57];
        img.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        img.extend_from_slice(&entry);
        assert_eq!(
            parse(&img),
            Some(CriuStats {
                frozen_us: 300,
                memdump_us: 5,
                pages_written: 1000,
                restore_us: 70000
            })
        );
        assert_eq!(parse(&img[..10]), None);
        assert_eq!(parse(&img[..img.len() - 1]), None);
    }

    #[test]
    fn counts_lazy_pages_of_a_pagemap() {
        // head { pages_id = 1 }, then { vaddr, nr_pages 8, flags LAZY },
        // { vaddr, nr_pages 15, flags PRESENT }, { vaddr, nr_pages 1024, flags LAZY }
        let mut img = vec![0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56];
        for m in [
            &[0x08, 0x01][..],
            &[0x08, 0x80, 0x20, 0x10, 0x00, 0x20, 0x02, 0x28, 0x08],
            &[0x08, 0x80, 0x40, 0x10, 0x00, 0x20, 0x04, 0x28, 0x0f],
            &[0x08, 0x80, 0x60, 0x10, 0x00, 0x20, 0x02, 0x28, 0x80, 0x08],
        ] {
            img.extend_from_slice(&(m.len() as u32).to_le_bytes());
            img.extend_from_slice(m);
        }
        assert_eq!(lazy_pages_in(&img), Some(8 + 1024));
        assert_eq!(lazy_pages_in(&img[..img.len() - 1]), None);
    }
}
