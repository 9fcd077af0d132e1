//! Stdio: stdin with close_io (EOF reaches the service), terminals and resize (run -t, exec -t).

use std::time::Duration;

use ums_tests::pty::PtySession;
use ums_tests::{leaks, Containerd, Version};

use crate::common::*;

/// `echo data | ctr run --rm ... cat` prints data (stdin relayed, then closed so cat exits), and a
/// 1 MiB stdin arrives complete.
fn stdin_and_close_io(v: Version) {
    let c = Containerd::start("stdin", v);
    let ctr = c.ctr();
    let rootfs = c.rootfs("r");
    let out = ctr.run_rm_stdin(
        "cat1",
        &rootfs,
        b"data\n",
        &["/bin/cat"],
        Duration::from_secs(60),
    );
    let out = out.expect_ok("echo data | ctr run --rm cat");
    assert_eq!(out.stdout.trim(), "data", "cat output:\n{out}");

    let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let out = ctr.run_rm_stdin(
        "wc1",
        &rootfs,
        &big,
        &["/bin/wc", "-c"],
        Duration::from_secs(60),
    );
    let out = out.expect_ok("1 MiB | ctr run --rm wc -c");
    assert_eq!(out.stdout.trim(), "1048576", "wc -c of 1 MiB stdin:\n{out}");
    leaks::assert_instance_clean(&c, &[], &[], Duration::from_secs(15));
}

/// Types `stty size` until the terminal reports `rows cols` (resizes are asynchronous).
#[track_caller]
fn expect_size(t: &mut PtySession, rows: u16, cols: u16) {
    let want = format!("{rows} {cols}");
    for _ in 0..10 {
        t.write("stty size\n");
        if t.wait_output(&want, Duration::from_secs(1)) {
            return;
        }
    }
    panic!("terminal size never became {want}\n{}", t.describe());
}

/// Drives an interactive shell on a pty: prompt, stty size, resize, output, exit code.
fn drive_shell(mut t: PtySession, exit: i32) {
    assert!(
        t.wait_output("# ", Duration::from_secs(30)),
        "no shell prompt\n{}",
        t.describe()
    );
    expect_size(&mut t, 33, 97);
    t.resize(41, 123);
    expect_size(&mut t, 41, 123);
    // The typed line echoes as `hel''lo-$((2+3))`; only the shell's output reads hello-5.
    t.write("echo hel''lo-$((2+3))\n");
    assert!(
        t.wait_output("hello-5", Duration::from_secs(10)),
        "no command output\n{}",
        t.describe()
    );
    t.write(&format!("exit {exit}\n"));
    let code = t.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(exit),
        "exit code of the terminal session\n{}",
        t.describe()
    );
}

/// `ctr run -t --rm` on a pseudo-terminal: size, resize, output and the exit code come through.
fn terminal_run(v: Version) {
    let c = Containerd::start("tty", v);
    let ctr = c.ctr();
    let rootfs = c.rootfs("r");
    let mut cmd = ctr.command();
    cmd.arg("run")
        .arg("-t")
        .arg("--rm")
        .args(ctr.runtime_args())
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["t1", "/bin/sh"]);
    let t = PtySession::spawn(cmd, 33, 97).expect("spawn ctr on a pty");
    drive_shell(t, 5);
    leaks::assert_instance_clean(&c, &[], &[], Duration::from_secs(15));
}

/// `ctr t exec -t` into a running service: size, resize, output and exit code of the exec.
fn terminal_exec(v: Version) {
    let c = Containerd::start("ttyexec", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let mut cmd = ctr.command();
    cmd.args(["tasks", "exec", "-t", "--exec-id", "tty1", "c1", "/bin/sh"]);
    let t = PtySession::spawn(cmd, 33, 97).expect("spawn ctr on a pty");
    drive_shell(t, 4);
    assert_eq!(ctr.expect_task("c1").status, "RUNNING");
    assert_growing(&svc, "after the terminal exec");
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

both_versions!(stdin_and_close_io, terminal_run, terminal_exec);
