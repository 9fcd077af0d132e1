//! Kills and removes whatever test containerd instances left under /run/ums-test (after a crashed
//! or interrupted test run). Prints what it did; exits 1 if something could not be cleaned.
fn main() {
    let mut bad = false;
    for (dir, report) in ums_tests::sweep::sweep_all() {
        println!("[ums-test-sweep] {}: {report}", dir.display());
        bad |= !report.problems.is_empty();
    }
    std::process::exit(i32::from(bad));
}
