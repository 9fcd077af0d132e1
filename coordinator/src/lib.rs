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
//! - [`cri`]: the CRI runtime service, to remove a migrated CRI container at the source.
pub mod api;
pub mod client;
pub mod containerd;
pub mod coordinator;
pub mod cri;
pub mod dest;
pub mod error;
pub mod http;
pub mod image;
pub mod logger;
pub mod mounts;
pub mod recovery;
pub mod refs;
pub mod registry;
pub mod server;
pub mod shim;
pub mod source;
pub mod spec;

pub use coordinator::{Config, Coordinator};
pub use error::{Error, Result};
