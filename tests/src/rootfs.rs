//! A minimal busybox root filesystem: static /bin/busybox, a symlink per applet, /etc/passwd and
//! /etc/group, and the empty mount-point directories a container needs.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// The static busybox the rootfs is built from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets of the host busybox (`busybox --list`).
pub fn busybox_applets() -> io::Result<Vec<String>> {
    let out = Command::new(BUSYBOX).arg("--list").output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{BUSYBOX} --list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "busybox" && !l.contains('/'))
        .collect())
}

/// True when a 64-bit ELF file has a PT_INTERP program header (is dynamically linked); an
/// error when `p` is not a 64-bit ELF file.
pub fn has_interpreter(p: &Path) -> io::Result<bool> {
    let b = fs::read(p)?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Err(io::Error::other(format!(
            "{} is not a 64-bit ELF file",
            p.display()
        )));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3
    }))
}

/// Builds the rootfs in `dir` (created if missing; existing content is kept and overwritten).
pub fn build_busybox_rootfs(dir: &Path) -> io::Result<()> {
    if has_interpreter(Path::new(BUSYBOX))? {
        return Err(io::Error::other(format!(
            "{BUSYBOX} is dynamically linked; install busybox-static (hack/install-deps.sh)"
        )));
    }
    for d in [
        "bin", "etc", "tmp", "proc", "dev", "sys", "root", "run", "var/tmp", "usr/bin", "sbin",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dir.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;
    let bb = dir.join("bin/busybox");
    let _ = fs::remove_file(&bb);
    fs::copy(BUSYBOX, &bb)?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
    for applet in busybox_applets()? {
        let link = dir.join("bin").join(&applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", &link)?;
        }
    }
    // Some tools hard-code /usr/bin/env.
    let env_link = dir.join("usr/bin/env");
    if fs::symlink_metadata(&env_link).is_err() {
        symlink("/bin/busybox", &env_link)?;
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(dir.join("etc/hostname"), "ums-test\n")?;
    fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    Ok(())
}

/// Copies `src` to `dest` inside `rootfs` (`dest` absolute, as seen in the container; parent dirs
/// created; mode kept). An ELF executable that is dynamically linked is refused: busybox-only
/// images have no dynamic loader or libc.
pub fn add_file(rootfs: &Path, src: &Path, dest: &str) -> io::Result<()> {
    let rel = dest.trim_start_matches('/');
    if rel.is_empty() || Path::new(rel).components().any(|c| c.as_os_str() == "..") {
        return Err(io::Error::other(format!(
            "bad destination `{dest}`: an absolute path inside the rootfs without `..`"
        )));
    }
    let head = {
        let mut b = [0u8; 4];
        use std::io::Read;
        let n = fs::File::open(src)
            .and_then(|mut f| f.read(&mut b))
            .map_err(|e| io::Error::other(format!("{}: {e}", src.display())))?;
        b[..n].to_vec()
    };
    if head == b"\x7fELF" && has_interpreter(src)? {
        return Err(io::Error::other(format!(
            "{} is dynamically linked; the image has no libc (build it static: hack/build-workloads.sh)",
            src.display()
        )));
    }
    let dst = rootfs.join(rel);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    // The destination may be a busybox applet symlink: replace it, never write through it.
    if fs::symlink_metadata(&dst).is_ok() {
        fs::remove_file(&dst)?;
    }
    fs::copy(src, &dst).map_err(|e| {
        io::Error::other(format!("copy {} -> {}: {e}", src.display(), dst.display()))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_rootfs() {
        if !Path::new(BUSYBOX).exists() {
            eprintln!("skipped: {BUSYBOX} missing");
            return;
        }
        let dir = crate::util::scratch_path("rootfs");
        build_busybox_rootfs(&dir).unwrap();
        assert!(dir.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(dir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(dir.join("bin/sleep").exists());
        assert!(dir.join("etc/passwd").is_file());
        // Building twice is fine.
        build_busybox_rootfs(&dir).unwrap();
        // A static binary can be added (over an applet symlink), a dynamic one cannot.
        add_file(&dir, Path::new(BUSYBOX), "/bin/true").unwrap();
        assert!(fs::symlink_metadata(dir.join("bin/true"))
            .unwrap()
            .is_file());
        add_file(&dir, Path::new(BUSYBOX), "/usr/local/bin/bb").unwrap();
        let dynamic = Path::new("/bin/ls");
        if dynamic.exists() && has_interpreter(dynamic).unwrap_or(false) {
            assert!(add_file(&dir, dynamic, "/bin/ls2").is_err());
        }
        assert!(add_file(&dir, Path::new(BUSYBOX), "/../x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
