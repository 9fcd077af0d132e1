//! A private containerd instance per test: own root/state/socket/config/CNI under
//! `/run/ums-test/<name>`, stopped and swept (processes, mounts, cgroups, bridge, dir) on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::{self, Params, BUSYBOX_IMAGE, PAUSE_IMAGE};
use crate::ctr::Ctr;
use crate::image::{busybox_spec, pause_spec, write_oci_tarball};
use crate::net::NetLease;
use crate::util::{self, wait_child, wait_for};
use crate::{rootfs, sweep};

/// The containerd releases the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Debian 12's containerd 1.6 (/usr/bin/containerd), config version 2.
    V1_6,
    /// containerd 2.1 unpacked at $UMS_CONTAINERD2_PREFIX (default /opt/ums/containerd2), config version 3.
    V2_1,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V1_6, Version::V2_1];

    /// The directory holding this release's containerd, ctr and containerd-shim-runc-v2.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Version::V1_6 => PathBuf::from("/usr/bin"),
            Version::V2_1 => {
                let prefix = std::env::var("UMS_CONTAINERD2_PREFIX")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/opt/ums/containerd2".into());
                Path::new(&prefix).join("usr/bin")
            }
        }
    }

    pub fn containerd_bin(self) -> PathBuf {
        self.bin_dir().join("containerd")
    }

    pub fn ctr_bin(self) -> PathBuf {
        self.bin_dir().join("ctr")
    }

    /// Short tag for instance names: `v16`, `v21`.
    pub fn tag(self) -> &'static str {
        match self {
            Version::V1_6 => "v16",
            Version::V2_1 => "v21",
        }
    }
}

/// The runtime the tests drive: the UMS shim (default) or containerd's runc shim, selected with
/// `UMS_TEST_RUNTIME=runc` to validate the harness itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Ums,
    Runc,
}

impl Runtime {
    pub fn from_env() -> Runtime {
        match std::env::var("UMS_TEST_RUNTIME").as_deref() {
            Ok("runc") | Ok("io.containerd.runc.v2") => Runtime::Runc,
            _ => Runtime::Ums,
        }
    }

    /// The `ctr run --runtime` value.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::Ums => config::UMS_RUNTIME_TYPE,
            Runtime::Runc => config::RUNC_RUNTIME_TYPE,
        }
    }

    /// The CRI runtime handler.
    pub fn cri_handler(self) -> &'static str {
        match self {
            Runtime::Ums => config::UMS_HANDLER,
            Runtime::Runc => config::RUNC_HANDLER,
        }
    }

    /// Whether services run nested in an outer container (the UMS shim's promise).
    pub fn nested(self) -> bool {
        self == Runtime::Ums
    }
}

/// Base directory of all instances (`$UMS_TEST_DIR`, default /run/ums-test). Keep it short:
/// unix socket paths must stay under ~100 characters.
pub fn base_dir() -> PathBuf {
    std::env::var_os("UMS_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ums-test"))
}

/// The containerd namespace ctr uses for an instance; also the cgroup parent (`/<ns>`) of all its
/// containers (ctr's default cgroupsPath is `/<ns>/<id>`, CRI pods get `cgroup_parent = /<ns>`).
pub fn namespace_for(name: &str) -> String {
    format!("ums-{name}")
}

pub struct Containerd {
    name: String,
    version: Version,
    runtime: Runtime,
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    namespace: String,
    child: Option<Child>,
    net: Option<NetLease>,
}

impl Containerd {
    /// Starts an instance named `<name>-<version tag>` with the runtime from `UMS_TEST_RUNTIME`.
    #[track_caller]
    pub fn start(name: &str, version: Version) -> Containerd {
        Self::start_with(name, version, Runtime::from_env())
    }

    #[track_caller]
    pub fn start_with(name: &str, version: Version, runtime: Runtime) -> Containerd {
        match Self::try_start(name, version, runtime) {
            Ok(c) => c,
            Err(e) => panic!("starting containerd {version:?} for {name}: {e}"),
        }
    }

    fn try_start(name: &str, version: Version, runtime: Runtime) -> Result<Containerd, String> {
        preflight(version, runtime)?;
        let full = format!("{name}-{}", version.tag());
        let dir = base_dir().join(&full);
        let namespace = namespace_for(&full);
        if dir.exists() {
            let report = sweep::sweep_instance(&dir, &namespace);
            eprintln!(
                "[ums-tests] swept a stale instance dir {}: {report}",
                dir.display()
            );
        }
        let socket = dir.join("c.sock");
        if socket.as_os_str().len() > 90 {
            return Err(format!("socket path too long: {}", socket.display()));
        }
        for sub in [
            "root", "state", "cni", "cni-ipam", "logs", "runc", "runc-cri", "rootfs", "img",
        ] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("mkdir {}/{sub}: {e}", dir.display()))?;
        }
        let mut c = Containerd {
            name: full.clone(),
            version,
            runtime,
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            socket,
            namespace,
            dir,
            child: None,
            net: None,
        };
        // From here on, Drop cleans up whatever happens.
        let net = NetLease::acquire(&c.dir).map_err(|e| format!("allocating a CNI subnet: {e}"))?;
        fs::write(
            c.dir.join("cni/10-ums-test.conflist"),
            config::cni_conflist(
                &net.network,
                &net.bridge,
                &net.subnet,
                &c.dir.join("cni-ipam"),
            ),
        )
        .map_err(|e| e.to_string())?;
        c.net = Some(net);
        let params = Params {
            version,
            root: c.dir.join("root"),
            state: c.dir.join("state"),
            socket: c.socket.clone(),
            cni_conf_dir: c.dir.join("cni"),
            runc_cri_root: c.dir.join("runc-cri"),
            sandbox_image: PAUSE_IMAGE.into(),
        };
        fs::write(&c.config, config::containerd_toml(&params)).map_err(|e| e.to_string())?;
        c.spawn_daemon()?;
        Ok(c)
    }

    /// PATH for containerd (and so for its shims): the UMS shim's directory, this release's
    /// binaries (its containerd-shim-runc-v2), then the system (runc, criu in /usr/local/sbin).
    fn daemon_path(&self) -> String {
        let shim = util::shim_bin();
        let mut dirs: Vec<PathBuf> = Vec::new();
        if shim
            .file_name()
            .map(|n| n == "containerd-shim-ums-v1")
            .unwrap_or(false)
        {
            if let Some(d) = shim.parent() {
                dirs.push(d.to_path_buf());
            }
        } else {
            // UMS_SHIM_BIN names a file with another name: expose it under the name containerd looks for.
            let bin = self.dir.join("bin");
            let _ = fs::create_dir_all(&bin);
            let link = bin.join("containerd-shim-ums-v1");
            let _ = fs::remove_file(&link);
            let _ = std::os::unix::fs::symlink(&shim, &link);
            dirs.push(bin);
        }
        dirs.push(self.version.bin_dir());
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            dirs.push(PathBuf::from(d));
        }
        dirs.dedup();
        dirs.iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn spawn_daemon(&mut self) -> Result<(), String> {
        self.spawn_daemon_inner().inspect_err(|_| {
            let dst_dir = util::failure_log_dir();
            let _ = fs::create_dir_all(&dst_dir);
            let _ = fs::copy(
                &self.log,
                dst_dir.join(format!("{}.containerd.log", self.name)),
            );
        })
    }

    fn spawn_daemon_inner(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(self.version.containerd_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .env("PATH", self.daemon_path())
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env("UMS_TEST_INSTANCE", &self.name)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // Don't leak our inherited fds (cargo's jobserver pipe, test harness files) into
        // containerd and from there into every shim: mark all fds >= 3 close-on-exec.
        unsafe {
            cmd.pre_exec(|| {
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", self.version.containerd_bin()))?;
        let ctr = self.ctr();
        let ready = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(format!("containerd exited during start-up ({st})")));
            }
            if !self.socket.exists() {
                return None;
            }
            let out = ctr.cmd_timeout(&["version"], Duration::from_secs(5));
            out.success().then_some(Ok(()))
        });
        let res = match ready {
            Some(r) => r,
            None => Err("containerd did not answer `ctr version` within 30 s".into()),
        };
        if let Err(e) = res {
            util::kill_group(&child);
            let _ = child.wait();
            return Err(format!(
                "{e}\n--- {} (tail) ---\n{}",
                self.log.display(),
                util::tail(&self.log, 60)
            ));
        }
        // The plugins the tests need must have loaded (a bad config only shows in the log).
        if let Err(e) = required_plugins_loaded(&ctr) {
            util::kill_group(&child);
            let _ = child.wait();
            return Err(format!(
                "{e}\n--- {} (tail) ---\n{}",
                self.log.display(),
                util::tail(&self.log, 60)
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and leaves its shims and containers running.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            util::signal(child.id() as i32, libc::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(10)).is_none() {
                eprintln!(
                    "[ums-tests] {}: containerd ignored SIGTERM for 10 s, killing it",
                    self.name
                );
                util::kill_group(&child);
                let _ = child.wait();
            }
        }
    }

    /// Restarts containerd on the same root, state, socket and config.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop_daemon();
        if let Err(e) = self.spawn_daemon() {
            panic!("restarting containerd {}: {e}", self.name);
        }
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance's CNI subnet, e.g. `10.213.7.0/24`.
    pub fn subnet(&self) -> Option<&str> {
        self.net.as_ref().map(|n| n.subnet.as_str())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        util::tail(&self.log, lines)
    }

    /// The namespace ctr uses for this instance (unique, so runc state and cgroups never clash).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cgroup parent of all containers of this instance: `/<namespace>`.
    pub fn cgroup_root(&self) -> String {
        format!("/{}", self.namespace)
    }

    /// The bundle directory containerd makes for a task.
    pub fn bundle_dir(&self, namespace: &str, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// ctr on this instance's socket and namespace.
    pub fn ctr(&self) -> Ctr {
        Ctr::new(
            self.version.ctr_bin(),
            self.socket.clone(),
            self.namespace.clone(),
            self.runtime,
            self.dir.clone(),
        )
    }

    /// ctr in the CRI namespace (k8s.io).
    pub fn ctr_k8s(&self) -> Ctr {
        self.ctr().with_namespace("k8s.io")
    }

    /// A fresh busybox rootfs for `ctr run --rootfs` at `<dir>/rootfs/<name>`.
    #[track_caller]
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let d = self.dir.join("rootfs").join(name);
        rootfs::build_busybox_rootfs(&d)
            .unwrap_or_else(|e| panic!("building rootfs {}: {e}", d.display()));
        d
    }

    /// Builds the busybox and pause images and imports both into k8s.io (for CRI) and the ctr namespace.
    #[track_caller]
    pub fn import_test_images(&self) {
        let root = self.dir.join("img/rootfs");
        rootfs::build_busybox_rootfs(&root)
            .unwrap_or_else(|e| panic!("building image rootfs: {e}"));
        let busybox = busybox_spec(BUSYBOX_IMAGE);
        let pause = pause_spec(PAUSE_IMAGE);
        for (spec, file) in [(&busybox, "busybox.tar"), (&pause, "pause.tar")] {
            let tar = self.dir.join("img").join(file);
            write_oci_tarball(&root, spec, &tar)
                .unwrap_or_else(|e| panic!("writing {}: {e}", tar.display()));
            for ctr in [self.ctr_k8s(), self.ctr()] {
                ctr.import_image(&tar);
                let ls = ctr.cmd(&["images", "ls", "-q"]).expect_ok("ctr images ls");
                assert!(
                    ls.stdout.lines().any(|l| l.trim() == spec.name),
                    "image {} missing after import into {}:\n{ls}",
                    spec.name,
                    ctr.namespace()
                );
            }
        }
    }

    /// A CRI client on this instance's socket.
    #[track_caller]
    pub fn cri(&self) -> crate::cri::Cri {
        crate::cri::Cri::connect(&self.socket)
            .unwrap_or_else(|e| panic!("CRI connect to {}: {e}", self.socket.display()))
    }

    /// Removes every task and container (both namespaces) through ctr. Best effort, bounded in time.
    pub fn remove_all_tasks(&self) {
        for ctr in [self.ctr(), self.ctr_k8s()] {
            ctr.remove_all_tasks();
        }
    }

    fn report_failure(&self) {
        let dst_dir = util::failure_log_dir();
        let _ = fs::create_dir_all(&dst_dir);
        let dst = dst_dir.join(format!("{}.containerd.log", self.name));
        let _ = fs::copy(&self.log, &dst);
        eprintln!(
            "\n===== [ums-tests] {}: containerd {:?} log tail ({}; full copy: {}) =====\n{}\n===== end of log tail =====",
            self.name,
            self.version,
            self.log.display(),
            dst.display(),
            self.log_tail(80)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        if self.child.is_some() {
            self.remove_all_tasks();
        }
        self.stop_daemon();
        // The CNI bridge outlives pods by design: not a leak, so release it before the sweep.
        if let Some(net) = self.net.take() {
            net.release();
        }
        let report = sweep::sweep_instance(&self.dir, &self.namespace);
        if !report.is_clean() {
            eprintln!(
                "[ums-tests] {}: teardown had to clean up: {report}",
                self.name
            );
        }
    }
}

/// The gRPC plugins the tests need (cri, tasks, containers, images) loaded: a bad config only
/// shows in containerd's log otherwise. Err has `ctr plugins ls`.
pub fn required_plugins_loaded(ctr: &Ctr) -> Result<(), String> {
    let plugins = ctr.cmd_timeout(&["plugins", "ls"], Duration::from_secs(10));
    let broken: Vec<&str> = plugins
        .stdout
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3
                && f[0] == "io.containerd.grpc.v1"
                && ["cri", "tasks", "containers", "images"].contains(&f[1])
                && f[f.len() - 1] != "ok"
        })
        .collect();
    if !plugins.success() || !broken.is_empty() {
        return Err(format!(
            "required containerd plugins failed to load: {broken:?}\n{plugins}"
        ));
    }
    Ok(())
}

fn preflight(version: Version, runtime: Runtime) -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("the integration tests must run as root".into());
    }
    for b in [version.containerd_bin(), version.ctr_bin()] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing; run hack/install-deps.sh",
                b.display()
            ));
        }
    }
    if runtime == Runtime::Ums {
        let shim = util::shim_bin();
        if !shim.is_file() {
            return Err(format!(
                "the UMS shim binary {} is missing: build it with `cargo build -p ums-shim` or set UMS_SHIM_BIN \
                 (UMS_TEST_RUNTIME=runc runs the suite against containerd's runc shim instead)",
                shim.display()
            ));
        }
    }
    Ok(())
}
