//! The two-system test bed of `hack/testbed.sh`: what its Rust helper (`ums-testbed`) does for it
//! (containerd config, readiness, teardown, a CRI smoke pod) and a handle for tests that run on
//! a test bed that is up ([`System::from_env`]).
//!
//! The network layout (namespaces `ums-a`/`ums-b`, addresses, subnets) is defined by
//! `hack/testbed.sh`; everything here takes it as parameters or from the environment that
//! `hack/testbed.sh env` prints.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, Params};
use crate::containerd::{Runtime, Version};
use crate::cri::Cri;
use crate::ctr::Ctr;
use crate::sweep::{self, SweepReport};
use crate::{procfs, util};

/// Base directory of the test bed (`$UMS_TESTBED_DIR`, default /run/ums-testbed).
pub fn base_dir() -> PathBuf {
    std::env::var_os("UMS_TESTBED_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ums-testbed"))
}

/// Test images imported into both systems (namespaces `default` and `k8s.io`).
pub const BUSYBOX_IMAGE: &str = "localhost/ums/busybox:1";
pub const PAUSE_IMAGE: &str = "localhost/ums/pause:1";
pub const MEMHOG_IMAGE: &str = "localhost/ums/memhog:1";
pub const COUNTER_IMAGE: &str = "localhost/ums/counter:1";
pub const MULTIPROC_IMAGE: &str = "localhost/ums/multiproc:1";

/// Parses `1.6` / `2.1` (also `v16`, `v21`, `1.6.20`, `2.1.9`).
pub fn parse_version(s: &str) -> Option<Version> {
    let s = s.trim_start_matches('v');
    if s.starts_with("1.6") || s == "16" {
        Some(Version::V1_6)
    } else if s.starts_with("2.1") || s == "21" {
        Some(Version::V2_1)
    } else {
        None
    }
}

/// One system of the test bed: a containerd with its dir `<base>/<name>`.
#[derive(Clone, Debug)]
pub struct System {
    pub name: String,
    pub version: Version,
    /// `<base>/<name>`: config.toml, containerd.sock, root/, state/, cni/, logs/ ...
    pub dir: PathBuf,
    /// The coordinator's URL, e.g. `http://10.77.0.1:7400`.
    pub url: String,
}

impl System {
    /// A system at `<dir>` (the layout of hack/testbed.sh).
    pub fn new(name: &str, version: Version, dir: &Path, url: &str) -> System {
        System {
            name: name.into(),
            version,
            dir: dir.to_path_buf(),
            url: url.into(),
        }
    }

    /// System `a` or `b` of a test bed that is up, from the variables `hack/testbed.sh env`
    /// prints (`UMS_A_SOCK`, `UMS_A_URL`, `UMS_A_CONTAINERD_VERSION`, ...), defaulting to the
    /// script's layout. None when the socket does not exist.
    pub fn from_env(name: &str) -> Option<System> {
        let up = name.to_ascii_uppercase();
        let var = |k: &str| {
            std::env::var(format!("UMS_{up}_{k}"))
                .ok()
                .filter(|s| !s.is_empty())
        };
        let sock = var("SOCK")
            .map(PathBuf::from)
            .unwrap_or_else(|| base_dir().join(name).join("containerd.sock"));
        let dir = sock.parent()?.to_path_buf();
        let version = var("CONTAINERD_VERSION")
            .and_then(|v| parse_version(&v))
            .unwrap_or(if name == "b" {
                Version::V2_1
            } else {
                Version::V1_6
            });
        let url = var("URL").unwrap_or_else(|| coordinator_url(name));
        sock.exists()
            .then(|| System::new(name, version, &dir, &url))
    }

    /// Where the destination shims receive images (`--image-dir` of the test bed's
    /// coordinator).
    pub fn image_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's state dir (bundles under `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// ctr in namespace `ns` (runtime `io.containerd.ums.v1`; logs and fifos under the dir).
    pub fn ctr_ns(&self, ns: &str) -> Ctr {
        Ctr::new(
            self.version.ctr_bin(),
            self.socket(),
            ns.into(),
            Runtime::Ums,
            self.dir.clone(),
        )
    }

    /// ctr in namespace `default`.
    pub fn ctr(&self) -> Ctr {
        self.ctr_ns("default")
    }

    /// ctr in the CRI namespace `k8s.io`.
    pub fn ctr_k8s(&self) -> Ctr {
        self.ctr_ns("k8s.io")
    }

    pub fn cri(&self) -> Result<Cri, String> {
        Cri::connect(&self.socket())
    }

    /// Writes `config.toml` (CRI with handler `ums`, `restrict_oom_score_adj`, sandbox image
    /// [`PAUSE_IMAGE`]) and the CNI conflist (bridge `bridge`, host-local `subnet`) into the dir.
    pub fn write_config(&self, network: &str, bridge: &str, subnet: &str) -> std::io::Result<()> {
        for sub in ["root", "state", "cni", "cni-ipam", "logs", "runc-cri"] {
            fs::create_dir_all(self.dir.join(sub))?;
        }
        let params = Params {
            version: self.version,
            root: self.root(),
            state: self.state(),
            socket: self.socket(),
            cni_conf_dir: self.cni_dir(),
            runc_cri_root: self.dir.join("runc-cri"),
            sandbox_image: PAUSE_IMAGE.into(),
        };
        write_if_changed(&self.config_path(), &config::containerd_toml(&params))?;
        // containerd watches the CNI conf dir: an unchanged file is not touched, a changed one is
        // replaced atomically (a truncating write is seen half-written: "error parsing").
        write_if_changed(
            &self.cni_dir().join("10-ums.conflist"),
            &config::cni_conflist(network, bridge, subnet, &self.dir.join("cni-ipam")),
        )
    }

    /// Waits until containerd answers, its gRPC plugins loaded, and CRI reports RuntimeReady
    /// and NetworkReady.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let ctr = self.ctr();
        let answered = util::wait_for(timeout, Duration::from_millis(100), || {
            (self.socket().exists()
                && ctr
                    .cmd_timeout(&["version"], Duration::from_secs(5))
                    .success())
            .then_some(())
        });
        if answered.is_none() {
            return Err(format!(
                "containerd on {} did not answer `ctr version` within {timeout:?}",
                self.socket().display()
            ));
        }
        crate::containerd::required_plugins_loaded(&ctr)?;
        self.cri()?.wait_ready(timeout)
    }

    /// Graceful part of the teardown, while containerd still runs: CRI pods stopped and removed
    /// (CNI releases their addresses), then every task killed and deleted and every container
    /// deleted in every namespace (the shims clean their runc state and cgroups). Best effort.
    pub fn remove_everything(&self) -> Vec<String> {
        let mut done = Vec::new();
        if let Ok(mut cri) = self.cri() {
            if let Ok((pods, _)) = cri.list() {
                for p in pods {
                    let _ = cri.stop_pod(&p);
                    match cri.remove_pod(&p) {
                        Ok(()) => done.push(format!("removed pod {p}")),
                        Err(e) => done.push(format!("removing pod {p}: {e}")),
                    }
                }
            }
        }
        let ctr = self.ctr();
        for ns in ctr.namespaces() {
            let c = self.ctr_ns(&ns);
            let n = c.tasks().len();
            c.remove_all_tasks();
            if n > 0 {
                done.push(format!("removed {n} task(s) in namespace {ns}"));
            }
        }
        done
    }

    /// A CRI pod with runtime handler `handler` running `image` (its own entrypoint) under the
    /// cgroup parent `cgroup_parent`: created, started, checked RUNNING, exec'd into (`cat
    /// /tmp/counter` for the counter image, `true` otherwise). Returns a description; removes
    /// the pod unless `keep`.
    pub fn cri_pod(
        &self,
        name: &str,
        handler: &str,
        image: &str,
        cgroup_parent: &str,
        keep: bool,
    ) -> Result<String, String> {
        let mut cri = self.cri()?;
        cri.wait_ready(Duration::from_secs(30))?;
        if !cri.image_present(image)? {
            return Err(format!("CRI does not know image {image}"));
        }
        let log_dir = self.dir.join("logs").join(format!("pod-{name}"));
        fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let uid = format!("{name}-{}", std::process::id());
        let config = Cri::pod_config(name, &uid, cgroup_parent, &log_dir);
        let pod = cri.run_pod(config, handler)?;
        let result = (|| {
            let ip = cri.pod_ip(&pod.id)?;
            let cid = cri.create_container(&pod, "svc", image, &[])?;
            cri.start_container(&cid)?;
            let running = util::wait_for(
                Duration::from_secs(20),
                Duration::from_millis(200),
                || match cri.container_status(&cid) {
                    Ok((crate::cri::ContainerState::ContainerRunning, pid, _)) => Some(Ok(pid)),
                    Ok((crate::cri::ContainerState::ContainerExited, _, st)) => Some(Err(format!(
                        "container exited: code {} reason {} message {}",
                        st.exit_code, st.reason, st.message
                    ))),
                    _ => None,
                },
            )
            .unwrap_or_else(|| Err("container not RUNNING within 20 s".into()))?;
            std::thread::sleep(Duration::from_millis(500));
            let probe: &[&str] = if image == COUNTER_IMAGE {
                &["cat", "/tmp/counter"]
            } else {
                &["true"]
            };
            let (code, out, err) = cri.exec_sync(&cid, probe, 10)?;
            if code != 0 {
                return Err(format!("exec {probe:?} exited {code}: {out}{err}"));
            }
            Ok(format!(
                "pod {} ({name}, handler {handler}) ip {ip}; container {cid} ({image}) RUNNING pid {}; exec {probe:?}: {}",
                pod.id,
                running.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                out.trim()
            ))
        })();
        if !keep {
            let _ = cri.stop_pod(&pod.id);
            if let Err(e) = cri.remove_pod(&pod.id) {
                return Err(format!(
                    "{}; and removing the pod failed: {e}",
                    result.err().unwrap_or_else(|| "pod ran".into())
                ));
            }
        }
        result
    }
}

/// The address of system `name`'s coordinator as `hack/testbed.sh` sets it up (a: 10.77.0.1,
/// b: 10.77.0.2, port 7400; the addresses live inside the system's network namespace), with
/// [`coordinator_scheme`].
pub fn coordinator_url(name: &str) -> String {
    let ip = if name == "b" {
        "10.77.0.2"
    } else {
        "10.77.0.1"
    };
    format!("{}://{ip}:7400", coordinator_scheme())
}

/// `https`, as `hack/testbed.sh` serves the coordinators over TLS, unless `UMS_TESTBED_TLS=0`
/// turns it off (for the script and the tests alike).
pub fn coordinator_scheme() -> &'static str {
    if std::env::var("UMS_TESTBED_TLS").is_ok_and(|v| v == "0") {
        "http"
    } else {
        "https"
    }
}

/// A test bed of `hack/testbed.sh` that a test binary brings up for itself, next to the default
/// one: its own namespaces `<prefix>-a`/`<prefix>-b` and base dir (`UMS_TESTBED_NETNS_PREFIX`,
/// `UMS_TESTBED_DIR`), the shim and `ums` from `bin_dir` (`UMS_BIN_DIR`).
#[derive(Clone, Debug)]
pub struct Bed {
    pub prefix: String,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    /// containerd 1.6, coordinator on 10.77.0.1:7400.
    pub a: System,
    /// containerd 2.1, coordinator on 10.77.0.2:7400.
    pub b: System,
}

/// The outcome of one `ums migrate --json`: the command's output and the JSON report it printed
/// on stdout (None when it printed none, e.g. after a failure).
#[derive(Clone, Debug)]
pub struct Migration {
    pub out: util::Output,
    pub report: Option<serde_json::Value>,
}

impl Migration {
    /// The outcome of a `ums migrate --json` that ran (its last JSON object line is the report).
    pub fn of(out: util::Output) -> Migration {
        let report = out
            .stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
            .find(|v| v.is_object());
        Migration { out, report }
    }

    /// Exit 0 with a report.
    pub fn ok(&self) -> bool {
        self.out.success() && self.report.is_some()
    }
}

impl Bed {
    pub fn new(prefix: &str, dir: &Path, bin_dir: &Path) -> Bed {
        Bed {
            prefix: prefix.into(),
            dir: dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            a: System::new("a", Version::V1_6, &dir.join("a"), &coordinator_url("a")),
            b: System::new("b", Version::V2_1, &dir.join("b"), &coordinator_url("b")),
        }
    }

    /// `hack/testbed.sh ARGS` for this test bed.
    pub fn script(&self, args: &[&str], timeout: Duration) -> util::Output {
        let mut c = std::process::Command::new(util::workspace_dir().join("hack/testbed.sh"));
        c.args(args)
            .env("UMS_TESTBED_NETNS_PREFIX", &self.prefix)
            .env("UMS_TESTBED_DIR", &self.dir)
            .env("UMS_BIN_DIR", &self.bin_dir);
        if self.bin_dir.join("ums-mkimage").is_file() && self.bin_dir.join("ums-testbed").is_file()
        {
            c.env("UMS_TOOLS_DIR", &self.bin_dir);
        }
        util::run(&mut c, None, timeout)
    }

    /// The network namespace of `sys` (`/run/netns/<prefix>-<name>`).
    pub fn netns(&self, sys: &System) -> PathBuf {
        Path::new("/run/netns").join(format!("{}-{}", self.prefix, sys.name))
    }

    /// Whether anything of this test bed exists (its dir or one of its namespaces).
    pub fn exists(&self) -> bool {
        self.dir.exists() || self.netns(&self.a).exists() || self.netns(&self.b).exists()
    }

    /// `up` (after a `down` of what an interrupted run left), then `status`. Err has the
    /// script's output.
    pub fn up(&self) -> Result<String, String> {
        let mut log = String::new();
        if self.exists() {
            let d = self.script(&["down"], Duration::from_secs(240));
            log.push_str(&format!(
                "a test bed was left at {}: down first\n{d}\n",
                self.dir.display()
            ));
            if !d.success() {
                return Err(log);
            }
        }
        let up = self.script(&["up"], Duration::from_secs(600));
        log.push_str(&format!("{up}\n"));
        if !up.success() {
            return Err(log);
        }
        let st = self.script(&["status"], Duration::from_secs(60));
        log.push_str(&format!("{st}\n"));
        if !st.success() {
            return Err(log);
        }
        Ok(log)
    }

    /// `down`; Err has the script's output.
    pub fn down(&self) -> Result<String, String> {
        let d = self.script(&["down"], Duration::from_secs(240));
        if d.success() && !self.exists() {
            Ok(d.to_string())
        } else {
            Err(format!(
                "{d}\n(left: dir {} exists: {}, namespaces: {} {})",
                self.dir.display(),
                self.dir.exists(),
                self.netns(&self.a).exists(),
                self.netns(&self.b).exists()
            ))
        }
    }

    /// The token the coordinators share with their clients.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// The test bed's CA (it signed the coordinators' certificates `tls/<system>.pem`).
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// `bin_dir/ums ARGS` run inside the network namespace of `sys` (where the coordinators'
    /// addresses are reachable), like `$UMS_A_EXEC ums ...`, with the test bed's token and CA
    /// (`UMS_TOKEN_FILE`, `UMS_TLS_CA`).
    pub fn ums_command(&self, sys: &System, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={}", self.netns(sys).display()))
            .arg("--")
            .arg(self.bin_dir.join("ums"))
            .args(args)
            .env("UMS_TOKEN_FILE", self.token_file());
        if self.tls_ca().is_file() {
            c.env("UMS_TLS_CA", self.tls_ca());
        } else {
            c.env_remove("UMS_TLS_CA");
        }
        c
    }

    pub fn ums(&self, sys: &System, args: &[&str], timeout: Duration) -> util::Output {
        util::run(&mut self.ums_command(sys, args), None, timeout)
    }

    fn migrate_args<'a>(from: &'a System, to: &'a System, reference: &'a str) -> [&'a str; 7] {
        [
            "migrate", "--from", &from.url, "--to", &to.url, reference, "--json",
        ]
    }

    /// `ums migrate --from <from> --to <to> REFERENCE --json`, run in `from`'s namespace.
    pub fn migrate(&self, from: &System, to: &System, reference: &str) -> Migration {
        self.migrate_with(from, to, reference, &[])
    }

    /// `ums migrate --from <from> --to <to> REFERENCE --json EXTRA...` (e.g. `--approach
    /// orchestrator`, `--dry-run`, `--to-interface cri`), run in `from`'s namespace.
    pub fn migrate_with(
        &self,
        from: &System,
        to: &System,
        reference: &str,
        extra: &[&str],
    ) -> Migration {
        let mut args = Self::migrate_args(from, to, reference).to_vec();
        args.extend_from_slice(extra);
        Migration::of(self.ums(from, &args, Duration::from_secs(300)))
    }

    /// The same in the background; [`Bed::finish_migrate`] collects it.
    pub fn spawn_migrate(
        &self,
        from: &System,
        to: &System,
        reference: &str,
    ) -> std::io::Result<util::Spawned> {
        self.spawn_migrate_with(from, to, reference, &[])
    }

    /// [`Bed::spawn_migrate`] with extra arguments (see [`Bed::migrate_with`]).
    pub fn spawn_migrate_with(
        &self,
        from: &System,
        to: &System,
        reference: &str,
        extra: &[&str],
    ) -> std::io::Result<util::Spawned> {
        let mut args = Self::migrate_args(from, to, reference).to_vec();
        args.extend_from_slice(extra);
        util::spawn(&mut self.ums_command(from, &args))
    }

    pub fn finish_migrate(&self, m: util::Spawned) -> Migration {
        Migration::of(m.wait(Duration::from_secs(300)))
    }

    /// The cgroup parent of the containers `sys`'s coordinator creates (`/<prefix>-testbed-<name>`).
    pub fn cgroup_parent(&self, sys: &System) -> String {
        format!("/{}-testbed-{}", self.prefix, sys.name)
    }

    /// `hack/testbed.sh coordinator <sys> start|stop|kill`.
    pub fn coordinator(&self, sys: &System, action: &str) -> util::Output {
        self.script(&["coordinator", &sys.name, action], Duration::from_secs(60))
    }

    /// The pid of `sys`'s coordinator as `hack/testbed.sh` recorded it, if that process runs.
    pub fn coordinator_pid(&self, sys: &System) -> Option<i32> {
        let pid: i32 = fs::read_to_string(sys.dir.join("coordinator.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        procfs::cmdline(pid)
            .iter()
            .any(|a| a == "coordinator")
            .then_some(pid)
    }

    pub fn coordinator_log(&self, sys: &System) -> PathBuf {
        sys.dir.join("coordinator.log")
    }

    pub fn containerd_log(&self, sys: &System) -> PathBuf {
        sys.dir.join("containerd.log")
    }

    /// The stdout/stderr log of a service `sys`'s coordinator restored (its `--state-dir` is
    /// `<sys dir>/coordinator`).
    pub fn restored_log(&self, sys: &System, ns: &str, id: &str) -> PathBuf {
        sys.dir
            .join("coordinator/logs")
            .join(ns)
            .join(format!("{id}.log"))
    }

    /// What `sys` still holds of container `ns/id`: container, task, snapshot (containerd's
    /// view), bundle dir, shim processes, the cgroup its coordinator would make
    /// (`<parent>/<ns>/<id>`) and, with `ctr_cgroup`, the ctr-style `/<ns>/<id>` (only
    /// meaningful when no other system has a container of that name). Empty: nothing left.
    pub fn leftovers(&self, sys: &System, ns: &str, id: &str, ctr_cgroup: bool) -> Vec<String> {
        let mut left = Vec::new();
        let ctr = sys.ctr_ns(ns);
        match ctr.container_ids() {
            Ok(ids) if ids.iter().any(|c| c == id) => left.push(format!("container {id}")),
            Ok(_) => {}
            Err(o) => left.push(format!("ctr containers ls failed:\n{o}")),
        }
        if let Some(t) = ctr.task(id) {
            left.push(format!("task {id} ({}, pid {})", t.status, t.pid));
        }
        match ctr.snapshot_keys() {
            Ok(keys) if keys.iter().any(|k| k == id) => left.push(format!("snapshot {id}")),
            Ok(_) => {}
            Err(o) => left.push(format!("ctr snapshots ls failed:\n{o}")),
        }
        let bundle = sys
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id);
        if bundle.exists() {
            left.push(format!("bundle dir {}", bundle.display()));
        }
        // Images of any migration (the tests run one at a time).
        for e in fs::read_dir(sys.image_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("received images {}", e.path().display()));
        }
        let sock = sys.socket().to_string_lossy().into_owned();
        for p in procfs::pids_with_arg_pair("-id", id) {
            let argv = procfs::cmdline(p);
            if argv.iter().any(|a| a == &sock) {
                left.push(format!("shim process {p}: {}", argv.join(" ")));
            }
        }
        let mut cgroups = vec![format!("{}/{ns}/{id}", self.cgroup_parent(sys))];
        if ctr_cgroup {
            cgroups.push(format!("/{ns}/{id}"));
        }
        for m in procfs::cgroup_mounts() {
            for c in &cgroups {
                let d = m.join(c.trim_start_matches('/'));
                if d.is_dir() {
                    left.push(format!("cgroup {}", d.display()));
                }
            }
        }
        left
    }

    /// Copies the logs of both systems (containerd, coordinator, services) to `to`.
    pub fn save_logs(&self, to: &Path) -> std::io::Result<()> {
        for sys in [&self.a, &self.b] {
            let dest = to.join(&sys.name);
            fs::create_dir_all(&dest)?;
            for f in ["containerd.log", "coordinator.log"] {
                let src = sys.dir.join(f);
                if src.is_file() {
                    fs::copy(&src, dest.join(f))?;
                }
            }
            copy_tree(&sys.dir.join("logs"), &dest.join("logs"))?;
            copy_tree(
                &sys.dir.join("coordinator/logs"),
                &dest.join("restored-logs"),
            )?;
        }
        Ok(())
    }
}

/// Copies the regular files under `from` (recursively) into `to`; a missing `from` is no error.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let Ok(rd) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to)?;
    for e in rd.flatten() {
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        } else if ft.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Writes `content` to `path` through a temp file and a rename, unless it already holds exactly
/// that.
fn write_if_changed(path: &Path, content: &str) -> std::io::Result<()> {
    if fs::read(path)
        .map(|c| c == content.as_bytes())
        .unwrap_or(false)
    {
        return Ok(());
    }
    // The temp file must not end in .conflist/.conf/.json: containerd would try to load it.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

/// The cgroup paths (`linux.cgroupsPath`, or `/<id>` without one) of every bundle containerd
/// made under `state` (tasks of all namespaces, CRI sandboxes included). systemd-style paths
/// (`slice:prefix:name`) are skipped.
pub fn bundle_cgroups(state: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let tasks = state.join("io.containerd.runtime.v2.task");
    for ns in fs::read_dir(&tasks).into_iter().flatten().flatten() {
        for b in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let id = b.file_name().to_string_lossy().into_owned();
            let path = fs::read(b.path().join("config.json"))
                .ok()
                .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok())
                .and_then(|v| {
                    v.pointer("/linux/cgroupsPath")
                        .and_then(|p| p.as_str())
                        .map(String::from)
                })
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| format!("/{id}"));
            if !path.contains(':') {
                out.push(path);
            }
        }
    }
    out
}

/// `net:[inode]` of a named network namespace (`/run/netns/<name>`), as `/proc/<pid>/ns/net` reads.
pub fn netns_id(name: &str) -> Option<String> {
    fs::metadata(Path::new("/run/netns").join(name))
        .ok()
        .map(|m| format!("net:[{}]", m.ino()))
}

/// Forceful teardown of the test bed under `base` (after the graceful part and after containerd
/// was asked to stop): kills every process that belongs to it — whose argv names a path under
/// `base` (containerds, shims, coordinators, runc), whose root is under `base`, that lives in one
/// of the network namespaces `netns` or in a container's cgroup, and their descendants
/// (containers, children of shims) — then unmounts
/// everything under `base`, removes the containers' cgroups and the trees `owned_cgroups` (the
/// test bed's own cgroup parents, e.g. `/ums-testbed-a`), the parents when empty, and the shim
/// sockets. The network namespaces and `base` itself are left to the caller.
pub fn sweep(base: &Path, netns: &[String], owned_cgroups: &[String]) -> SweepReport {
    let mut r = SweepReport::default();
    let me = std::process::id() as i32;
    let mut spared = sweep::ancestors(me);
    spared.push(me);
    let base_s = base.to_string_lossy().trim_end_matches('/').to_string();
    let base_prefix = format!("{base_s}/");

    let systems: Vec<PathBuf> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("state").is_dir())
        .collect();
    let mut sockets = Vec::new();
    let mut cgroups: Vec<String> = owned_cgroups.to_vec();
    // containerd namespaces the systems used: `/<ns>` is the parent runc made for ctr-style
    // containers (`/<ns>/<id>`), removed at the end when empty.
    let mut ns_parents: Vec<String> = Vec::new();
    for s in &systems {
        sockets.extend(sweep::shim_sockets(s));
        cgroups.extend(bundle_cgroups(&s.join("state")));
        let tasks = s.join("state/io.containerd.runtime.v2.task");
        for ns in fs::read_dir(tasks).into_iter().flatten().flatten() {
            ns_parents.push(format!("/{}", ns.file_name().to_string_lossy()));
        }
    }
    let ns_ids: HashSet<String> = netns.iter().filter_map(|n| netns_id(n)).collect();

    // Our own cgroups (and their ancestors) must never be removed.
    let mine: Vec<String> = procfs::cgroups(me).into_iter().map(|c| c.path).collect();
    let removable = |p: &str| {
        let p = p.trim_end_matches('/');
        !p.is_empty() && !mine.iter().any(|m| m == p || procfs::cgroup_is_under(m, p))
    };
    // Cgroups of container processes (rooted under base) that no bundle names (restored ones).
    for p in procfs::all_pids() {
        if matches!(procfs::root_of(p), Some(root) if root.starts_with(base)) {
            for c in procfs::cgroups(p) {
                cgroups.push(c.path);
            }
        }
    }
    cgroups.retain(|c| removable(c));
    cgroups.sort();
    cgroups.dedup();

    let belongs = |p: i32| -> bool {
        if spared.contains(&p) {
            return false;
        }
        if procfs::cmdline(p)
            .iter()
            .any(|a| a == &base_s || a.starts_with(&base_prefix) || a.contains(&base_prefix))
        {
            return true;
        }
        if matches!(procfs::root_of(p), Some(root) if root.starts_with(base)) {
            return true;
        }
        if matches!(procfs::ns(p, "net"), Some(n) if ns_ids.contains(&n)) {
            return true;
        }
        procfs::cgroups(p).iter().any(|c| {
            cgroups
                .iter()
                .any(|cg| &c.path == cg || procfs::cgroup_is_under(&c.path, cg))
        })
    };
    // Container processes live in their own mount (and often network) namespaces, where
    // /proc/<pid>/root does not show the bundle: they are found as descendants of the shims, so
    // the whole process tree under what belongs is taken now, before killing reparents it.
    let first: Vec<procfs::ProcId> = {
        let all = procfs::all_pids();
        let mut set: HashSet<i32> = all.iter().copied().filter(|&p| belongs(p)).collect();
        loop {
            let more: Vec<i32> = all
                .iter()
                .copied()
                .filter(|p| !set.contains(p) && !spared.contains(p))
                .filter(|&p| matches!(procfs::stat(p), Some((_, pp, _)) if set.contains(&pp)))
                .collect();
            if more.is_empty() {
                break;
            }
            set.extend(more);
        }
        set.into_iter().filter_map(procfs::ProcId::of).collect()
    };
    sweep::kill_until_gone(
        &mut r,
        || cgroups.iter().for_each(|c| sweep::thaw_tree(c)),
        || {
            let mut v: Vec<i32> = procfs::all_pids()
                .into_iter()
                .filter(|&p| belongs(p))
                .collect();
            v.extend(first.iter().filter(|id| id.alive()).map(|id| id.pid));
            v.sort_unstable();
            v.dedup();
            v
        },
    );

    sweep::unmount_under(&mut r, base);

    let removed = sweep::remove_cgroup_trees(&mut r, &cgroups);
    if !cgroups.is_empty() {
        r.actions.push(format!(
            "removed {} cgroup tree(s) of the test bed ({} dirs below them)",
            cgroups.len(),
            removed
        ));
    }
    // Parents made by runc's mkdir -p (`/default`, `/k8s.io`, pod cgroup parents): only if empty.
    let mut parents: Vec<String> = ns_parents.into_iter().filter(|p| removable(p)).collect();
    for c in &cgroups {
        let mut p = Path::new(c).parent();
        while let Some(d) = p {
            let s = d.to_string_lossy().into_owned();
            if s == "/" || s.is_empty() || !removable(&s) {
                break;
            }
            parents.push(s);
            p = d.parent();
        }
    }
    parents.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parents.dedup();
    for m in procfs::cgroup_mounts() {
        for p in &parents {
            let _ = fs::remove_dir(m.join(p.trim_start_matches('/')));
        }
    }

    sweep::remove_sockets(&mut r, sockets);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.6"), Some(Version::V1_6));
        assert_eq!(parse_version("2.1.9"), Some(Version::V2_1));
        assert_eq!(parse_version("v21"), Some(Version::V2_1));
        assert_eq!(parse_version("1.7"), None);
    }

    #[test]
    fn bundle_cgroups_of_a_state_dir() {
        let state = util::scratch_path("tb-state");
        let b1 = state.join("io.containerd.runtime.v2.task/default/web");
        let b2 = state.join("io.containerd.runtime.v2.task/k8s.io/pod1");
        let b3 = state.join("io.containerd.runtime.v2.task/k8s.io/sd");
        for b in [&b1, &b2, &b3] {
            fs::create_dir_all(b).unwrap();
        }
        fs::write(
            b1.join("config.json"),
            r#"{"linux":{"cgroupsPath":"/default/web"}}"#,
        )
        .unwrap();
        fs::write(b2.join("config.json"), r#"{"linux":{}}"#).unwrap();
        fs::write(
            b3.join("config.json"),
            r#"{"linux":{"cgroupsPath":"system.slice:cri:sd"}}"#,
        )
        .unwrap();
        let mut v = bundle_cgroups(&state);
        v.sort();
        assert_eq!(v, vec!["/default/web".to_string(), "/pod1".to_string()]);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn writes_a_config() {
        let dir = util::scratch_path("tb-sys");
        let s = System::new("a", Version::V1_6, &dir, "http://10.77.0.1:7400");
        s.write_config("ums-a", "umsbr-a", "10.78.1.0/24").unwrap();
        let toml = fs::read_to_string(s.config_path()).unwrap();
        assert!(toml.contains("sandbox_image = \"localhost/ums/pause:1\""));
        assert!(toml.contains(&s.socket().to_string_lossy().to_string()));
        let conflist = s.cni_dir().join("10-ums.conflist");
        let cni = fs::read_to_string(&conflist).unwrap();
        assert!(cni.contains("10.78.1.0/24") && cni.contains("umsbr-a"));
        // Unchanged: not rewritten (containerd watches the dir).
        let before = fs::metadata(&conflist).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_config("ums-a", "umsbr-a", "10.78.1.0/24").unwrap();
        assert_eq!(fs::metadata(&conflist).unwrap().modified().unwrap(), before);
        s.write_config("ums-a", "umsbr-a", "10.78.9.0/24").unwrap();
        assert!(fs::read_to_string(&conflist)
            .unwrap()
            .contains("10.78.9.0/24"));
        assert_eq!(fs::read_dir(s.cni_dir()).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
