//! Splits the OCI spec containerd gave into the two containers the shim runs:
//! the OUTER (what containerd sees: namespaces, cgroup, limits, hooks; its process is the
//! holder) and the nested SERVICE (the real process, rootfs and mounts, in its own pid and
//! mount namespaces, joining the outer's network/ipc/uts namespaces by path, its cgroup a
//! child of the outer's). Works on JSON values so that fields this crate does not know pass
//! through untouched.
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The program the outer container runs (written into the outer's rootfs).
pub const HOLDER_PATH: &str = "/ums-holder";
/// Name of the service's cgroup below the outer's.
pub const SERVICE_CGROUP: &str = "service";
/// Namespaces the service shares with the outer (kernel name in /proc/PID/ns, OCI type).
const SHARED_NAMESPACES: [(&str, &str); 3] = [("net", "network"), ("ipc", "ipc"), ("uts", "uts")];

/// A spec read from a bundle's config.json and checked enough to be split.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    value: Value,
    rootfs: PathBuf,
}

impl BundleSpec {
    /// Parses config.json text of `bundle`; every error names the problem plainly.
    pub fn parse(bundle: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("invalid config.json: {e}")))?;
        // oci-spec checks field types; our own edits below only touch what they need.
        serde_json::from_value::<oci_spec::runtime::Spec>(value.clone())
            .map_err(|e| Error::InvalidArgument(format!("invalid config.json: {e}")))?;
        let root = value
            .pointer("/root/path")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::InvalidArgument("invalid config.json: no root.path".into()))?;
        let rootfs = bundle.join(root);
        if value
            .pointer("/process/args/0")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(Error::InvalidArgument(
                "invalid config.json: process.args is empty".into(),
            ));
        }
        let cgroups_path = value.pointer("/linux/cgroupsPath").and_then(Value::as_str);
        if cgroups_path.is_some_and(|p| p.contains(':')) {
            return Err(Error::InvalidArgument(format!(
                "systemd cgroup paths are not supported by the ums runtime yet: {}",
                cgroups_path.unwrap_or_default()
            )));
        }
        let has_userns = namespaces(&value)
            .iter()
            .any(|ns| ns.get("type").and_then(Value::as_str) == Some("user"));
        if has_userns {
            return Err(Error::InvalidArgument(
                "user namespaces are not supported by the ums runtime yet".into(),
            ));
        }
        Ok(BundleSpec { value, rootfs })
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value.get("annotations")?.get(key)?.as_str()
    }

    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    pub fn terminal(&self) -> bool {
        self.value
            .pointer("/process/terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The outer's cgroup: the one containerd asked for, or runc's default `/<id>`.
    pub fn cgroups_path(&self, id: &str) -> String {
        self.value
            .pointer("/linux/cgroupsPath")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("/{id}"))
    }

    /// Spec of the outer container, whose rootfs holds only the holder binary.
    pub fn outer(&self, id: &str, outer_rootfs: &Path) -> Value {
        let v = &self.value;
        let mut nss: Vec<Value> = vec![json!({"type": "pid"}), json!({"type": "mount"})];
        nss.extend(
            namespaces(v)
                .into_iter()
                .filter(|ns| {
                    matches!(
                        ns.get("type").and_then(Value::as_str),
                        Some("network" | "ipc" | "uts" | "cgroup")
                    )
                })
                .cloned(),
        );
        let mut linux = Map::new();
        linux.insert("namespaces".into(), Value::Array(nss));
        linux.insert("cgroupsPath".into(), json!(self.cgroups_path(id)));
        for key in ["resources", "sysctl"] {
            if let Some(x) = v.pointer(&format!("/linux/{key}")) {
                linux.insert(key.into(), x.clone());
            }
        }
        let mut spec = json!({
            "ociVersion": v.get("ociVersion").cloned().unwrap_or(json!("1.0.2")),
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": [HOLDER_PATH],
                "env": ["PATH=/"],
                "cwd": "/",
                "noNewPrivileges": true,
            },
            "root": {"path": outer_rootfs, "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            ],
            "linux": linux,
        });
        let obj = spec.as_object_mut().expect("object literal");
        for key in ["hostname", "domainname", "hooks", "annotations"] {
            if let Some(x) = v.get(key) {
                obj.insert(key.into(), x.clone());
            }
        }
        if let Some(adj) = v.pointer("/process/oomScoreAdj") {
            obj["process"]["oomScoreAdj"] = adj.clone();
        }
        spec
    }

    /// Spec of the nested service, given the pid of the running outer holder and the CRIU
    /// configuration file runc hands CRIU for it (`org.criu.config`; CRIU skips it while
    /// it does not exist).
    pub fn service(&self, id: &str, outer_pid: i32, criu_conf: &Path) -> Value {
        let mut spec = self.value.clone();
        let obj = spec.as_object_mut().expect("checked in parse");
        let annotations = obj.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert("org.criu.config".into(), json!(criu_conf));
        }
        // The outer owns the UTS namespace, the hooks and the sysctls.
        for key in ["hostname", "domainname", "hooks"] {
            obj.remove(key);
        }
        obj.insert(
            "root".into(),
            json!({
                "path": self.rootfs,
                "readonly": self.value.pointer("/root/readonly").cloned().unwrap_or(json!(false)),
            }),
        );
        let linux = obj
            .entry("linux")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        let Some(linux) = linux else { return spec };
        linux.remove("sysctl");
        let mut nss: Vec<Value> = namespaces(&self.value)
            .into_iter()
            .filter(|ns| {
                !matches!(
                    ns.get("type").and_then(Value::as_str),
                    Some("network" | "ipc" | "uts" | "mount")
                )
            })
            .cloned()
            .collect();
        if !nss
            .iter()
            .any(|ns| ns.get("type").and_then(Value::as_str) == Some("pid"))
        {
            nss.push(json!({"type": "pid"}));
        }
        nss.push(json!({"type": "mount"}));
        for (kernel, oci) in SHARED_NAMESPACES {
            nss.push(json!({"type": oci, "path": format!("/proc/{outer_pid}/ns/{kernel}")}));
        }
        linux.insert("namespaces".into(), Value::Array(nss));
        linux.insert(
            "cgroupsPath".into(),
            json!(format!(
                "{}/{SERVICE_CGROUP}",
                self.cgroups_path(id).trim_end_matches('/')
            )),
        );
        // Limits live on the outer's cgroup and apply to the child; the device rules must
        // stay, or runc would deny the service every device.
        let devices = linux
            .get("resources")
            .and_then(|r| r.get("devices"))
            .cloned();
        linux.remove("resources");
        if let Some(devices) = devices {
            linux.insert("resources".into(), json!({ "devices": devices }));
        }
        spec
    }
}

fn namespaces(v: &Value) -> Vec<&Value> {
    v.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The exec process spec containerd sends is a JSON OCI `Process`; check it before runc does.
pub fn parse_process(json: &[u8]) -> Result<Value> {
    serde_json::from_slice::<oci_spec::runtime::Process>(json)
        .map_err(|e| Error::InvalidArgument(format!("invalid exec process spec: {e}")))?;
    serde_json::from_slice(json)
        .map_err(|e| Error::InvalidArgument(format!("invalid exec process spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "hostname": "web",
            "process": {"terminal": true, "user": {"uid": 0, "gid": 0}, "args": ["/bin/sh"],
                        "cwd": "/", "oomScoreAdj": 5},
            "root": {"path": "rootfs", "readonly": false},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "hooks": {"createRuntime": [{"path": "/bin/true"}]},
            "linux": {
                "cgroupsPath": "/default/c1",
                "sysctl": {"net.ipv4.ip_forward": "1"},
                "resources": {"memory": {"limit": 1048576},
                              "devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "network", "path": "/var/run/netns/x"}],
                "maskedPaths": ["/proc/kcore"],
            }
        })
    }

    fn parse(v: &Value) -> Result<BundleSpec> {
        BundleSpec::parse(Path::new("/b"), &v.to_string())
    }

    fn ns<'a>(spec: &'a Value, ty: &str) -> Option<&'a Value> {
        namespaces(spec)
            .into_iter()
            .find(|n| n["type"] == json!(ty))
    }

    #[test]
    fn outer_keeps_identity_and_runs_the_holder() {
        let s = parse(&sample()).unwrap();
        assert!(s.terminal());
        let o = s.outer("c1", Path::new("/b/ums/outer/rootfs"));
        assert_eq!(o["process"]["args"], json!([HOLDER_PATH]));
        assert_eq!(o["process"]["terminal"], json!(false));
        assert_eq!(o["root"]["path"], json!("/b/ums/outer/rootfs"));
        assert_eq!(o["linux"]["cgroupsPath"], json!("/default/c1"));
        assert_eq!(o["linux"]["resources"]["memory"]["limit"], json!(1048576));
        assert_eq!(o["linux"]["sysctl"]["net.ipv4.ip_forward"], json!("1"));
        assert_eq!(o["hostname"], json!("web"));
        assert!(o.get("hooks").is_some());
        assert_eq!(
            ns(&o, "network").unwrap()["path"],
            json!("/var/run/netns/x")
        );
        assert!(ns(&o, "pid").is_some() && ns(&o, "mount").is_some());
        assert_eq!(o["process"]["oomScoreAdj"], json!(5));
    }

    #[test]
    fn service_nests_under_the_outer() {
        let s = parse(&sample()).unwrap();
        let v = s.service("c1", 4242, Path::new("/b/ums/service/criu.conf"));
        assert_eq!(v["linux"]["cgroupsPath"], json!("/default/c1/service"));
        assert_eq!(
            v["annotations"]["org.criu.config"],
            json!("/b/ums/service/criu.conf")
        );
        assert_eq!(
            ns(&v, "network").unwrap()["path"],
            json!("/proc/4242/ns/net")
        );
        assert_eq!(ns(&v, "ipc").unwrap()["path"], json!("/proc/4242/ns/ipc"));
        assert_eq!(ns(&v, "uts").unwrap()["path"], json!("/proc/4242/ns/uts"));
        assert!(ns(&v, "pid").unwrap().get("path").is_none());
        assert!(ns(&v, "mount").unwrap().get("path").is_none());
        assert_eq!(v["root"]["path"], json!("/b/rootfs"));
        assert!(v.get("hostname").is_none() && v.get("hooks").is_none());
        assert!(v["linux"].get("sysctl").is_none());
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert_eq!(
            v["linux"]["resources"]["devices"][0]["access"],
            json!("rwm")
        );
        assert_eq!(v["linux"]["maskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(v["process"]["args"], json!(["/bin/sh"]));
    }

    #[test]
    fn default_cgroup_is_runcs() {
        let mut v = sample();
        v["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        let s = parse(&v).unwrap();
        assert_eq!(s.cgroups_path("c9"), "/c9");
        assert_eq!(
            s.service("c9", 1, Path::new("/c"))["linux"]["cgroupsPath"],
            json!("/c9/service")
        );
    }

    #[test]
    fn bad_specs_are_refused_plainly() {
        let err = BundleSpec::parse(Path::new("/b"), "{not json").unwrap_err();
        assert!(err.to_string().starts_with("invalid config.json"), "{err}");
        let mut v = sample();
        v["process"]["args"] = json!([]);
        assert!(parse(&v).unwrap_err().to_string().contains("process.args"));
        let mut v = sample();
        v["linux"]["cgroupsPath"] = json!("system.slice:cri:c1");
        assert!(parse(&v).unwrap_err().to_string().contains("systemd"));
        let mut v = sample();
        v["process"]["args"] = json!("sh");
        assert!(parse(&v).is_err());
    }
}
