//! ums-mkimage: OCI image tarballs (for `ctr images import`, containerd 1.6 and 2.x) from a rootfs
//! directory, or from a busybox rootfs with extra static binaries. A thin CLI over
//! `ums_tests::{rootfs, image}`.

use std::path::{Path, PathBuf};

use ums_tests::image::{self, ImageSpec};
use ums_tests::rootfs;

const USAGE: &str = "\
usage: ums-mkimage [--rootfs DIR] [--busybox] [--add SRC:DEST]...
                   [--name REF --out FILE.tar] [--pause]
                   [--entrypoint ARG]... [--cmd ARG]... [--env K=V]...

Rootfs:
  --rootfs DIR      the image's root filesystem (with --busybox or --add: DIR is created or
                    updated in place and kept)
  --busybox         populate the rootfs with the host's static busybox (/bin/busybox, one
                    symlink per applet, /etc/passwd ...); without --rootfs a temporary dir
                    is used and removed afterwards
  --add SRC:DEST    copy the file SRC to DEST (absolute, inside the rootfs); a dynamically
                    linked ELF is refused (busybox images have no libc)
Image (both or neither; without them only the rootfs is built):
  --name REF        image reference, e.g. localhost/ums/memhog:1
  --out FILE.tar    OCI image layout tarball to write
  --entrypoint ARG  an Entrypoint element (repeat for more); ARG starting with `[` is parsed
                    as a JSON array of strings
  --cmd ARG         a Cmd element (repeat, or a JSON array); an ARG that starts with `--`
                    must be given as --cmd=ARG or inside a JSON array
  --env K=V         an Env entry besides the default PATH (repeat)
  --pause           a sandbox (pause) image: entrypoint = a shell loop that exits on TERM/INT

Examples:
  ums-mkimage --busybox --add target/x86_64-unknown-linux-gnu/release/counter:/usr/local/bin/counter \\
      --name localhost/ums/counter:1 --out counter.tar --entrypoint /usr/local/bin/counter
  ums-mkimage --rootfs /tmp/rfs --busybox --add memhog:/usr/local/bin/memhog   # rootfs only
  ctr images import counter.tar";

fn die(msg: &str) -> ! {
    eprintln!("ums-mkimage: {msg}");
    std::process::exit(2)
}

/// `ARG` of --entrypoint/--cmd: a JSON array, or one element.
fn push_args(v: &mut Vec<String>, arg: &str, flag: &str) {
    if arg.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<String>>(arg) {
            Ok(a) => v.extend(a),
            Err(e) => die(&format!("{flag}: not a JSON array of strings ({e}): {arg}")),
        }
    } else {
        v.push(arg.to_string());
    }
}

#[derive(Default)]
struct Opts {
    rootfs: Option<PathBuf>,
    busybox: bool,
    add: Vec<(PathBuf, String)>,
    name: Option<String>,
    out: Option<PathBuf>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    pause: bool,
}

fn parse(args: Vec<String>) -> Opts {
    let mut o = Opts::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let value = |it: &mut std::vec::IntoIter<String>| -> String {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--rootfs" => o.rootfs = Some(PathBuf::from(value(&mut it))),
            "--busybox" => o.busybox = true,
            "--pause" => o.pause = true,
            "--add" => {
                let v = value(&mut it);
                let (src, dest) = v
                    .rsplit_once(':')
                    .unwrap_or_else(|| die(&format!("--add {v}: expected SRC:DEST")));
                if !dest.starts_with('/') {
                    die(&format!("--add {v}: DEST must be an absolute path"));
                }
                o.add.push((PathBuf::from(src), dest.to_string()));
            }
            "--name" => o.name = Some(value(&mut it)),
            "--out" => o.out = Some(PathBuf::from(value(&mut it))),
            "--entrypoint" => push_args(&mut o.entrypoint, &value(&mut it), "--entrypoint"),
            "--cmd" => push_args(&mut o.cmd, &value(&mut it), "--cmd"),
            "--env" => o.env.push(value(&mut it)),
            _ => die(&format!("unknown argument `{a}` (see --help)")),
        }
    }
    o
}

fn main() {
    let o = parse(std::env::args().skip(1).collect());
    if o.name.is_some() != o.out.is_some() {
        die("--name and --out go together");
    }
    if o.rootfs.is_none() && !o.busybox {
        die("give --rootfs DIR or --busybox (see --help)");
    }
    if o.out.is_none() && o.rootfs.is_none() {
        die("nothing to do: without --name/--out, --rootfs DIR names the rootfs to build");
    }
    if o.pause && (!o.entrypoint.is_empty() || !o.cmd.is_empty()) {
        die("--pause sets the entrypoint: no --entrypoint/--cmd with it");
    }

    let temp = o.rootfs.is_none();
    let dir = o.rootfs.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ums-mkimage-{}", std::process::id()))
    });
    let result = build(&o, &dir);
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(Some(digest)) => println!("{digest}"),
        Ok(None) => {}
        Err(e) => die(&e),
    }
}

/// Builds the rootfs and, when asked, the tarball; returns the manifest digest.
fn build(o: &Opts, dir: &Path) -> Result<Option<String>, String> {
    if o.busybox {
        rootfs::build_busybox_rootfs(dir)
            .map_err(|e| format!("building a busybox rootfs in {}: {e}", dir.display()))?;
    } else if !dir.is_dir() {
        return Err(format!("--rootfs {}: not a directory", dir.display()));
    }
    for (src, dest) in &o.add {
        rootfs::add_file(dir, src, dest).map_err(|e| format!("--add: {e}"))?;
    }
    let (Some(name), Some(out)) = (&o.name, &o.out) else {
        return Ok(None);
    };
    let mut spec = if o.pause {
        image::pause_spec(name)
    } else {
        let e: Vec<&str> = o.entrypoint.iter().map(String::as_str).collect();
        let c: Vec<&str> = o.cmd.iter().map(String::as_str).collect();
        ImageSpec::new(name, &e, &c)
    };
    spec.env.extend(o.env.iter().cloned());
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    image::write_oci_tarball(dir, &spec, out)
        .map(Some)
        .map_err(|e| format!("writing {}: {e}", out.display()))
}
