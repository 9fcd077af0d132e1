//! The OCI runtime spec of the destination container: the source container's spec with the
//! restore marker added and the parts that belong to the source system rewritten.
//!
//! Worked on as JSON (not a typed spec) so that every field we do not know is carried over
//! untouched.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::refs::ContainerRef;

/// The annotation that tells the destination shim to restore migration `<value>` instead of
/// starting the service fresh.
pub const RESTORE_ANNOTATION: &str = "io.ums.restore";

/// The container label naming the migration that created a destination container.
pub const MIGRATION_LABEL: &str = "io.ums.migration";

/// containerd's CRI plugin labels its containers `io.cri-containerd.kind=sandbox|container`...
pub const CRI_KIND_LABEL: &str = "io.cri-containerd.kind";
/// ... and annotates their specs `io.kubernetes.cri.container-type=sandbox|container`.
pub const CRI_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The pod sandbox a CRI container belongs to (the ums shim, like runc's, serves a pod's
/// containers from one shim chosen by this annotation).
pub const CRI_SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const CRI_SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
const CRI_SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
const CRI_CONTAINER_NAME_ANNOTATION: &str = "io.kubernetes.cri.container-name";
/// Labels and annotations with these prefixes tie a container to a pod (kubelet's and the CRI
/// plugin's): a CRI container migrated to a system without that pod drops them.
const CRI_PREFIXES: [&str; 2] = ["io.kubernetes.", "io.cri-containerd."];
/// Labels a destination container gets in place of the source's CRI ones: where it came from.
pub const CRI_POD_LABEL: &str = "io.ums.cri.pod";
pub const CRI_CONTAINER_LABEL: &str = "io.ums.cri.container";
pub const CRI_SANDBOX_LABEL: &str = "io.ums.cri.sandbox-id";

/// What a container is to containerd's CRI plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriKind {
    /// A pod sandbox (the pause container holding the pod's namespaces).
    Sandbox,
    /// A container of a pod.
    Container,
}

/// The CRI kind of a container from its labels and its spec's annotations; `None`: not a CRI
/// container (ctr and other clients). A sandbox mark on either wins.
pub fn cri_kind(labels: &HashMap<String, String>, spec: &Value) -> Option<CriKind> {
    let marks = [
        labels.get(CRI_KIND_LABEL).map(String::as_str),
        annotation(spec, CRI_TYPE_ANNOTATION),
    ];
    if marks.contains(&Some("sandbox")) {
        Some(CriKind::Sandbox)
    } else if marks.contains(&Some("container"))
        || annotation(spec, CRI_SANDBOX_ID_ANNOTATION).is_some()
    {
        Some(CriKind::Container)
    } else {
        None
    }
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// The pod a CRI container belongs to, from its spec's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriPod {
    pub sandbox_id: String,
    /// The pod's Kubernetes namespace and name, and the container's name in the pod.
    pub namespace: String,
    pub name: String,
    pub container: String,
}

impl CriPod {
    pub fn of(spec: &Value) -> Option<CriPod> {
        let get = |k| annotation(spec, k).unwrap_or_default().to_string();
        let pod = CriPod {
            sandbox_id: get(CRI_SANDBOX_ID_ANNOTATION),
            namespace: get(CRI_SANDBOX_NAMESPACE_ANNOTATION),
            name: get(CRI_SANDBOX_NAME_ANNOTATION),
            container: get(CRI_CONTAINER_NAME_ANNOTATION),
        };
        (pod != CriPod::default()).then_some(pod)
    }
}

impl std::fmt::Display for CriPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}/{}", self.namespace, self.name)?;
        if !self.sandbox_id.is_empty() {
            let short = self.sandbox_id.get(..12).unwrap_or(&self.sandbox_id);
            write!(f, " (sandbox {short})")?;
        }
        Ok(())
    }
}

/// Checks, on the source, a container's labels and spec: [`check_source_spec`], and a pod
/// sandbox marked by its labels only is refused too.
pub fn check_source_container(
    spec: &Value,
    labels: &HashMap<String, String>,
    r: &ContainerRef,
) -> Result<Option<CriKind>> {
    let kind = cri_kind(labels, spec);
    if kind == Some(CriKind::Sandbox) {
        return Err(sandbox_refused(spec, r));
    }
    check_source_spec(spec, r)?;
    Ok(kind)
}

fn sandbox_refused(spec: &Value, r: &ContainerRef) -> Error {
    let pod = CriPod::of(spec)
        .map(|p| format!(" of pod {}/{}", p.namespace, p.name))
        .unwrap_or_default();
    Error::Unsupported(format!(
        "{r} is a CRI pod sandbox{pod} (its pause container, holding the pod's namespaces): a \
         sandbox cannot be migrated; migrate the pod's containers (k8s.io/<container id>): each \
         moves into a pod created through the destination's CRI, or as a plain container"
    ))
}

/// Checks, on the source, that the spec can be moved by the container-level approach.
/// Returns the reason it cannot otherwise. A CRI container may join its pod's network, ipc and
/// uts namespaces (the destination gives it new ones); a pod sandbox and a container sharing
/// its pod's pid namespace are refused.
pub fn check_source_spec(spec: &Value, r: &ContainerRef) -> Result<()> {
    let obj = spec
        .as_object()
        .ok_or_else(|| Error::Internal(format!("the OCI spec of {r} is not a JSON object")))?;
    let cri = cri_kind(&HashMap::new(), spec);
    if cri == Some(CriKind::Sandbox) {
        return Err(sandbox_refused(spec, r));
    }
    if obj
        .get("process")
        .and_then(|p| p.get("terminal"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Err(Error::Unsupported(format!(
            "{r} runs with a terminal (ctr run -t): the container-level approach moves services \
             with pipes or files as stdio only"
        )));
    }
    if let Some(nss) = obj
        .get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
    {
        for ns in nss {
            let ty = ns.get("type").and_then(Value::as_str).unwrap_or("");
            let path = ns.get("path").and_then(Value::as_str).unwrap_or("");
            let pods = cri == Some(CriKind::Container) && POD_NAMESPACES.contains(&ty);
            if cri == Some(CriKind::Container) && ty == "pid" && !path.is_empty() {
                return Err(Error::Unsupported(format!(
                    "{r} shares its pod's pid namespace ({path}; CRI pid mode POD, e.g. \
                     shareProcessNamespace: true): CRIU dumps it as an external pid namespace, \
                     which it cannot restore outside that pod; pod containers with a pid \
                     namespace of their own (the Kubernetes default) can migrate"
                )));
            }
            if ty != "network" && !pods && !path.is_empty() {
                return Err(Error::Unsupported(format!(
                    "{r} joins the {ty} namespace {path} of another process on the source \
                     system (a pod container?): only stand-alone containers can be migrated \
                     by the container-level approach so far"
                )));
            }
        }
    }
    Ok(())
}

/// The spec for the destination container `r` of migration `migration_id`:
/// - `annotations["io.ums.restore"] = migration_id` (the restore marker);
/// - `linux.cgroupsPath` of a ctr-style container (`/<ns>/<id>`, or `<source_parent>/<ns>/<id>`)
///   recomputed as the destination's containerd would: `<dest_parent>/<ns>/<id>` (both parents
///   are empty by default: `/<ns>/<id>`, what ctr sets); other forms (systemd
///   `slice:prefix:name`, custom paths) are kept. A parent is a coordinator setting
///   (`--cgroup-parent`) for systems that share one cgroup hierarchy (the one-host test bed);
/// - the network namespace is a NEW one: a `path` there names the source's netns and is dropped;
///   a spec without a network namespace (host network) stays so;
/// - a CRI container (see [`cri_kind`]) leaves its pod behind: the network, ipc and uts
///   namespaces it joined by path (its pod sandbox's) become new ones, the `io.kubernetes.*` and
///   `io.cri-containerd.*` annotations go (the sandbox id would group it into a shim with a
///   sandbox that does not exist here), and its cgroupfs `linux.cgroupsPath` (`/kubepods/...`,
///   `<pod parent>/<id>`) becomes `<dest_parent>/<ns>/<id>` like a ctr container's; the bind
///   mounts of files the source system made for the pod are remapped by the caller
///   ([`remap_mount_sources`]);
/// - everything else is kept.
///
/// Fails (Unsupported) where the source spec cannot be recreated: see [`check_source_spec`].
pub fn destination_spec(
    src: &Value,
    r: &ContainerRef,
    migration_id: &str,
    cgroups: &CgroupParents,
) -> Result<Value> {
    check_source_spec(src, r)?;
    let cri = cri_kind(&HashMap::new(), src) == Some(CriKind::Container);
    let mut spec = src.clone();
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| Error::Internal(format!("the OCI spec of {r} is not a JSON object")))?;

    let annotations = obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(a) = annotations.as_object_mut() {
        if cri {
            a.retain(|k, _| !is_cri_key(k));
        }
        a.insert(
            RESTORE_ANNOTATION.to_string(),
            Value::String(migration_id.to_string()),
        );
    }

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        if let Some(cg) = linux.get("cgroupsPath").and_then(Value::as_str) {
            let new = if cri {
                rewrite_cri_cgroups_path(cg, r, cgroups)
            } else {
                rewrite_cgroups_path(cg, r, cgroups)
            };
            if let Some(new) = new {
                linux.insert("cgroupsPath".into(), Value::String(new));
            }
        }
        if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            for ns in nss.iter_mut() {
                let ty = ns.get("type").and_then(Value::as_str).unwrap_or("");
                if ty == "network" || (cri && POD_NAMESPACES.contains(&ty)) {
                    if let Some(o) = ns.as_object_mut() {
                        o.remove("path");
                    }
                }
            }
        }
    }
    Ok(spec)
}

/// The cgroup parents of ctr-style containers on the source and the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupParents {
    pub source: String,
    pub destination: String,
}

/// Checks a cgroup parent setting: empty, or an absolute cgroupfs path without `..`.
pub fn validate_cgroup_parent(p: &str) -> Result<String> {
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    if !p.starts_with('/')
        || p.contains(':')
        || p.split('/').any(|c| c == ".." || c == ".")
        || p.contains("//")
    {
        return Err(Error::BadRequest(format!(
            "cgroup parent {p:?} must be an absolute cgroupfs path like /ums-b"
        )));
    }
    Ok(p.to_string())
}

/// `/<ns>/<id>` or `<source parent>/<ns>/<id>` becomes `<dest parent>/<ns>/<id>`; `None` keeps
/// the path as it is (systemd-style or anything else).
fn rewrite_cgroups_path(path: &str, r: &ContainerRef, parents: &CgroupParents) -> Option<String> {
    if path.contains(':') || !path.starts_with('/') {
        return None;
    }
    let tail = format!("/{}/{}", r.namespace, r.id);
    let ctr_style = path == tail
        || (!parents.source.is_empty()
            && path.strip_prefix(parents.source.as_str()) == Some(tail.as_str()));
    ctr_style.then(|| format!("{}{tail}", parents.destination))
}

/// The namespaces of its pod sandbox a CRI container joins by path and gets new at the
/// destination. (A pid namespace shared with the pod is refused: CRIU restores an external pid
/// namespace only into that same namespace, see [`check_source_spec`].)
const POD_NAMESPACES: [&str; 3] = ["network", "ipc", "uts"];

fn is_cri_key(k: &str) -> bool {
    CRI_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// A CRI container's cgroupfs path (`/kubepods/burstable/pod<uid>/<id>`, `/k8s.io/<id>`,
/// `<pod cgroup parent>/<id>`) names its pod's cgroup on the source: at the destination it
/// becomes a ctr-style `<dest parent>/<ns>/<id>`. A systemd path (`slice:prefix:name`) is kept.
fn rewrite_cri_cgroups_path(
    path: &str,
    r: &ContainerRef,
    parents: &CgroupParents,
) -> Option<String> {
    if path.contains(':') || !path.starts_with('/') {
        return None;
    }
    Some(format!("{}/{}/{}", parents.destination, r.namespace, r.id))
}

/// The labels of the destination container: a CRI container's `io.kubernetes.*` and
/// `io.cri-containerd.*` labels are dropped (the destination's CRI plugin would take it for one
/// of its own, kubelet for a container of a pod it does not have: it is a plain container
/// there), replaced by `io.ums.cri.pod=<namespace>/<name>`, `io.ums.cri.container=<name>` and
/// `io.ums.cri.sandbox-id` (where it came from). Other labels are kept.
pub fn destination_labels(
    labels: &HashMap<String, String>,
    src_spec: &Value,
) -> HashMap<String, String> {
    if cri_kind(labels, src_spec) != Some(CriKind::Container) {
        return labels.clone();
    }
    let mut out: HashMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !is_cri_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(pod) = CriPod::of(src_spec) {
        if !pod.name.is_empty() {
            out.insert(
                CRI_POD_LABEL.into(),
                format!("{}/{}", pod.namespace, pod.name),
            );
        }
        for (k, v) in [
            (CRI_CONTAINER_LABEL, pod.container),
            (CRI_SANDBOX_LABEL, pod.sandbox_id),
        ] {
            if !v.is_empty() {
                out.insert(k.into(), v);
            }
        }
    }
    out
}

/// Whether an OCI mount is a bind mount (as runc decides: type `bind` or a `bind`/`rbind`
/// option).
fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|x| matches!(x.as_str(), Some("bind" | "rbind")))
        })
}

/// The bind mounts of a spec as `(destination, source)`.
pub fn bind_mounts(spec: &Value) -> Vec<(String, String)> {
    spec.get("mounts")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter(|m| is_bind(m))
                .filter_map(|m| {
                    Some((
                        m.get("destination")?.as_str()?.to_string(),
                        m.get("source")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `source` is a file or directory containerd's CRI plugin made for a pod or a
/// container in its root or state dir: `.../io.containerd.grpc.v1.cri/sandboxes/<id>/...`
/// (the pod's hosts, hostname, resolv.conf, shm) or `.../containers/<id>/...` (image volumes).
pub fn is_cri_state_path(source: &str) -> bool {
    let comps: Vec<&str> = Path::new(source)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    comps.windows(3).any(|w| {
        w[0].starts_with("io.containerd.")
            && w[0].contains("cri")
            && matches!(w[1], "sandboxes" | "containers")
    })
}

/// The bind mounts whose source exists on the source system only and that the destination
/// must recreate: files the CRI plugin made for the pod ([`is_cri_state_path`]) and the ones
/// this coordinator made for an earlier incoming migration (under `own_dir`).
pub fn system_local_mounts(spec: &Value, own_dir: &Path) -> Vec<(String, String)> {
    bind_mounts(spec)
        .into_iter()
        .filter(|(_, src)| is_cri_state_path(src) || Path::new(src).starts_with(own_dir))
        .collect()
}

/// Points the bind mounts at `destination -> new source` (the files the destination made).
pub fn remap_mount_sources(spec: &mut Value, new_sources: &HashMap<String, String>) {
    let Some(ms) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return;
    };
    for m in ms.iter_mut() {
        if !is_bind(m) {
            continue;
        }
        let Some(new) = m
            .get("destination")
            .and_then(Value::as_str)
            .and_then(|d| new_sources.get(d))
            .cloned()
        else {
            continue;
        };
        if let Some(o) = m.as_object_mut() {
            o.insert("source".into(), Value::String(new));
        }
    }
}

/// The bind mounts whose source `exists` says is absent, other than the ones in `except`, as
/// `"destination (source)"`: runc maps every bind mount of the spec for CRIU's restore, so a
/// missing source fails it.
pub fn missing_bind_sources(
    spec: &Value,
    except: &HashSet<String>,
    exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    bind_mounts(spec)
        .into_iter()
        .filter(|(d, s)| !except.contains(d) && !exists(s))
        .map(|(d, s)| format!("{d} ({s})"))
        .collect()
}

/// A CRI container had its hostname from its pod (the sandbox's uts namespace); in its new
/// uts namespace at the destination it keeps it: `hostname` set if the spec has none.
pub fn adopt_hostname(spec: &mut Value, hostname: &str) {
    let name = hostname.trim();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    let own_uts = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|nss| {
            nss.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("uts") && n.get("path").is_none()
            })
        });
    if !valid || !own_uts || spec.get("hostname").is_some() {
        return;
    }
    if let Some(o) = spec.as_object_mut() {
        o.insert("hostname".into(), Value::String(name.to_string()));
    }
}

/// The spec without the restore marker: what the destination container keeps once restored,
/// so that a later start (restart policy, `ctr task start`) starts the service fresh like any
/// container of that system.
pub fn without_restore_marker(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(a) = s.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove(RESTORE_ANNOTATION);
    }
    s
}

/// The restore marker of a spec, if any.
pub fn restore_marker(spec: &Value) -> Option<&str> {
    spec.get("annotations")?.get(RESTORE_ANNOTATION)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none() -> CgroupParents {
        CgroupParents::default()
    }

    fn r() -> ContainerRef {
        ContainerRef::parse("default/web1").unwrap()
    }

    fn ctr_spec() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {"terminal": false, "args": ["/bin/sh", "-c", "sleep 1000"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "hostname": "web1",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "cgroupsPath": "/default/web1",
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/a-web1"}
                ],
                "maskedPaths": ["/proc/kcore"],
                "someFutureField": {"x": 1}
            }
        })
    }

    #[test]
    fn adds_marker_and_keeps_the_rest() {
        let src = ctr_spec();
        let dst = destination_spec(&src, &r(), "m-1234", &none()).unwrap();
        assert_eq!(restore_marker(&dst), Some("m-1234"));
        assert_eq!(dst["linux"]["cgroupsPath"], "/default/web1");
        assert_eq!(dst["process"], src["process"]);
        assert_eq!(dst["mounts"], src["mounts"]);
        assert_eq!(dst["hostname"], "web1");
        assert_eq!(dst["linux"]["someFutureField"], json!({"x": 1}));
        assert_eq!(dst["linux"]["maskedPaths"], src["linux"]["maskedPaths"]);
        // The source spec is untouched.
        assert_eq!(restore_marker(&src), None);
    }

    #[test]
    fn new_network_namespace() {
        let dst = destination_spec(&ctr_spec(), &r(), "m", &none()).unwrap();
        let nss = dst["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(nss.len(), 5);
        let net = nss.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net, &json!({"type": "network"}));
        // Host network (no network namespace) stays host network.
        let mut host = ctr_spec();
        host["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
        let dst = destination_spec(&host, &r(), "m", &none()).unwrap();
        assert!(dst["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["type"] != "network"));
    }

    #[test]
    fn overwrites_an_old_marker_and_keeps_annotations() {
        let mut src = ctr_spec();
        src["annotations"] = json!({"io.ums.restore": "old", "keep": "me"});
        let dst = destination_spec(&src, &r(), "new", &none()).unwrap();
        assert_eq!(
            dst["annotations"],
            json!({"io.ums.restore": "new", "keep": "me"})
        );
    }

    #[test]
    fn cgroups_paths() {
        let r = r();
        let none = none();
        assert_eq!(
            rewrite_cgroups_path("/default/web1", &r, &none).as_deref(),
            Some("/default/web1")
        );
        assert_eq!(rewrite_cgroups_path("/other/web1", &r, &none), None);
        assert_eq!(
            rewrite_cgroups_path("system.slice:ums:web1", &r, &none),
            None
        );
        assert_eq!(rewrite_cgroups_path("/kubepods/pod1/web1", &r, &none), None);
        assert_eq!(rewrite_cgroups_path("relative/web1", &r, &none), None);
        // Parents: a -> b and back.
        let to_b = CgroupParents {
            source: String::new(),
            destination: "/ums-b".into(),
        };
        assert_eq!(
            rewrite_cgroups_path("/default/web1", &r, &to_b).as_deref(),
            Some("/ums-b/default/web1")
        );
        let to_a = CgroupParents {
            source: "/ums-b".into(),
            destination: String::new(),
        };
        assert_eq!(
            rewrite_cgroups_path("/ums-b/default/web1", &r, &to_a).as_deref(),
            Some("/default/web1")
        );
        // A plain ctr path is recognised whatever the source parent.
        assert_eq!(
            rewrite_cgroups_path("/default/web1", &r, &to_a).as_deref(),
            Some("/default/web1")
        );
        assert_eq!(rewrite_cgroups_path("/ums-c/default/web1", &r, &to_a), None);

        let mut src = ctr_spec();
        src["linux"]["cgroupsPath"] = json!("/elsewhere/web1");
        let dst = destination_spec(&src, &r, "m", &to_b).unwrap();
        assert_eq!(dst["linux"]["cgroupsPath"], "/elsewhere/web1");
        let dst = destination_spec(&ctr_spec(), &r, "m", &to_b).unwrap();
        assert_eq!(dst["linux"]["cgroupsPath"], "/ums-b/default/web1");
        // No cgroupsPath: none is invented (containerd's default applies).
        let mut src = ctr_spec();
        src["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        let dst = destination_spec(&src, &r, "m", &to_b).unwrap();
        assert!(dst["linux"].get("cgroupsPath").is_none());
    }

    #[test]
    fn cgroup_parents() {
        assert_eq!(validate_cgroup_parent("").unwrap(), "");
        assert_eq!(validate_cgroup_parent("/").unwrap(), "");
        assert_eq!(validate_cgroup_parent("/ums-b/").unwrap(), "/ums-b");
        assert_eq!(validate_cgroup_parent("/a/b").unwrap(), "/a/b");
        for bad in ["ums-b", "/a/../b", "x.slice:a:b", "/a//b"] {
            assert!(validate_cgroup_parent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_recreated() {
        let mut tty = ctr_spec();
        tty["process"]["terminal"] = json!(true);
        assert!(matches!(
            destination_spec(&tty, &r(), "m", &none()),
            Err(Error::Unsupported(_))
        ));
        let mut pod = ctr_spec();
        pod["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ipc", "path": "/proc/42/ns/ipc"}));
        let e = destination_spec(&pod, &r(), "m", &none()).unwrap_err();
        assert!(e.to_string().contains("/proc/42/ns/ipc"), "{e}");
        assert!(destination_spec(&json!([1]), &r(), "m", &none()).is_err());
    }

    #[test]
    fn marker_removed_after_restore() {
        let mut src = ctr_spec();
        src["annotations"] = json!({"keep": "me"});
        let dst = destination_spec(&src, &r(), "m", &none()).unwrap();
        let after = without_restore_marker(&dst);
        assert_eq!(restore_marker(&after), None);
        assert_eq!(after["annotations"], json!({"keep": "me"}));
        assert_eq!(after["linux"], dst["linux"]);
        assert_eq!(without_restore_marker(&json!({"a": 1})), json!({"a": 1}));
    }

    #[test]
    fn bad_annotations_replaced() {
        let mut src = ctr_spec();
        src["annotations"] = json!(null);
        let dst = destination_spec(&src, &r(), "m", &none()).unwrap();
        assert_eq!(restore_marker(&dst), Some("m"));
    }

    const SANDBOX: &str = "125db33efb5771164e02654d6c70bb78d9f1606aae03e2538db4041b8715ec3f";
    const CID: &str = "49fb1d06b3bb35aa95577882a746d7806f184eaaf0ecfdeda488b30e559bd2aa";

    fn cri_ref() -> ContainerRef {
        ContainerRef::parse(&format!("k8s.io/{CID}")).unwrap()
    }

    fn to_b() -> CgroupParents {
        CgroupParents {
            source: "/ums-a".into(),
            destination: "/ums-b".into(),
        }
    }

    fn cri_labels() -> HashMap<String, String> {
        HashMap::from([
            (CRI_KIND_LABEL.to_string(), "container".to_string()),
            ("io.kubernetes.pod.name".to_string(), "web".to_string()),
            ("app".to_string(), "web".to_string()),
        ])
    }

    /// The spec containerd 1.6's CRI plugin gave a container of a pod (handler ums), as read
    /// on the test bed (capabilities trimmed).
    fn cri_spec() -> Value {
        let root = format!("/run/ums-testbed/a/root/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}");
        let state =
            format!("/run/ums-testbed/a/state/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}");
        let bind = |d: &str, s: String| {
            json!({"destination": d, "type": "bind", "source": s,
                   "options": ["rbind", "rprivate", "rw"]})
        };
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/usr/local/bin/counter"],
                        "env": ["PATH=/bin", "HOSTNAME=web"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                bind("/etc/hostname", format!("{root}/hostname")),
                bind("/etc/hosts", format!("{root}/hosts")),
                bind("/etc/resolv.conf", format!("{root}/resolv.conf")),
                bind("/dev/shm", format!("{state}/shm")),
            ],
            "annotations": {
                "io.kubernetes.cri.container-name": "svc",
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.image-name": "localhost/ums/counter:1",
                "io.kubernetes.cri.sandbox-id": SANDBOX,
                "io.kubernetes.cri.sandbox-name": "web",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-uid": "uid-1",
                "org.example/keep": "yes"
            },
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "cgroupsPath": format!("/kubepods/besteffort/poduid-1/{CID}"),
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/19322/ns/ipc"},
                    {"type": "uts", "path": "/proc/19322/ns/uts"},
                    {"type": "mount"},
                    {"type": "network", "path": "/proc/19322/ns/net"}
                ]
            }
        })
    }

    #[test]
    fn cri_kinds() {
        let none_l = HashMap::new();
        assert_eq!(cri_kind(&none_l, &ctr_spec()), None);
        assert_eq!(cri_kind(&none_l, &cri_spec()), Some(CriKind::Container));
        assert_eq!(
            cri_kind(&cri_labels(), &ctr_spec()),
            Some(CriKind::Container)
        );
        let mut sandbox = cri_spec();
        sandbox["annotations"][CRI_TYPE_ANNOTATION] = json!("sandbox");
        assert_eq!(cri_kind(&cri_labels(), &sandbox), Some(CriKind::Sandbox));
        let sandbox_label = HashMap::from([(CRI_KIND_LABEL.to_string(), "sandbox".to_string())]);
        assert_eq!(
            cri_kind(&sandbox_label, &cri_spec()),
            Some(CriKind::Sandbox)
        );
        // Only the sandbox id: still a pod's container.
        let mut only_id = ctr_spec();
        only_id["annotations"] = json!({CRI_SANDBOX_ID_ANNOTATION: SANDBOX});
        assert_eq!(cri_kind(&none_l, &only_id), Some(CriKind::Container));
        let pod = CriPod::of(&cri_spec()).unwrap();
        assert_eq!(pod.to_string(), "pod shop/web (sandbox 125db33efb57)");
        assert_eq!(pod.container, "svc");
        assert!(CriPod::of(&ctr_spec()).is_none());
    }

    #[test]
    fn cri_sandboxes_and_shared_pid_refused() {
        let r = cri_ref();
        let mut sandbox = cri_spec();
        sandbox["annotations"][CRI_TYPE_ANNOTATION] = json!("sandbox");
        let e = destination_spec(&sandbox, &r, "m", &to_b()).unwrap_err();
        assert_eq!(e.http_status(), 422);
        assert!(e.to_string().contains("pod sandbox of pod shop/web"), "{e}");
        // A sandbox known by its label only.
        let sandbox_label = HashMap::from([(CRI_KIND_LABEL.to_string(), "sandbox".to_string())]);
        let e = check_source_container(&ctr_spec(), &sandbox_label, &r).unwrap_err();
        assert!(e.to_string().contains("pod sandbox"), "{e}");
        assert_eq!(
            check_source_container(&cri_spec(), &cri_labels(), &r).unwrap(),
            Some(CriKind::Container)
        );
        assert_eq!(
            check_source_container(&ctr_spec(), &HashMap::new(), &r).unwrap(),
            None
        );
        // The pod's pid namespace (shareProcessNamespace): CRIU could not restore it elsewhere.
        let mut shared_pid = cri_spec();
        shared_pid["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/19322/ns/pid"});
        let e = destination_spec(&shared_pid, &r, "m", &to_b()).unwrap_err();
        assert_eq!(e.http_status(), 422);
        assert!(e.to_string().contains("pid namespace"), "{e}");
        // A CRI container joining a namespace of another kind is refused as before.
        let mut user = cri_spec();
        user["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "cgroup", "path": "/proc/7/ns/cgroup"}));
        assert!(destination_spec(&user, &r, "m", &to_b()).is_err());
    }

    #[test]
    fn cri_container_becomes_a_plain_container() {
        let src = cri_spec();
        let dst = destination_spec(&src, &cri_ref(), "m-7", &to_b()).unwrap();
        // Fresh namespaces instead of the sandbox's.
        assert_eq!(
            dst["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                   {"type": "network"}])
        );
        // Nothing that names the pod; the marker and foreign annotations stay.
        assert_eq!(
            dst["annotations"],
            json!({"io.ums.restore": "m-7", "org.example/keep": "yes"})
        );
        assert_eq!(dst["linux"]["cgroupsPath"], format!("/ums-b/k8s.io/{CID}"));
        // The rest as it was; the mounts are the caller's (remap_mount_sources).
        assert_eq!(dst["mounts"], src["mounts"]);
        assert_eq!(dst["process"], src["process"]);
        assert_eq!(dst["linux"]["resources"], src["linux"]["resources"]);
        assert!(dst.get("hostname").is_none());
        // Once restored, the marker goes and nothing of the pod comes back.
        let after = without_restore_marker(&dst);
        assert_eq!(after["annotations"], json!({"org.example/keep": "yes"}));
        assert_eq!(cri_kind(&HashMap::new(), &after), None);
    }

    #[test]
    fn cri_cgroups_paths() {
        let r = cri_ref();
        let none = none();
        for p in [
            format!("/kubepods/burstable/pod1234/{CID}"),
            format!("/k8s.io/{CID}"),
            format!("/ums-testbed-a/{CID}"),
            "/somewhere/else".to_string(),
        ] {
            assert_eq!(
                rewrite_cri_cgroups_path(&p, &r, &to_b()),
                Some(format!("/ums-b/k8s.io/{CID}")),
                "{p}"
            );
            assert_eq!(
                rewrite_cri_cgroups_path(&p, &r, &none),
                Some(format!("/k8s.io/{CID}")),
                "{p}"
            );
        }
        // systemd: kept.
        let systemd = format!("kubepods-besteffort-pod1234.slice:cri-containerd:{CID}");
        assert_eq!(rewrite_cri_cgroups_path(&systemd, &r, &to_b()), None);
        let mut src = cri_spec();
        src["linux"]["cgroupsPath"] = json!(systemd);
        let dst = destination_spec(&src, &r, "m", &to_b()).unwrap();
        assert_eq!(dst["linux"]["cgroupsPath"], json!(systemd));
    }

    #[test]
    fn cri_labels_replaced() {
        let l = destination_labels(&cri_labels(), &cri_spec());
        assert_eq!(
            l,
            HashMap::from([
                ("app".to_string(), "web".to_string()),
                (CRI_POD_LABEL.to_string(), "shop/web".to_string()),
                (CRI_CONTAINER_LABEL.to_string(), "svc".to_string()),
                (CRI_SANDBOX_LABEL.to_string(), SANDBOX.to_string()),
            ])
        );
        // Not a CRI container: untouched, even labels that look like kubelet's.
        let plain = HashMap::from([("io.kubernetes.x".to_string(), "1".to_string())]);
        assert_eq!(destination_labels(&plain, &ctr_spec()), plain);
    }

    #[test]
    fn cri_mounts_found_and_remapped() {
        let own = Path::new("/run/ums/coordinator/a/mounts");
        let src = cri_spec();
        let local = system_local_mounts(&src, own);
        let dests: Vec<&str> = local.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm"
            ]
        );
        // containerd 2.x (same plugin dir), image volumes, files we made; not other binds.
        for (p, yes) in [
            (
                "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/x/hosts",
                true,
            ),
            (
                "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/c/volumes/v",
                true,
            ),
            (
                "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/x/shm",
                true,
            ),
            ("/var/lib/kubelet/pods/uid/etc-hosts", false),
            ("/data/sandboxes/x", false),
            ("/io.containerd.grpc.v1.cri", false),
        ] {
            assert_eq!(is_cri_state_path(p), yes, "{p}");
        }
        let mut mine = ctr_spec();
        mine["mounts"] = json!([
            {"destination": "/etc/hosts", "type": "bind",
             "source": "/run/ums/coordinator/a/mounts/k8s.io/c/m-1/1-hosts", "options": ["rbind"]},
            {"destination": "/data", "type": "none", "source": "/srv/data", "options": ["rbind"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
        ]);
        let local = system_local_mounts(&mine, own);
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].0, "/etc/hosts");
        // An rbind option makes a bind mount whatever its type.
        assert_eq!(bind_mounts(&mine).len(), 2);

        let mut dst = destination_spec(&src, &cri_ref(), "m", &to_b()).unwrap();
        let new: HashMap<String, String> = [
            ("/etc/hosts", "/b/1-hosts"),
            ("/dev/shm", "/b/3-shm"),
            ("/proc", "/nope"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        remap_mount_sources(&mut dst, &new);
        let mounts = dst["mounts"].as_array().unwrap();
        assert_eq!(mounts[0]["source"], "proc", "not a bind mount: untouched");
        assert_eq!(mounts[3]["source"], "/b/1-hosts");
        assert_eq!(mounts[5]["source"], "/b/3-shm");
        assert_eq!(mounts[3]["options"], json!(["rbind", "rprivate", "rw"]));
        assert!(mounts[2]["source"].as_str().unwrap().ends_with("/hostname"));

        let remapped: HashSet<String> = new.keys().cloned().collect();
        let missing = missing_bind_sources(&dst, &remapped, |s| s.starts_with("/b/"));
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("/etc/hostname ("), "{missing:?}");
        assert!(missing_bind_sources(&dst, &remapped, |_| true).is_empty());
    }

    #[test]
    fn cri_hostname_adopted() {
        let mut dst = destination_spec(&cri_spec(), &cri_ref(), "m", &to_b()).unwrap();
        adopt_hostname(&mut dst, "web\n");
        assert_eq!(dst["hostname"], "web");
        // Not over a hostname the spec has, not without a uts namespace of its own, not junk.
        adopt_hostname(&mut dst, "other");
        assert_eq!(dst["hostname"], "web");
        let mut joined = cri_spec();
        adopt_hostname(&mut joined, "web");
        assert!(joined.get("hostname").is_none());
        let mut dst = destination_spec(&cri_spec(), &cri_ref(), "m", &to_b()).unwrap();
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            adopt_hostname(&mut dst, bad);
            assert!(dst.get("hostname").is_none(), "{bad:?}");
        }
    }
}
