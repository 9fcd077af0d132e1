//! Which migration approach can move a container (paper, section III-C), and why the others
//! cannot:
//!
//! - container-level: the container runs on the ums runtime (`io.containerd.ums.v1`); its shim
//!   checkpoints the nested service and the destination's ums shim restores it;
//! - orchestrator-level: the container runs on containerd's own runc runtime
//!   (`io.containerd.runc.v2`) and both systems can checkpoint/restore natively (CRIU and runc,
//!   containerd's runc shim): containerd's task checkpoint on the source, a task created from
//!   those images on the destination ([`crate::orchestrator`]);
//! - service-level: the service hands over its own state; it needs a migratable image and is
//!   not supported yet (never feasible).
//!
//! [`assess`] is pure: the facts (runtime, spec, both systems' [`Capabilities`]) in, one
//! [`Assessment`] per approach out; [`Survey::choose`] picks the first feasible one, or the one
//! forced with `--approach` if it is feasible. `ums migrate --dry-run` shows the [`Survey`].

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::refs::ContainerRef;
use crate::spec::{bind_mounts, check_source_container, cri_kind, CriKind};

/// The runtime type of the container-level approach.
pub const UMS_RUNTIME: &str = ums_shim::RUNTIME_TYPE;
/// containerd's runc shim: the runtime of the orchestrator-level approach.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// Where kubelet keeps a pod's volumes, service account tokens, /etc/hosts and termination log:
/// bind sources that exist on the pod's node only, for a pod the destination does not have.
const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";

/// A migration approach, in the order they are preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Approach {
    #[default]
    #[serde(rename = "container-level", alias = "container")]
    Container,
    #[serde(rename = "orchestrator-level", alias = "orchestrator")]
    Orchestrator,
    #[serde(rename = "service-level", alias = "service")]
    Service,
}

impl Approach {
    pub const ALL: [Approach; 3] = [
        Approach::Container,
        Approach::Orchestrator,
        Approach::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Approach::Container => "container-level",
            Approach::Orchestrator => "orchestrator-level",
            Approach::Service => "service-level",
        }
    }

    /// `container`, `orchestrator`, `service` (or the full names).
    pub fn parse(s: &str) -> Result<Approach> {
        Approach::ALL
            .into_iter()
            .find(|a| s == a.as_str() || Some(s) == a.as_str().strip_suffix("-level"))
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "unknown approach {s:?}: container, orchestrator or service"
                ))
            })
    }
}

impl std::fmt::Display for Approach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a system can do for migrations (its coordinator's `/healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// CRIU's version when `criu check` passes here; `None` otherwise (see `criu_error`).
    #[serde(default)]
    pub criu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_error: Option<String>,
    /// runc's version, `None` when there is no runc.
    #[serde(default)]
    pub runc: Option<String>,
    /// The containerd runtime types whose shim binary is on this system's PATH
    /// (`containerd-shim-runc-v2` is `io.containerd.runc.v2`).
    #[serde(default)]
    pub runtimes: Vec<String>,
}

impl Capabilities {
    /// This system's, probed once per process (`criu check` takes a while).
    pub async fn local() -> Capabilities {
        static PROBED: OnceCell<Capabilities> = OnceCell::const_new();
        PROBED.get_or_init(probe).await.clone()
    }

    fn has_runtime(&self, rt: &str) -> bool {
        self.runtimes.iter().any(|r| r == rt)
    }
}

async fn probe() -> Capabilities {
    let (criu, criu_error) = match run(Command::new("criu").arg("check")).await {
        Ok(_) => match run(Command::new("criu").arg("--version")).await {
            // "Version: 4.2.1"
            Ok(out) => (
                out.lines()
                    .find_map(|l| l.strip_prefix("Version:"))
                    .map(|v| v.trim().to_string())
                    .or(Some(String::new())),
                None,
            ),
            Err(e) => (None, Some(e)),
        },
        Err(e) => (None, Some(format!("criu check: {e}"))),
    };
    // "runc version 1.1.5"
    let runc = run(Command::new("runc").arg("--version"))
        .await
        .ok()
        .and_then(|o| {
            o.lines()
                .next()
                .and_then(|l| l.strip_prefix("runc version"))
                .map(|v| v.trim().to_string())
        });
    Capabilities {
        criu,
        criu_error,
        runc,
        runtimes: runtimes_on_path(std::env::var_os("PATH").as_deref()),
    }
}

/// Runs a probe: its stdout, or why it failed (not found, non-zero exit with stderr).
async fn run(cmd: &mut Command) -> std::result::Result<String, String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("not usable: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("{}: {}", out.status, last.trim()))
    }
}

/// Runtime types of the shim binaries in the dirs of `path` (containerd's rule, runtime/v2
/// README: `io.containerd.<name>.<version>` is the binary `containerd-shim-<name>-<version>`).
fn runtimes_on_path(path: Option<&std::ffi::OsStr>) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out: Vec<String> = Vec::new();
    let Some(path) = path else { return out };
    for dir in std::env::split_paths(path) {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rt) = runtime_of_shim(&name) else {
                continue;
            };
            let executable = std::fs::metadata(e.path())
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if executable && !out.contains(&rt) {
                out.push(rt);
            }
        }
    }
    out.sort();
    out
}

fn runtime_of_shim(binary: &str) -> Option<String> {
    let rest = binary.strip_prefix("containerd-shim-")?;
    let (name, version) = rest.rsplit_once('-')?;
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    (valid(name) && valid(version) && version.starts_with('v'))
        .then(|| format!("io.containerd.{name}.{version}"))
}

/// One approach and whether it can move the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub approach: Approach,
    pub feasible: bool,
    /// Why not (empty when feasible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// What the source knows when it decides.
pub struct Facts<'a> {
    pub container: &'a ContainerRef,
    pub runtime: &'a str,
    /// The image the container was created from (empty: `ctr run --rootfs`).
    pub image: &'a str,
    pub spec: &'a Value,
    pub labels: &'a HashMap<String, String>,
    pub source: &'a str,
    pub destination: &'a str,
    pub local: &'a Capabilities,
    pub peer: &'a Capabilities,
}

/// Every approach, assessed for the container.
pub fn assess(f: &Facts) -> Vec<Assessment> {
    Approach::ALL
        .into_iter()
        .map(|approach| {
            let reasons = match approach {
                Approach::Container => container_level(f),
                Approach::Orchestrator => orchestrator_level(f),
                Approach::Service => vec![
                    "needs a migratable image (a service that hands over its own state); the \
                     service-level approach is not supported yet"
                        .to_string(),
                ],
            };
            Assessment {
                approach,
                feasible: reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// What both runtime-based approaches need of the container and the systems.
fn common(f: &Facts, approach: Approach, runtime: &str) -> Vec<String> {
    let mut why = Vec::new();
    let r = f.container;
    if f.image.is_empty() {
        why.push(format!(
            "{r} was not created from an image (ctr run --rootfs?): the destination recreates \
             it from the same image"
        ));
    }
    for (dest, src) in bind_mounts(f.spec) {
        if Path::new(&src).starts_with(KUBELET_PODS_DIR) {
            why.push(format!(
                "the mount {dest} is kubelet-managed ({src}): it exists on system {} only, for \
                 a pod system {} does not have",
                f.source, f.destination
            ));
        }
    }
    for (sys, caps) in [(f.source, f.local), (f.destination, f.peer)] {
        if caps.criu.is_none() {
            why.push(format!(
                "system {sys} cannot checkpoint/restore: no working CRIU ({})",
                caps.criu_error.as_deref().unwrap_or("criu check failed")
            ));
        }
    }
    if !f.peer.has_runtime(runtime) {
        why.push(format!(
            "system {} has no {runtime} runtime (no {} on its PATH) for the {approach} approach",
            f.destination,
            shim_binary(runtime)
        ));
    }
    why
}

fn shim_binary(runtime: &str) -> String {
    let parts: Vec<&str> = runtime.split('.').collect();
    match parts.as_slice() {
        [.., name, version] => format!("containerd-shim-{name}-{version}"),
        _ => runtime.to_string(),
    }
}

fn container_level(f: &Facts) -> Vec<String> {
    let mut why = Vec::new();
    if f.runtime != UMS_RUNTIME {
        why.push(format!(
            "{} runs on runtime {}, not on the ums runtime ({UMS_RUNTIME})",
            f.container,
            shown(f.runtime)
        ));
    } else if let Err(e) = check_source_container(f.spec, f.labels, f.container) {
        why.push(e.to_string());
    }
    why.extend(common(f, Approach::Container, UMS_RUNTIME));
    why
}

fn orchestrator_level(f: &Facts) -> Vec<String> {
    let mut why = Vec::new();
    let r = f.container;
    if f.runtime != RUNC_RUNTIME {
        why.push(format!(
            "{r} runs on runtime {}, not on containerd's runc runtime ({RUNC_RUNTIME})",
            shown(f.runtime)
        ));
    }
    if cri_kind(f.labels, f.spec) == Some(CriKind::Sandbox) {
        why.push(format!(
            "{r} is a CRI pod sandbox (its pause container): migrate the pod's containers"
        ));
    }
    why.extend(native_spec_blockers(f.spec, r));
    for (sys, caps) in [(f.source, f.local), (f.destination, f.peer)] {
        if caps.runc.is_none() {
            why.push(format!("system {sys} has no runc"));
        }
    }
    why.extend(common(f, Approach::Orchestrator, RUNC_RUNTIME));
    why
}

/// What in a spec runc's checkpoint/restore through containerd cannot move to another system.
fn native_spec_blockers(spec: &Value, r: &ContainerRef) -> Vec<String> {
    let mut why = Vec::new();
    if spec
        .pointer("/process/terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        why.push(format!(
            "{r} runs with a terminal (ctr run -t): its pty stays on the source system"
        ));
    }
    let cri = cri_kind(&HashMap::new(), spec) == Some(CriKind::Container);
    let nss = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for ns in nss {
        let ty = ns.get("type").and_then(Value::as_str).unwrap_or("");
        let path = ns.get("path").and_then(Value::as_str).unwrap_or("");
        if path.is_empty() {
            continue;
        }
        if cri && ty == "pid" {
            why.push(format!(
                "{r} shares its pod's pid namespace ({path}; CRI pid mode POD): CRIU can only \
                 restore it into that same namespace"
            ));
        } else {
            let whose = if cri {
                "its pod's"
            } else {
                "another process's"
            };
            why.push(format!(
                "{r} joins {whose} {ty} namespace {path}: runc's checkpoint records it as \
                 external, and a restore on another system has no such namespace to join"
            ));
        }
    }
    why
}

fn shown(runtime: &str) -> &str {
    if runtime.is_empty() {
        "(none)"
    } else {
        runtime
    }
}

/// The answer of a dry run (`ums migrate --dry-run`, `POST /v1/migrate` with `dry_run`): every
/// approach assessed, the one a migration would use, or why none can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    #[serde(rename = "ref")]
    pub container: String,
    pub source_system: String,
    pub destination_system: String,
    /// The container's runtime type on the source.
    pub runtime: String,
    /// The approach a migration uses; `None` when none is feasible.
    pub approach: Option<Approach>,
    /// The approach asked for with `--approach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<Approach>,
    pub feasible: bool,
    /// Why the migration is refused (`None` when feasible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub approaches: Vec<Assessment>,
    pub source_capabilities: Capabilities,
    pub destination_capabilities: Capabilities,
}

impl Survey {
    /// The survey of `assessments`: the forced approach if feasible, else the first feasible.
    pub fn choose(f: &Facts, assessments: Vec<Assessment>, forced: Option<Approach>) -> Survey {
        let (approach, reason) = match forced {
            Some(a) => match assessments.iter().find(|x| x.approach == a) {
                Some(x) if x.feasible => (Some(a), None),
                Some(x) => (
                    None,
                    Some(format!(
                        "the {a} approach (--approach) cannot migrate {}: {}",
                        f.container,
                        x.reasons.join("; ")
                    )),
                ),
                None => (None, Some(format!("the {a} approach is unknown here"))),
            },
            None => match assessments.iter().find(|x| x.feasible) {
                Some(x) => (Some(x.approach), None),
                None => (
                    None,
                    Some(format!(
                        "no approach can migrate {} from {} to {}: {}",
                        f.container,
                        f.source,
                        f.destination,
                        assessments
                            .iter()
                            .map(|x| format!("{}: {}", x.approach, x.reasons.join("; ")))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )),
                ),
            },
        };
        Survey {
            container: f.container.to_string(),
            source_system: f.source.to_string(),
            destination_system: f.destination.to_string(),
            runtime: f.runtime.to_string(),
            approach,
            forced,
            feasible: approach.is_some(),
            reason,
            approaches: assessments,
            source_capabilities: f.local.clone(),
            destination_capabilities: f.peer.clone(),
        }
    }

    /// The approach to use, or the refusal (Unsupported: 422).
    pub fn chosen(&self) -> Result<Approach> {
        self.approach.ok_or_else(|| {
            Error::Unsupported(
                self.reason
                    .clone()
                    .unwrap_or_else(|| format!("no approach can migrate {}", self.container)),
            )
        })
    }

    /// What `ums migrate --dry-run` prints without --json.
    pub fn explain(&self) -> String {
        let mut s = match self.approach {
            Some(a) => format!(
                "{} ({}) on {} -> {}: {a}{}\n",
                self.container,
                shown(&self.runtime),
                self.source_system,
                self.destination_system,
                if self.forced.is_some() {
                    " (forced)"
                } else {
                    ""
                }
            ),
            None => format!(
                "{} ({}) on {} -> {}: NOT migratable: {}\n",
                self.container,
                shown(&self.runtime),
                self.source_system,
                self.destination_system,
                self.reason.as_deref().unwrap_or("no approach is feasible")
            ),
        };
        for a in &self.approaches {
            let verdict = if a.feasible {
                if Some(a.approach) == self.approach {
                    "feasible (chosen)".to_string()
                } else {
                    "feasible".to_string()
                }
            } else {
                format!("not feasible: {}", a.reasons.join("; "))
            };
            s.push_str(&format!("  {:<19} {verdict}\n", a.approach.as_str()));
        }
        for (sys, c) in [
            (&self.source_system, &self.source_capabilities),
            (&self.destination_system, &self.destination_capabilities),
        ] {
            s.push_str(&format!(
                "  system {sys}: CRIU {}, runc {}, runtimes {}\n",
                c.criu.as_deref().unwrap_or("none"),
                c.runc.as_deref().unwrap_or("none"),
                if c.runtimes.is_empty() {
                    "none".to_string()
                } else {
                    c.runtimes.join(", ")
                }
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps() -> Capabilities {
        Capabilities {
            criu: Some("4.2.1".into()),
            criu_error: None,
            runc: Some("1.1.5".into()),
            runtimes: vec![RUNC_RUNTIME.into(), UMS_RUNTIME.into()],
        }
    }

    fn spec() -> Value {
        json!({"process": {"terminal": false, "args": ["/counter"]},
               "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}})
    }

    struct Case {
        r: ContainerRef,
        runtime: &'static str,
        image: &'static str,
        spec: Value,
        labels: HashMap<String, String>,
        local: Capabilities,
        peer: Capabilities,
    }

    impl Case {
        fn new(runtime: &'static str) -> Case {
            Case {
                r: ContainerRef::parse("default/web1").unwrap(),
                runtime,
                image: "localhost/ums/counter:1",
                spec: spec(),
                labels: HashMap::new(),
                local: caps(),
                peer: caps(),
            }
        }

        fn facts(&self) -> Facts<'_> {
            Facts {
                container: &self.r,
                runtime: self.runtime,
                image: self.image,
                spec: &self.spec,
                labels: &self.labels,
                source: "a",
                destination: "b",
                local: &self.local,
                peer: &self.peer,
            }
        }

        fn survey(&self, forced: Option<Approach>) -> Survey {
            let f = self.facts();
            Survey::choose(&f, assess(&f), forced)
        }
    }

    fn reasons(s: &Survey, a: Approach) -> String {
        s.approaches
            .iter()
            .find(|x| x.approach == a)
            .map(|x| x.reasons.join("; "))
            .unwrap_or_default()
    }

    #[test]
    fn ums_container_is_container_level() {
        let s = Case::new(UMS_RUNTIME).survey(None);
        assert_eq!(s.approach, Some(Approach::Container));
        assert!(s.feasible && s.reason.is_none());
        assert!(reasons(&s, Approach::Orchestrator).contains("not on containerd's runc runtime"));
        assert!(reasons(&s, Approach::Service).contains("migratable image"));
        let text = s.explain();
        assert!(
            text.contains("container-level     feasible (chosen)"),
            "{text}"
        );
    }

    #[test]
    fn runc_container_is_orchestrator_level() {
        let s = Case::new(RUNC_RUNTIME).survey(None);
        assert_eq!(s.approach, Some(Approach::Orchestrator));
        assert!(reasons(&s, Approach::Container).contains("not on the ums runtime"));
        // Forcing the container-level approach is refused with its reason.
        let s = Case::new(RUNC_RUNTIME).survey(Some(Approach::Container));
        assert_eq!(s.approach, None);
        let e = s.chosen().unwrap_err();
        assert_eq!(e.http_status(), 422);
        assert!(
            e.to_string()
                .contains("container-level approach (--approach)"),
            "{e}"
        );
        assert!(e.to_string().contains("not on the ums runtime"), "{e}");
        // Service-level is never feasible.
        let s = Case::new(RUNC_RUNTIME).survey(Some(Approach::Service));
        assert!(!s.feasible);
        assert!(s.reason.unwrap().contains("migratable image"));
    }

    #[test]
    fn infeasible_with_reasons() {
        let s = Case::new("io.containerd.kata.v2").survey(None);
        assert!(!s.feasible);
        let r = s.reason.clone().unwrap();
        assert!(r.contains("no approach can migrate default/web1"), "{r}");
        assert!(r.contains("io.containerd.kata.v2"), "{r}");

        // The peer lacks CRIU: neither runtime approach.
        let mut c = Case::new(RUNC_RUNTIME);
        c.peer.criu = None;
        c.peer.criu_error = Some("criu check: not usable: No such file".into());
        let s = c.survey(None);
        assert!(!s.feasible);
        assert!(reasons(&s, Approach::Orchestrator).contains("system b cannot checkpoint"));

        // The peer lacks the runtime.
        let mut c = Case::new(UMS_RUNTIME);
        c.peer.runtimes = vec![RUNC_RUNTIME.into()];
        let s = c.survey(None);
        assert!(reasons(&s, Approach::Container).contains("containerd-shim-ums-v1"));

        // A pod container sharing its pod's pid namespace, with kubelet's mounts.
        let mut c = Case::new(RUNC_RUNTIME);
        c.spec = json!({
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "process": {"terminal": false},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/42/ns/pid"},
                                     {"type": "network", "path": "/var/run/netns/cni-1"}]},
            "mounts": [{"destination": "/etc/hosts", "type": "bind",
                        "source": "/var/lib/kubelet/pods/u1/etc-hosts", "options": ["rbind"]}]
        });
        let s = c.survey(None);
        let o = reasons(&s, Approach::Orchestrator);
        assert!(o.contains("shares its pod's pid namespace"), "{o}");
        assert!(o.contains("joins its pod's network namespace"), "{o}");
        assert!(o.contains("kubelet-managed"), "{o}");

        // --rootfs containers.
        let mut c = Case::new(RUNC_RUNTIME);
        c.image = "";
        assert!(
            reasons(&c.survey(None), Approach::Orchestrator).contains("not created from an image")
        );
    }

    #[test]
    fn approach_names() {
        assert_eq!(
            Approach::parse("orchestrator").unwrap(),
            Approach::Orchestrator
        );
        assert_eq!(
            Approach::parse("container-level").unwrap(),
            Approach::Container
        );
        assert!(Approach::parse("vm").is_err());
        let v: Approach = serde_json::from_value(json!("orchestrator")).unwrap();
        assert_eq!(v, Approach::Orchestrator);
        assert_eq!(
            serde_json::to_value(Approach::Service).unwrap(),
            json!("service-level")
        );
    }

    #[test]
    fn shim_binaries_name_runtimes() {
        assert_eq!(
            runtime_of_shim("containerd-shim-runc-v2").as_deref(),
            Some(RUNC_RUNTIME)
        );
        assert_eq!(
            runtime_of_shim("containerd-shim-ums-v1").as_deref(),
            Some(UMS_RUNTIME)
        );
        assert_eq!(runtime_of_shim("containerd-shim"), None);
        assert_eq!(runtime_of_shim("containerd-shim-runc-v2.bak"), None);
        assert_eq!(shim_binary(RUNC_RUNTIME), "containerd-shim-runc-v2");
    }
}
