//! criu-sync: streams a CRIU image directory to a peer WHILE the dump is being written, so the
//! dump and the transfer overlap.
//!
//! Facts this relies on (checked with inotify on CRIU 4.2 dumps, see the field notes): every image
//! file is closed exactly once and never written after; `pages-N.img` grows append-only and closes
//! once; `inventory.img` is written last; runc writes `descriptors.json` before CRIU starts. So the
//! [`Sender`] sends small files on `IN_CLOSE_WRITE`, tails `pages-*.img` while they grow, and takes
//! the end of the dump (told by the caller: CRIU/runc exited with success) as the end of the
//! directory. The [`Receiver`] writes into a staging directory, verifies every file (length,
//! XXH3-128 digest) and the final manifest, and renames staging to final in one step; on any
//! error it removes the staging directory and leaves the final one untouched.
//!
//! Modules: [`protocol`] (frames on the wire), [`collector`] (inotify + file reading, on a blocking
//! thread), [`sender`] (async: drives the collector, writes frames), [`staging`] (the receiving
//! state machine that writes and verifies files, on a blocking thread), [`receiver`] (async: reads
//! frames, feeds staging, answers the sender), [`streamer`] (CRIU's own image streamer protocol:
//! the shim's pre-copy sends a dump's images through it, held in pipes at the destination, while
//! criu-sync carries the files runc writes and the writable layer).
//!
//! Typical use on the two sides (the shim drives this; the `criu-sync` binary does the same for
//! tests and debugging):
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
//! // Source: watch first, then start the dump, so no event is missed.
//! let s = Sender::new("/run/ums/img", SendOptions::new("token-1"))?;
//! let dump = tokio::spawn(async { /* runc checkpoint ... */ Ok::<(), String>(()) });
//! let done = async move { dump.await.map_err(|e| e.to_string())? };
//! let stream = tokio::net::TcpStream::connect("10.77.0.2:7401").await?;
//! let stats = sender::send_over(s, stream, done).await?;
//! # Ok(()) }
//! # async fn g(stream: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! # use criu_sync::{receiver, RecvOptions};
//! // Destination:
//! let opts = RecvOptions::new("token-1");
//! let stats = receiver::receive_over(stream, "/run/ums/in.staging".as_ref(), "/run/ums/in".as_ref(), &opts).await?;
//! # Ok(()) }
//! ```

pub mod collector;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod staging;
pub mod streamer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use receiver::{Limits, Receiver, RecvError, RecvOptions, RecvStats};
pub use sender::{SendError, SendOptions, SendStats, Sender};

/// Live counters one side updates while it streams (for progress reports: `ums migrate` shows
/// phase and bytes). Cheap to clone; all clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    bytes: Arc<AtomicU64>,
    files: Arc<AtomicU64>,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// File bytes sent (sender) or written to staging (receiver) so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Files completed so far.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The shim spawns these on a multi-threaded runtime: they must stay `Send`.
    #[test]
    fn public_futures_are_send() {
        #[allow(dead_code)]
        fn check(s: Sender, a: tokio::net::TcpStream, b: tokio::net::TcpStream, o: RecvOptions) {
            let send = sender::send_over(s, a, async { Ok::<(), String>(()) });
            assert_send(&send);
            let p = std::path::Path::new("x");
            let recv = receiver::receive_over(b, p, p, &o);
            assert_send(&recv);
        }
    }
}
