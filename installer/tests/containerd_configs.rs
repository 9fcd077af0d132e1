//! The installer's edit on real containerd configs: `containerd config default` of containerd
//! 1.6 (/usr/bin) and 2.1 (/opt/ums/containerd2, hack/install-deps.sh), and k3s templates
//! rendered on such a base. Each edit applied twice gives the same bytes, keeps the rest of the
//! file (removing the runtime again gives the original back), and the real containerd of that
//! version, started on the edited file (private root, state and socket under /run/udp-inst-*),
//! lists the runtime `ums` in its CRI config (`crictl info`). Run as root.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use ums_node_installer::node::edit_file;
use ums_node_installer::{k3s, ConfigVersion, Edit, Error};
use ums_tests::cri::Cri;
use ums_tests::util::{kill_group, tail, wait_child, wait_for};
use ums_tests::Version;

/// `containerd config default` of a release; fails clearly when that release is missing.
fn default_config(v: Version) -> String {
    let bin = v.containerd_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run hack/install-deps.sh (it installs containerd 1.6 and 2.1)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(["config", "default"])
        .output()
        .unwrap_or_else(|e| panic!("running {} config default: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} config default: {out:?}",
        bin.display()
    );
    String::from_utf8(out.stdout).expect("containerd's default config is UTF-8")
}

fn version_of(v: Version) -> ConfigVersion {
    match v {
        Version::V1_6 => ConfigVersion::V2,
        Version::V2_1 => ConfigVersion::V3,
    }
}

/// A fresh private directory /run/udp-inst-<name>, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests start containerd: run them as root (hack/test.sh does)"
        );
        let dir = PathBuf::from(format!("/run/udp-inst-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// containerd of release `v` on `config`, with a private root, state and socket.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(v: Version, config: &Path, dir: &Path) -> Daemon {
        // The file containerd reads is the edited one; only host-wide endpoints are moved
        // aside: the paths by flags, and 2.x's NRI socket (/var/run/nri) switched off.
        let mut doc: toml_edit::DocumentMut = fs::read_to_string(config).unwrap().parse().unwrap();
        if let Some(nri) = doc
            .get_mut("plugins")
            .and_then(|p| p.get_mut("io.containerd.nri.v1.nri"))
            .and_then(|n| n.as_table_mut())
        {
            nri.insert("disable", toml_edit::value(true));
        }
        fs::create_dir_all(dir).unwrap();
        let run_config = dir.join("run-config.toml");
        fs::write(&run_config, doc.to_string()).unwrap();
        let socket = dir.join("c.sock");
        let log = dir.join("containerd.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(v.containerd_bin())
            .arg("--config")
            .arg(&run_config)
            .arg("--address")
            .arg(&socket)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", v.containerd_bin().display()));
        Daemon { child, socket, log }
    }

    /// The CRI plugin's effective runtimes (`crictl info` .config.containerd.runtimes).
    fn cri_runtimes(&mut self) -> Value {
        let mut cri = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            if !self.socket.exists() {
                return None;
            }
            let mut c = Cri::connect(&self.socket).ok()?;
            c.version().ok().map(|_| c)
        })
        .unwrap_or_else(|| {
            panic!(
                "containerd's CRI did not answer within 30 s; log:\n{}",
                tail(&self.log, 40)
            )
        });
        let config = cri.info("config").expect("CRI Status verbose");
        config
            .pointer("/containerd/runtimes")
            .cloned()
            .unwrap_or_else(|| panic!("no containerd.runtimes in the CRI config: {config:#}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
        if wait_child(&mut self.child, Duration::from_secs(10)).is_none() {
            kill_group(&self.child);
            let _ = self.child.wait();
        }
    }
}

/// Starts release `v` on `config` and asserts CRI lists `ums` as the UMS runtime with its
/// annotations, next to the default `runc`.
fn assert_ums_listed(v: Version, config: &Path, dir: &Path) {
    let mut d = Daemon::start(v, config, dir);
    let runtimes = d.cri_runtimes();
    let ums = runtimes
        .get("ums")
        .unwrap_or_else(|| panic!("{v:?}: runtime ums not listed by CRI: {runtimes:#}"));
    assert_eq!(ums["runtimeType"], "io.containerd.ums.v1", "{ums:#}");
    assert_eq!(
        ums["ContainerAnnotations"],
        serde_json::json!(["io.ums.*"]),
        "{ums:#}"
    );
    assert_eq!(
        ums["PodAnnotations"],
        serde_json::json!(["io.ums.*"]),
        "{ums:#}"
    );
    assert_eq!(
        runtimes["runc"]["runtimeType"], "io.containerd.runc.v2",
        "{runtimes:#}"
    );
}

fn no_default() -> Result<String, Error> {
    panic!("the config exists: containerd's default must not be asked for")
}

/// Every line of `original` is in `edited`, in order (the edit only inserted lines).
fn assert_only_inserted(original: &str, edited: &str) {
    let mut rest = edited.lines();
    for line in original.lines() {
        assert!(
            rest.any(|l| l == line),
            "line {line:?} of the original is missing or moved in:\n{edited}"
        );
    }
}

/// containerd's default config of `v`, edited twice in place and by a missing-file install,
/// then loaded by the real containerd of that version.
fn default_config_edit(v: Version) {
    let scratch = Scratch::new(&format!("default-{}", v.tag()));
    let original = default_config(v);
    let file = scratch.0.join("config.toml");
    fs::write(&file, &original).unwrap();

    assert_eq!(
        edit_file(&file, false, None, &no_default).unwrap(),
        Edit::Added
    );
    let once = fs::read_to_string(&file).unwrap();
    assert_eq!(
        edit_file(&file, false, None, &no_default).unwrap(),
        Edit::Unchanged
    );
    let twice = fs::read_to_string(&file).unwrap();
    assert_eq!(once, twice, "a second install changed the file");
    assert_only_inserted(&original, &once);
    let header = match version_of(v) {
        ConfigVersion::V2 => "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.ums]",
        ConfigVersion::V3 => "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.ums]",
    };
    assert!(once.contains(header), "{once}");

    // A node without a config: the installer starts from containerd's `config default`.
    let missing = scratch.0.join("missing.toml");
    let generate = || Ok(default_config(v));
    assert_eq!(
        edit_file(&missing, false, None, &generate).unwrap(),
        Edit::Added
    );
    assert_eq!(fs::read_to_string(&missing).unwrap(), once);

    assert_ums_listed(v, &file, &scratch.0.join("d"));

    assert_eq!(
        edit_file(&file, true, None, &no_default).unwrap(),
        Edit::Removed
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        original,
        "uninstall left a different file"
    );
    assert_eq!(
        edit_file(&file, true, None, &no_default).unwrap(),
        Edit::Unchanged
    );
}

#[test]
fn containerd_1_6_default_config_edit_is_idempotent_keeps_the_rest_and_loads() {
    default_config_edit(Version::V1_6);
}

#[test]
fn containerd_2_1_default_config_edit_is_idempotent_keeps_the_rest_and_loads() {
    default_config_edit(Version::V2_1);
}

/// A k3s template as the installer creates it, rendered the way k3s does with `v`'s default
/// config standing in for k3s's base, is a config that release loads with `ums` listed.
fn k3s_template_edit(v: Version, name: &str) {
    let scratch = Scratch::new(&format!("k3s-{}", v.tag()));
    let tmpl = scratch.0.join(name);
    assert_eq!(
        edit_file(&tmpl, false, None, &no_default).unwrap(),
        Edit::Added
    );
    let once = fs::read_to_string(&tmpl).unwrap();
    assert_eq!(
        edit_file(&tmpl, false, None, &no_default).unwrap(),
        Edit::Unchanged
    );
    assert_eq!(fs::read_to_string(&tmpl).unwrap(), once);
    assert!(once.starts_with(k3s::BASE), "{once}");

    let rendered = once.replacen(k3s::BASE, &default_config(v), 1);
    let config = scratch.0.join("config.toml");
    fs::write(&config, rendered).unwrap();
    assert_ums_listed(v, &config, &scratch.0.join("d"));

    // The template the installer created goes away again: k3s falls back to its own config.
    assert_eq!(
        edit_file(&tmpl, true, None, &no_default).unwrap(),
        Edit::Removed
    );
    assert!(!tmpl.exists());
}

#[test]
fn k3s_config_toml_tmpl_renders_to_a_config_containerd_1_6_loads() {
    k3s_template_edit(Version::V1_6, "config.toml.tmpl");
}

#[test]
fn k3s_config_v3_toml_tmpl_renders_to_a_config_containerd_2_1_loads() {
    k3s_template_edit(Version::V2_1, "config-v3.toml.tmpl");
}
