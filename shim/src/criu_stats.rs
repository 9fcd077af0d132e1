//! Reads CRIU's `stats-dump` / `stats-restore` images: the honest source of frozen and restore
//! times (CRIU's stats.proto: StatsEntry { dump = 1, restore = 2 }, times in microseconds).
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
}
