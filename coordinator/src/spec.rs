//! The OCI runtime spec of the destination container: the source container's spec with the
//! restore marker added and the parts that belong to the source system rewritten.
//!
//! Worked on as JSON (not a typed spec) so that every field we do not know is carried over
//! untouched.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::refs::ContainerRef;

/// The annotation that tells the destination shim to restore migration `<value>` instead of
/// starting the service fresh.
pub const RESTORE_ANNOTATION: &str = "io.ums.restore";

/// The container label naming the migration that created a destination container.
pub const MIGRATION_LABEL: &str = "io.ums.migration";

/// Checks, on the source, that the spec can be moved by the container-level approach.
/// Returns the reason it cannot otherwise.
pub fn check_source_spec(spec: &Value, r: &ContainerRef) -> Result<()> {
    let obj = spec
        .as_object()
        .ok_or_else(|| Error::Internal(format!("the OCI spec of {r} is not a JSON object")))?;
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
            if ty != "network" && !path.is_empty() {
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
        a.insert(
            RESTORE_ANNOTATION.to_string(),
            Value::String(migration_id.to_string()),
        );
    }

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        if let Some(cg) = linux.get("cgroupsPath").and_then(Value::as_str) {
            if let Some(new) = rewrite_cgroups_path(cg, r, cgroups) {
                linux.insert("cgroupsPath".into(), Value::String(new));
            }
        }
        if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            for ns in nss.iter_mut() {
                if ns.get("type").and_then(Value::as_str) == Some("network") {
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
}
