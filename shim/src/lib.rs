//! The ums runtime: a containerd shim v2 (`io.containerd.ums.v1`) that keeps, for every
//! container containerd asks for, an OUTER container (the identity containerd manages) and
//! runs the real service NESTED inside it, so that the service can be checkpointed, moved
//! and restored while containerd only ever sees an ordinary task.
pub mod api;
pub mod command;
pub mod container;
pub mod criu_stats;
pub mod error;
pub mod events;
pub mod holder;
pub mod lazy_pages;
pub mod metrics;
pub mod migration;
pub mod migration_service;
pub mod oom;
pub mod pids;
pub mod precopy_images;
pub mod process;
pub mod resident;
pub mod runc;
pub mod service;
pub mod shim;
pub mod spec;
pub mod stdio;

pub use shim::UmsShim;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.ums.v1";
