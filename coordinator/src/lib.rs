//! UMS coordinator: the per-system daemon that migrates containerized services between two
//! systems (the container-level approach of the UMS paper, section III), and the client that
//! asks it to.
//!
//! - [`server`]: the HTTP/JSON API (`ums coordinator`);
//! - [`source`] / [`dest`]: the two sides of a migration, driving the local shims over ttrpc
//!   ([`shim`]) and the local containerd over gRPC ([`containerd`]);
//! - [`client`]: `ums migrate`;
//! - [`spec`]: the destination container's spec (restore marker, netns, cgroups, CRI pods);
//! - [`mounts`]: bind mounts whose source exists on the source system only;
//! - [`cri`]: the CRI runtime and image services (configs of a CRI container at the source,
//!   its removal there, pods and containers created at the destination);
//! - [`adapter`]: the destination's interface, containerd ([`dest`]) or CRI ([`dest_cri`]);
//!   [`go_json`] reads the CRI configs containerd reports.
//! - [`frontman`], [`exposures`], [`handover`]: the service's stable endpoints (`ums expose`)
//!   and how they follow a migration.
//! - [`approach`]: which approach can move a container (`ums migrate --dry-run`);
//!   [`orchestrator`]: the orchestrator-level approach (containerd's native checkpoint/restore
//!   of runc containers); [`engine`]: the two approaches behind one driver.
pub mod adapter;
pub mod api;
pub mod approach;
pub mod client;
pub mod containerd;
pub mod coordinator;
pub mod cri;
pub mod dest;
pub mod dest_cri;
pub mod engine;
pub mod error;
pub mod expose;
pub mod expose_api;
pub mod exposures;
pub mod frontman;
pub mod go_json;
pub mod handover;
pub mod http;
pub mod image;
pub mod logger;
pub mod metrics;
pub mod mounts;
pub mod orchestrator;
pub mod recovery;
pub mod refs;
pub mod registry;
pub mod server;
pub mod shim;
pub mod sockets;
pub mod source;
pub mod spec;
pub mod status;
pub mod tls;

pub use coordinator::{Config, Coordinator};
pub use error::{Error, Result};
