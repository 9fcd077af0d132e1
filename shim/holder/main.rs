//! ums-holder: the process of an OUTER container. It only keeps the outer's namespaces and
//! cgroup alive for the nested service; the shim ends it with SIGKILL. Built statically by
//! build.rs so it runs in an otherwise empty rootfs.
fn main() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(u64::MAX / 4));
    }
}
