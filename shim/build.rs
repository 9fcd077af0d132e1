//! Builds the static `ums-holder` (holder/main.rs) that the shim copies into each outer rootfs,
//! and generates the ttrpc code of the migration API (proto/ums/v1/migration.proto).
use std::{env, path::PathBuf, process::Command};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    build_holder();
    generate_api();
}

fn generate_api() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("api");
    std::fs::create_dir_all(&out).expect("create api out dir");
    println!("cargo:rerun-if-changed=proto/ums/v1/migration.proto");
    Codegen::new()
        .inputs(["proto/ums/v1/migration.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(true))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate the migration API");
    // include! cannot take inner attributes: drop them from the generated files.
    for entry in std::fs::read_dir(&out).expect("read api out dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}

fn build_holder() {
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
