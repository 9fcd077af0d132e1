//! deploy/: every manifest decoded into its Kubernetes type (k8s-openapi) and encoded again to
//! exactly what the file says, so an unknown or misspelt field fails (k8s-openapi itself ignores
//! them); then the facts the pieces rely on each other for.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Namespace, Pod, PodSpec, Service, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "ums-system";
const NODE_LABEL: (&str, &str) = ("ums/enabled", "true");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The image every UMS workload runs: the release of this workspace.
fn ums_image() -> String {
    format!("ghcr.io/ums/ums:{}", env!("CARGO_PKG_VERSION"))
}

/// Every object of deploy/ (kustomization.yaml aside), typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<(PathBuf, Namespace)>,
    runtime_classes: Vec<(PathBuf, RuntimeClass)>,
    daemon_sets: Vec<(PathBuf, DaemonSet)>,
    services: Vec<(PathBuf, Service)>,
    service_accounts: Vec<(PathBuf, ServiceAccount)>,
    pods: Vec<(PathBuf, Pod)>,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
}

/// Decodes `doc` as `T` and asserts that encoding it again gives `doc` back.
fn typed<T: DeserializeOwned + Serialize>(file: &Path, doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: not a valid {}: {e}", file.display(), doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!(
            "{}: {} has a field the Kubernetes type does not know or reads differently at {path}\n\
             file:  {doc}\ntyped: {back}",
            file.display(),
            doc["kind"]
        );
    }
    t
}

fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, format!("{at}.{k}")),
                    _ => Some(format!("{at}.{k}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(if at.is_empty() { ".".into() } else { at }),
    }
}

fn load() -> Manifests {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let mut m = Manifests::default();
    for file in files
        .into_iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
    {
        let text = fs::read_to_string(&file).unwrap();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let yaml = serde_yaml_ng::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            let doc = serde_json::to_value(&yaml).unwrap();
            let f = file.clone();
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("v1"), Some("Namespace")) => m.namespaces.push((f, typed(&file, &doc))),
                (Some("node.k8s.io/v1"), Some("RuntimeClass")) => {
                    m.runtime_classes.push((f, typed(&file, &doc)))
                }
                (Some("apps/v1"), Some("DaemonSet")) => m.daemon_sets.push((f, typed(&file, &doc))),
                (Some("v1"), Some("Service")) => m.services.push((f, typed(&file, &doc))),
                (Some("v1"), Some("ServiceAccount")) => {
                    m.service_accounts.push((f, typed(&file, &doc)))
                }
                (Some("v1"), Some("Pod")) => m.pods.push((f, typed(&file, &doc))),
                (v, k) => panic!("{}: unexpected object {v:?}/{k:?}", file.display()),
            }
        }
    }
    m
}

impl Manifests {
    fn daemon_set(&self, name: &str) -> &DaemonSet {
        self.daemon_sets
            .iter()
            .map(|(_, d)| d)
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no DaemonSet {name} in deploy/"))
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Pod {name} in deploy/examples"))
    }

    /// Every pod spec: the DaemonSets' templates and the example pods.
    fn pod_specs(&self) -> Vec<(String, &PodSpec)> {
        let ds = self.daemon_sets.iter().filter_map(|(f, d)| {
            let spec = d.spec.as_ref()?.template.spec.as_ref()?;
            Some((f.display().to_string(), spec))
        });
        let pods = self
            .pods
            .iter()
            .filter_map(|(f, p)| Some((f.display().to_string(), p.spec.as_ref()?)));
        ds.chain(pods).collect()
    }
}

fn spec_of(d: &DaemonSet) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet has a pod spec")
}

fn node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(NODE_LABEL.0.to_string(), NODE_LABEL.1.to_string())])
}

/// The volume (and its mount) that holds `path` in the first container of `spec`.
fn volume_at<'a>(spec: &'a PodSpec, path: &str) -> (&'a VolumeMount, &'a Volume) {
    let mount = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(path).starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{path} is not on a volume"));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {} for {path}", mount.name));
    (mount, volume)
}

fn privileged(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .all(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object_with_no_unknown_field() {
    let m = load();
    // What the others rely on exists exactly once.
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.runtime_classes.len(), 1);
    assert_eq!(
        m.daemon_sets.len(),
        3,
        "installer, uninstaller, coordinator"
    );
    assert_eq!(
        m.pods.len(),
        3,
        "the examples: ums-counter, ums-outer-a, ums-outer-b"
    );
}

#[test]
fn runtime_class_ums_has_handler_ums_and_the_installed_nodes() {
    let m = load();
    let rc = &m.runtime_classes[0].1;
    assert_eq!(rc.metadata.name.as_deref(), Some("ums"));
    assert_eq!(rc.handler, ums_node_installer::HANDLER);
    let sched = rc.scheduling.as_ref().and_then(|s| s.node_selector.clone());
    assert_eq!(
        sched,
        Some(node_selector()),
        "pods go where the installer runs"
    );
}

#[test]
fn example_pod_runs_with_runtime_class_ums_and_its_own_pid_namespace() {
    let m = load();
    let spec = m.pod("ums-counter").spec.as_ref().unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("ums"));
    assert_ne!(
        spec.share_process_namespace,
        Some(true),
        "a shared pid namespace cannot migrate"
    );
}

#[test]
fn node_installer_is_privileged_with_the_host_root_and_pid_namespace() {
    let m = load();
    for (name, verb) in [
        ("ums-node-installer", "install"),
        ("ums-node-uninstaller", "uninstall"),
    ] {
        let spec = spec_of(m.daemon_set(name));
        assert!(privileged(spec), "{name}: privileged");
        assert_eq!(
            spec.host_pid,
            Some(true),
            "{name}: nsenter --target 1 needs hostPID"
        );
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "{name}: uses no API"
        );
        assert_eq!(
            spec.node_selector.as_ref(),
            Some(&node_selector()),
            "{name}"
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["/usr/local/bin/ums-node-installer".to_string()][..])
        );
        assert_eq!(c.args.as_ref().map(|a| a[0].as_str()), Some(verb), "{name}");
        let env = |k: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
        };
        let root = env("UMS_HOST_ROOT").expect("UMS_HOST_ROOT");
        let (mount, vol) = volume_at(spec, &root);
        assert_eq!(mount.mount_path, root, "{name}: UMS_HOST_ROOT is a mount");
        let host = vol.host_path.as_ref().expect("the host root is a hostPath");
        assert_eq!(
            host.path, "/",
            "{name}: the host's / (config, /opt/ums, /usr/local)"
        );
        assert_ne!(mount.read_only, Some(true), "{name}: it writes the host");
    }
    // The uninstaller is the installer's pod with the other verb.
    let mut a = spec_of(m.daemon_set("ums-node-installer")).clone();
    let b = spec_of(m.daemon_set("ums-node-uninstaller"));
    a.containers[0].args = b.containers[0].args.clone();
    assert_eq!(&a, b);
}

#[test]
fn coordinator_uses_no_kubernetes_api_and_the_nodes_containerd_paths() {
    let m = load();
    let spec = spec_of(m.daemon_set("ums-coordinator"));
    assert_eq!(
        spec.host_network,
        Some(true),
        "peers and streams reach the node's IP"
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    let sa = spec
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    let (_, account) = m
        .service_accounts
        .iter()
        .find(|(_, s)| s.metadata.name.as_deref() == Some(sa))
        .expect("its ServiceAccount is in deploy/");
    assert_eq!(account.automount_service_account_token, Some(false));
    assert_eq!(spec.node_selector.as_ref(), Some(&node_selector()));
    assert!(!privileged(spec), "the coordinator needs no privilege");

    let c = &spec.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("coordinator"));
    let flag = |f: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("no --{f}= in {args:?}"))
            .to_string()
    };
    let volume = |path: &str| volume_at(spec, path).1.clone();
    // Paths the coordinator hands to containerd and the shim are the same on the host.
    for path in [
        flag("containerd"),
        flag("containerd-state"),
        flag("state-dir"),
    ] {
        let (mount, vol) = volume_at(spec, &path);
        let host = vol.host_path.as_ref().expect("a hostPath");
        assert_eq!(
            mount.mount_path, host.path,
            "{path}: mounted at its host path"
        );
    }
    let token = volume(&flag("peer-token-file"))
        .secret
        .expect("the peer token is a Secret");
    assert_eq!(token.secret_name.as_deref(), Some("ums-peer-token"));
    // TLS: certificate, key and CA from the TLS Secret; the probes speak HTTPS.
    for f in ["tls-cert", "tls-key", "tls-ca"] {
        let secret = volume(&flag(f))
            .secret
            .unwrap_or_else(|| panic!("--{f} is not on a Secret"));
        assert_eq!(
            secret.secret_name.as_deref(),
            Some("ums-coordinator-tls"),
            "--{f}"
        );
        assert_ne!(
            secret.optional,
            Some(true),
            "--{f}: the coordinator cannot start without it"
        );
    }
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(get.path.as_deref(), Some("/healthz"));
    }

    // The Service selects the coordinators and serves their API port.
    let (_, svc) = m
        .services
        .iter()
        .find(|(_, s)| s.metadata.name.as_deref() == Some("ums-coordinator"))
        .expect("Service ums-coordinator");
    let svc_spec = svc.spec.as_ref().unwrap();
    let labels = m
        .daemon_set("ums-coordinator")
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in svc_spec.selector.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "Service selector {k}={v}");
    }
    let port = &svc_spec.ports.as_ref().unwrap()[0];
    let listen_port: i32 = flag("listen").rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(port.port, listen_port);
    let api = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("api"))
        .unwrap();
    assert_eq!(api.container_port, listen_port);
}

#[test]
fn outer_image_pods_are_privileged_with_state_on_a_volume_and_no_runtime_class() {
    let m = load();
    for name in ["ums-outer-a", "ums-outer-b"] {
        let spec = m.pod(name).spec.as_ref().unwrap();
        assert!(privileged(spec), "{name}");
        assert_eq!(
            spec.runtime_class_name, None,
            "{name}: any cluster runs it, UMS inside"
        );
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some(ums_image().as_str()), "{name}");
        // ums-outer keeps containerd's root and state under UMS_STATE (default /var/lib/ums).
        let (_, vol) = volume_at(spec, "/var/lib/ums");
        assert!(
            vol.empty_dir.is_some() || vol.persistent_volume_claim.is_some(),
            "{name}: a real directory, not overlay"
        );
    }
    let standby = m.pod("ums-outer-b").spec.as_ref().unwrap().containers[0]
        .args
        .clone();
    assert_eq!(
        standby.unwrap_or_default().first().map(String::as_str),
        Some("--standby")
    );
}

#[test]
fn images_are_the_one_ums_image_and_namespaced_objects_live_in_ums_system() {
    let m = load();
    let want = ums_image();
    for (file, spec) in m.pod_specs() {
        for c in &spec.containers {
            let image = c.image.as_deref().unwrap_or_default();
            if image.contains("/ums/") {
                assert_eq!(image, want, "{file}: container {}", c.name);
            }
        }
    }
    let examples = deploy_dir().join("examples");
    let namespaced = m
        .daemon_sets
        .iter()
        .map(|(f, d)| (f, &d.metadata))
        .chain(m.services.iter().map(|(f, s)| (f, &s.metadata)))
        .chain(m.service_accounts.iter().map(|(f, s)| (f, &s.metadata)));
    for (file, meta) in namespaced {
        if !file.starts_with(&examples) {
            assert_eq!(
                meta.namespace.as_deref(),
                Some(NAMESPACE),
                "{}",
                file.display()
            );
        }
    }
    assert_eq!(m.namespaces[0].1.metadata.name.as_deref(), Some(NAMESPACE));
}

#[test]
fn kustomization_lists_everything_but_the_uninstaller_and_examples() {
    #[derive(Deserialize)]
    struct Kustomization {
        resources: Vec<String>,
    }
    let dir = deploy_dir();
    let k: Kustomization =
        serde_yaml_ng::from_str(&fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed = k.resources.clone();
    listed.sort();
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.ends_with(".yaml") && n != "kustomization.yaml" && n != "node-uninstaller.yaml"
        })
        .collect();
    files.sort();
    assert_eq!(listed, files);
}
