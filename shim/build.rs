//! Builds the static `ums-holder` (holder/main.rs) that the shim copies into each outer rootfs.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = env::var("TARGET").expect("TARGET");
    println!("cargo:rerun-if-changed=holder/main.rs");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "ums_holder",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(out.join("ums-holder"))
        .arg("holder/main.rs")
        .status()
        .expect("run rustc for ums-holder");
    assert!(status.success(), "building the static ums-holder failed");
}
