//! TCP connections a service holds on a port, from its network namespace's tables
//! (`/proc/<pid>/net/tcp` and `tcp6`). CRIU cannot checkpoint an established connection
//! without `--tcp-established` (whose address would not exist at the destination): before a
//! service with a Frontman is frozen, its connections on the published port must be gone.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Kernel TCP states (include/net/tcp_states.h) as /proc/net/tcp prints them.
const ESTABLISHED: u8 = 0x01;
const SYN_RECV: u8 = 0x03;
const FIN_WAIT1: u8 = 0x04;
const FIN_WAIT2: u8 = 0x05;
const TIME_WAIT: u8 = 0x06;
const CLOSE: u8 = 0x07;
const CLOSE_WAIT: u8 = 0x08;
const LAST_ACK: u8 = 0x09;
const LISTEN: u8 = 0x0A;
const CLOSING: u8 = 0x0B;

fn state_name(st: u8) -> &'static str {
    match st {
        ESTABLISHED => "ESTABLISHED",
        SYN_RECV => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        CLOSING => "CLOSING",
        _ => "other",
    }
}

/// The connections in `table` (the text of /proc/net/tcp or tcp6) on local port `port` that a
/// process may still own: every state but LISTEN, TIME_WAIT and CLOSE, except the closing
/// sockets no file refers to any more (inode 0: the kernel finishes them alone). A connection
/// waiting in a listener's accept queue (inode 0, ESTABLISHED or CLOSE_WAIT) counts: the
/// process would accept it. Returns their state names.
pub fn busy_on_port(table: &str, port: u16) -> Vec<&'static str> {
    let mut busy = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if f.len() < 10 {
            continue;
        }
        let local_port = f[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let state = u8::from_str_radix(f[3], 16).ok();
        let (Some(local_port), Some(state)) = (local_port, state) else {
            continue;
        };
        if local_port != port || matches!(state, LISTEN | TIME_WAIT | CLOSE) {
            continue;
        }
        let orphan = f[9] == "0" && matches!(state, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK);
        if !orphan {
            busy.push(state_name(state));
        }
    }
    busy
}

/// [`busy_on_port`] over both tables of the network namespace of process `pid`.
pub async fn busy_in_netns_of(pid: u32, port: u16) -> Result<Vec<&'static str>> {
    let mut busy = Vec::new();
    for t in ["tcp", "tcp6"] {
        let path = PathBuf::from(format!("/proc/{pid}/net/{t}"));
        match tokio::fs::read_to_string(&path).await {
            Ok(s) => busy.extend(busy_on_port(&s, port)),
            // No IPv6 in that namespace.
            Err(e) if t == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 01004D0A:1F90 01004D0A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 01004D0A:1F90 01004D0A:9C41 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0000000000000000
   3: 01004D0A:1F90 01004D0A:9C42 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   4: 01004D0A:1F90 01004D0A:9C43 08 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   5: 01004D0A:9C40 01004D0A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   6: 01004D0A:1F90 01004D0A:9C44 05 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn owned_and_queued_connections_count() {
        // Port 0x1F90 = 8080: the listener (0), TIME_WAIT (2) and the orphan in FIN_WAIT2 (3)
        // do not count; an owned ESTABLISHED (1), a queued CLOSE_WAIT (4) and an owned
        // FIN_WAIT2 (6) do; (5) is the client side of (1), on another local port.
        assert_eq!(
            busy_on_port(TABLE, 8080),
            vec!["ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT2"]
        );
        assert_eq!(busy_on_port(TABLE, 40000), vec!["ESTABLISHED"]);
        assert!(busy_on_port(TABLE, 80).is_empty());
        assert!(busy_on_port("", 8080).is_empty());
    }
}
