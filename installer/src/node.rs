//! The node side: which config file the node's containerd reads, the files put on the host, and
//! containerd's restart. Run from a privileged pod with the host's `/` mounted at a host root
//! (`/host`) and `hostPID`, host commands (`containerd config default`, `systemctl`) run in the
//! host's mount namespace through `nsenter --target 1 --mount --`, as kata-deploy does: the
//! host's own binaries, libraries and systemd, not the image's.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{self, ConfigVersion, Edit};
use crate::{k3s, Error};

/// containerd's config when the node runs containerd itself.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Where k3s keeps its containerd config and templates.
pub const K3S_CONTAINERD_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
/// Where the installer puts its files on the host.
pub const INSTALL_DIR: &str = "/opt/ums/bin";
/// Binaries the host must find on a PATH, and where a link to them goes: containerd looks the
/// shim up on its PATH, runc runs `criu` from its PATH (/usr/local/sbin comes before a
/// distribution's older /usr/sbin/criu).
pub const LINKS: &[(&str, &str)] = &[
    (crate::SHIM_BINARY, "/usr/local/bin"),
    ("criu", "/usr/local/sbin"),
];

/// Where the host's `/` is seen (`/host` in the installer pod, `/` on the host itself).
#[derive(Clone, Debug)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn new(path: impl Into<PathBuf>) -> HostRoot {
        HostRoot(path.into())
    }

    /// A host path as seen from here.
    pub fn join(&self, host_path: &Path) -> PathBuf {
        self.0
            .join(host_path.strip_prefix("/").unwrap_or(host_path))
    }
}

/// Runs commands on the host: `prefix` (e.g. `nsenter --target 1 --mount --`) + the command.
#[derive(Clone, Debug, Default)]
pub struct HostExec {
    prefix: Vec<String>,
}

impl HostExec {
    pub fn new(prefix: Vec<String>) -> HostExec {
        HostExec { prefix }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut all = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied());
        // `args` is never empty: every caller names a program.
        let mut cmd = Command::new(all.next().unwrap_or_default());
        cmd.args(all);
        cmd
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        all.join(" ")
    }

    /// The command's stdout; an error with its stderr when it fails.
    pub fn output(&self, args: &[&str]) -> Result<String, Error> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| Error::io(format!("running {}", self.describe(args)), e))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: self.describe(args),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the command exits 0.
    pub fn succeeds(&self, args: &[&str]) -> Result<bool, Error> {
        let st = self
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| Error::io(format!("running {}", self.describe(args)), e))?;
        Ok(st.success())
    }
}

/// The file that configures the node's containerd (a host path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// containerd's own config.toml.
    Containerd(PathBuf),
    /// A k3s template (`config.toml.tmpl` or `config-v3.toml.tmpl`).
    K3s(PathBuf),
}

impl Target {
    /// k3s when its generated config exists (its `version` tells which template k3s reads),
    /// containerd's `/etc/containerd/config.toml` otherwise.
    pub fn detect(root: &HostRoot) -> Result<Target, Error> {
        let dir = Path::new(K3S_CONTAINERD_DIR);
        let generated = root.join(&dir.join("config.toml"));
        match fs::read_to_string(&generated) {
            Ok(text) => {
                let doc =
                    text.parse::<toml_edit::DocumentMut>()
                        .map_err(|source| Error::Parse {
                            path: generated.clone(),
                            source,
                        })?;
                let name = match ConfigVersion::of(&doc, &generated)? {
                    ConfigVersion::V2 => "config.toml.tmpl",
                    ConfigVersion::V3 => "config-v3.toml.tmpl",
                };
                Ok(Target::K3s(dir.join(name)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(Target::Containerd(PathBuf::from(CONTAINERD_CONFIG)))
            }
            Err(e) => Err(Error::io(format!("reading {}", generated.display()), e)),
        }
    }

    /// A config path given by hand: a `.tmpl` is a k3s template.
    pub fn from_path(path: PathBuf) -> Target {
        if k3s::is_template(&path) {
            Target::K3s(path)
        } else {
            Target::Containerd(path)
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Target::Containerd(p) | Target::K3s(p) => p,
        }
    }

    /// The systemd unit to restart so that containerd reads the config again.
    pub fn unit(&self, host: &HostExec) -> Result<String, Error> {
        match self {
            Target::Containerd(_) => Ok("containerd".into()),
            Target::K3s(_) => Ok(
                if host.succeeds(&["systemctl", "is-active", "--quiet", "k3s-agent"])? {
                    "k3s-agent".into()
                } else {
                    "k3s".into()
                },
            ),
        }
    }
}

/// Adds (or with `uninstall` removes) the runtime in `file`, a containerd config or a k3s
/// template (by its name; `template_version` overrides the version the name implies). A
/// missing config is first `default_config()`'s text (containerd's `config default`: what the
/// daemon runs with when it has no file); a missing template starts as k3s's base.
pub fn edit_file(
    file: &Path,
    uninstall: bool,
    template_version: Option<ConfigVersion>,
    default_config: &dyn Fn() -> Result<String, Error>,
) -> Result<Edit, Error> {
    let existing = match fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    if k3s::is_template(file) {
        let version = match template_version {
            Some(v) => v,
            None => k3s::template_version(file)?,
        };
        if uninstall {
            let Some(text) = existing else {
                return Ok(Edit::Unchanged);
            };
            return match k3s::uninstall(file, &text)? {
                (_, Edit::Unchanged) => Ok(Edit::Unchanged),
                (Some(out), edit) => write_atomic(file, &out).map(|()| edit),
                (None, edit) => fs::remove_file(file)
                    .map(|()| edit)
                    .map_err(|e| Error::io(format!("removing {}", file.display()), e)),
            };
        }
        let (out, edit) = k3s::install(file, existing.as_deref(), version)?;
        if edit != Edit::Unchanged {
            write_atomic(file, &out)?;
        }
        return Ok(edit);
    }
    let text = match (existing, uninstall) {
        (Some(t), _) => t,
        (None, true) => return Ok(Edit::Unchanged),
        (None, false) => default_config()?,
    };
    let (out, edit) = if uninstall {
        config::uninstall(file, &text)?
    } else {
        config::install(file, &text)?
    };
    if edit != Edit::Unchanged {
        write_atomic(file, &out)?;
    }
    Ok(edit)
}

/// Replaces `path` by `content` in one rename (containerd never reads half a file), keeping the
/// old file's permissions (0644 for a new one).
fn write_atomic(path: &Path, content: &str) -> Result<(), Error> {
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let tmp = tmp_path(path);
    fs::write(&tmp, content).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("replacing {}", path.display()), e)
        })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ums-tmp");
    path.with_file_name(name)
}

/// What [`install_files`] did.
#[derive(Debug, Default)]
pub struct FilesReport {
    /// Host paths of the files put into [`INSTALL_DIR`].
    pub installed: Vec<PathBuf>,
    /// Host paths of the links made (or found already right).
    pub linked: Vec<PathBuf>,
    /// Links not made because another file is there (e.g. the host's own criu).
    pub skipped: Vec<Error>,
}

/// Copies `sources` into [`INSTALL_DIR`] on the host (each replaced in one rename, so a shim
/// running from the old file is not disturbed) and links the ones named in [`LINKS`].
pub fn install_files(root: &HostRoot, sources: &[PathBuf]) -> Result<FilesReport, Error> {
    let dir = root.join(Path::new(INSTALL_DIR));
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut report = FilesReport::default();
    for src in sources {
        let name = src.file_name().ok_or_else(|| {
            Error::io(
                format!("{}: no file name", src.display()),
                ErrorKind::InvalidInput.into(),
            )
        })?;
        let dst = dir.join(name);
        let tmp = tmp_path(&dst);
        fs::copy(src, &tmp)
            .and_then(|_| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
            .and_then(|()| fs::rename(&tmp, &dst))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io(format!("copying {} to {}", src.display(), dst.display()), e)
            })?;
        report.installed.push(Path::new(INSTALL_DIR).join(name));
    }
    for (name, link_dir) in LINKS {
        if !report.installed.iter().any(|p| p.ends_with(name)) {
            continue;
        }
        let link = Path::new(link_dir).join(name);
        match make_link(root, &link, &Path::new(INSTALL_DIR).join(name)) {
            Ok(()) => report.linked.push(link),
            Err(e @ Error::Foreign { .. }) => report.skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Links host path `link` to host path `target` unless another file is there.
fn make_link(root: &HostRoot, link: &Path, target: &Path) -> Result<(), Error> {
    let at = root.join(link);
    match fs::read_link(&at) {
        Ok(t) if t == target => return Ok(()),
        Ok(t) if t.starts_with(INSTALL_DIR) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        _ => {
            return Err(Error::Foreign {
                path: link.to_path_buf(),
                ours: PathBuf::from(INSTALL_DIR),
            })
        }
    }
    if let Some(dir) = at.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let tmp = tmp_path(&at);
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)
        .and_then(|()| fs::rename(&tmp, &at))
        .map_err(|e| {
            Error::io(
                format!("linking {} to {}", link.display(), target.display()),
                e,
            )
        })
}

/// Removes what [`install_files`] put on the host: the links that point into [`INSTALL_DIR`],
/// and [`INSTALL_DIR`] itself. Returns the host paths removed.
pub fn remove_files(root: &HostRoot) -> Result<Vec<PathBuf>, Error> {
    let mut removed = Vec::new();
    for (name, link_dir) in LINKS {
        let link = Path::new(link_dir).join(name);
        let at = root.join(&link);
        if fs::read_link(&at).is_ok_and(|t| t.starts_with(INSTALL_DIR)) {
            fs::remove_file(&at).map_err(|e| Error::io(format!("removing {}", at.display()), e))?;
            removed.push(link);
        }
    }
    let dir = root.join(Path::new(INSTALL_DIR));
    match fs::remove_dir_all(&dir) {
        Ok(()) => removed.push(PathBuf::from(INSTALL_DIR)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
    }
    // /opt/ums is ours too, once empty.
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(removed)
}

/// Restarts a systemd unit on the host. Running containers survive: their shims are not
/// containerd's children.
pub fn restart(host: &HostExec, unit: &str) -> Result<(), Error> {
    host.output(&["systemctl", "restart", unit]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_joins_host_paths() {
        let r = HostRoot::new("/host");
        assert_eq!(
            r.join(Path::new("/etc/containerd/config.toml")),
            Path::new("/host/etc/containerd/config.toml")
        );
        assert_eq!(
            HostRoot::new("/").join(Path::new("/opt/ums")),
            Path::new("/opt/ums")
        );
    }

    #[test]
    fn target_of_a_path() {
        assert_eq!(
            Target::from_path("/x/config-v3.toml.tmpl".into()),
            Target::K3s("/x/config-v3.toml.tmpl".into())
        );
        assert_eq!(
            Target::from_path("/etc/containerd/config.toml".into()),
            Target::Containerd("/etc/containerd/config.toml".into())
        );
    }

    #[test]
    fn host_exec_reports_failures() {
        let h = HostExec::new(vec!["env".into(), "-i".into()]);
        assert_eq!(h.output(&["echo", "hi"]).unwrap(), "hi\n");
        assert!(!h.succeeds(&["false"]).unwrap());
        let e = h
            .output(&["sh", "-c", "echo nope >&2; exit 3"])
            .unwrap_err();
        assert!(
            e.to_string().contains("nope") && e.to_string().contains("env -i sh -c"),
            "{e}"
        );
    }
}
