//! Decodes CRIU's `stats-dump` / `stats-restore` (criu/images/stats.proto) without crit:
//! an image header (two u32 magics), a u32 length, then a StatsEntry message
//! { dump_stats dump = 1; restore_stats restore = 2; }. Times are in microseconds.

use std::collections::BTreeMap;

/// Field names of dump_stats and restore_stats, by field number.
const DUMP_FIELDS: &[&str] = &[
    "",
    "freezing_time",
    "frozen_time",
    "memdump_time",
    "memwrite_time",
    "pages_scanned",
    "pages_skipped_parent",
    "pages_written",
    "irmap_resolve",
    "pages_lazy",
    "page_pipes",
    "page_pipe_bufs",
    "shpages_scanned",
    "shpages_skipped_parent",
    "shpages_written",
];
const RESTORE_FIELDS: &[&str] = &[
    "",
    "pages_compared",
    "pages_skipped_cow",
    "forking_time",
    "restore_time",
    "pages_restored",
];

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Varint fields of one message: field number -> value (other wire types are skipped).
fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wt) = (key >> 3, key & 7);
        match wt {
            0 => out.push((num, Field::Int(varint(b, &mut i)?))),
            2 => {
                let len = varint(b, &mut i)? as usize;
                let s = b.get(i..i + len)?;
                i += len;
                out.push((num, Field::Bytes(s)));
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(out)
}

enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// The named figures of a stats file (`dump` or `restore` section, whichever it holds).
pub fn decode(file: &[u8]) -> Option<BTreeMap<String, u64>> {
    let len = u32::from_le_bytes(file.get(8..12)?.try_into().ok()?) as usize;
    let msg = file.get(12..12 + len)?;
    let mut out = BTreeMap::new();
    for (num, f) in fields(msg)? {
        let names = match num {
            1 => DUMP_FIELDS,
            2 => RESTORE_FIELDS,
            _ => continue,
        };
        if let Field::Bytes(sub) = f {
            for (n, v) in fields(sub)? {
                if let Field::Int(v) = v {
                    let name = names.get(n as usize).copied().unwrap_or("");
                    let name = if name.is_empty() {
                        format!("field_{n}")
                    } else {
                        name.to_string()
                    };
                    out.insert(name, v);
                }
            }
        }
    }
    Some(out)
}

/// Reads and decodes a stats file; None when absent or unreadable.
pub fn read(path: &std::path::Path) -> Option<BTreeMap<String, u64>> {
    decode(&std::fs::read(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_stats_dump_and_restore() {
        // From a runc checkpoint / restore of a 64 MiB memhog on this machine.
        let dump = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x29, 0x00, 0x00, 0x00, 0x0a, 0x27,
            0x08, 0xb8, 0x04, 0x10, 0xc9, 0xf6, 0x0c, 0x18, 0x90, 0xb3, 0x09, 0x20, 0xa0, 0x98,
            0x09, 0x28, 0xa3, 0x80, 0x01, 0x30, 0x00, 0x38, 0x9c, 0x80, 0x01, 0x40, 0x00, 0x48,
            0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
        ];
        let d = decode(&dump).unwrap();
        assert_eq!(d["freezing_time"], 568);
        assert_eq!(d["frozen_time"], 211_785);
        assert_eq!(d["pages_written"], 16_412);
        let restore = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x10, 0x00, 0x00, 0x00, 0x12, 0x0e,
            0x08, 0x00, 0x10, 0x00, 0x18, 0x02, 0x20, 0xee, 0xb4, 0x03, 0x28, 0x9c, 0x80, 0x01,
        ];
        let r = decode(&restore).unwrap();
        assert_eq!(r["restore_time"], 55_918);
        assert_eq!(r["pages_restored"], 16_412);
        assert!(decode(&restore[..13]).is_none());
    }
}
