//! Drives a command (e.g. `ctr run -t`) on a pseudo-terminal: type into it, resize it, read what
//! it prints, get its exit code.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::{self, wait_for};

pub struct PtySession {
    child: Child,
    master: File,
    buf: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    cmdline: String,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtySession {
    /// Spawns `cmd` as a session leader with the pty slave as its controlling terminal and stdio.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> std::io::Result<PtySession> {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(std::io::Error::from)?;
        let slave: OwnedFd = pty.slave;
        let cmdline = util::describe(&cmd);
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(cmd);
        drop(slave);
        let master = File::from(pty.master);
        let mut rd = master.try_clone()?;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match rd.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => b2.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // EIO once every slave fd is closed
                }
            }
        });
        Ok(PtySession {
            child,
            master,
            buf,
            reader: Some(reader),
            cmdline,
        })
    }

    /// Types `s` into the terminal.
    pub fn write(&mut self, s: &str) {
        let _ = self.master.write_all(s.as_bytes());
        let _ = self.master.flush();
    }

    /// Sets the terminal size (the foreground process group gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        unsafe {
            libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws);
        }
    }

    /// Everything the terminal showed so far, with CRs removed.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, Duration::from_millis(50), || {
            self.output().contains(needle).then_some(())
        })
        .is_some()
    }

    /// Waits for the command to exit; its exit code, or None on timeout (then it is killed).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let st = util::wait_child(&mut self.child, timeout);
        if st.is_none() {
            self.kill();
        }
        if let Some(r) = self.reader.take() {
            // The reader ends when the last slave fd closes; don't hang if a grandchild keeps one.
            let _ = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
                r.is_finished().then_some(())
            });
            if r.is_finished() {
                let _ = r.join();
            }
        }
        st.map(util::exit_code)
    }

    pub fn kill(&mut self) {
        let pid = self.child.id() as i32;
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    pub fn describe(&self) -> String {
        format!(
            "  $ {}\n  terminal output:\n{}",
            self.cmdline,
            self.output()
        )
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
