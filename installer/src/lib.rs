//! Installs UMS on a node the way other runtime shims are installed (kata-deploy, runwasi's node
//! installers): the binaries onto the host, the `ums` runtime handler into containerd's config,
//! then a restart of containerd. The binary `ums-node-installer` is thin; the work is here.
//!
//! - [`config`]: the edit of containerd's `config.toml` (`version = 2` for 1.6/1.7, `version = 3`
//!   for 2.x), keeping everything else of the file.
//! - [`k3s`]: the same entry as a managed block of a k3s `config.toml.tmpl` / `config-v3.toml.tmpl`.
//! - [`node`]: where a node keeps its config, the files put on the host, the restart.

pub mod config;
pub mod error;
pub mod k3s;
pub mod node;

pub use config::{ConfigVersion, Edit};
pub use error::Error;

/// The CRI runtime handler (`RuntimeClass.handler`, `runtimeClassName: ums`).
pub const HANDLER: &str = "ums";
/// containerd's runtime type of the UMS shim: containerd runs `containerd-shim-ums-v1`.
pub const RUNTIME_TYPE: &str = "io.containerd.ums.v1";
/// The shim's binary name, which containerd looks up on its PATH.
pub const SHIM_BINARY: &str = "containerd-shim-ums-v1";
/// Annotations CRI passes from the pod and container configs into the OCI spec the shim gets
/// (`io.ums.restore` and the like); CRI drops every other annotation.
pub const ANNOTATIONS: &[&str] = &["io.ums.*"];
