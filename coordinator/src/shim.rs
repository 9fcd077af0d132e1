//! The migration API of a task's shim (ums.v1.Migration over ttrpc).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ttrpc::context;
use ums_shim::api::migration::{
    DumpRequest, DumpResponse, MigrationRef, PrepareRequest, StatusResponse,
};
use ums_shim::api::migration_ttrpc::MigrationClient;

use crate::error::{Error, Result};
use crate::refs::ContainerRef;

/// Short calls (Prepare, Commit, Abort, Status).
const SHORT: Duration = Duration::from_secs(30);

/// `<containerd state>/io.containerd.runtime.v2.task/<ns>/<id>/ums/migration.address`
pub fn address_file(containerd_state: &Path, r: &ContainerRef) -> PathBuf {
    containerd_state
        .join("io.containerd.runtime.v2.task")
        .join(&r.namespace)
        .join(&r.id)
        .join("ums")
        .join("migration.address")
}

/// Reads the shim's migration address, waiting up to `wait` for the shim to write it.
pub async fn read_address(file: &Path, wait: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::fs::read_to_string(file).await {
            Ok(s) if !s.trim().is_empty() => {
                let a = s.trim().to_string();
                if !a.starts_with("unix://") {
                    return Err(Error::Shim {
                        op: "address".into(),
                        message: format!("{}: unexpected address {a:?}", file.display()),
                    });
                }
                return Ok(a);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Shim {
                op: "address".into(),
                message: format!(
                    "{} does not exist: the task's shim serves no migration API (is it \
                     containerd-shim-ums-v1 with migration support?)",
                    file.display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connected migration client of one task's shim.
#[derive(Clone)]
pub struct Shim {
    client: MigrationClient,
    address: String,
    id: String,
}

impl Shim {
    /// Connects to the shim of task `r`, whose address file is under `containerd_state`.
    pub async fn connect(
        containerd_state: &Path,
        r: &ContainerRef,
        wait: Duration,
    ) -> Result<Shim> {
        let address = read_address(&address_file(containerd_state, r), wait).await?;
        let client = ttrpc::asynchronous::Client::connect(&address)
            .await
            .map_err(|e| Error::Shim {
                op: "connect".into(),
                message: format!("{address}: {e}"),
            })?;
        Ok(Shim {
            client: MigrationClient::new(client),
            address,
            id: r.id.clone(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn mref(&self, migration_id: &str) -> MigrationRef {
        MigrationRef {
            id: self.id.clone(),
            migration_id: migration_id.into(),
            ..Default::default()
        }
    }

    pub async fn prepare(
        &self,
        migration_id: &str,
        listen: &str,
        token: &str,
        max_bytes: u64,
        images_dir: &str,
    ) -> Result<String> {
        let req = PrepareRequest {
            id: self.id.clone(),
            migration_id: migration_id.into(),
            listen: listen.into(),
            token: token.into(),
            max_bytes,
            dir: images_dir.into(),
            ..Default::default()
        };
        let r = self
            .client
            .prepare(context::with_duration(SHORT), &req)
            .await
            .map_err(|e| Error::shim("Prepare", e))?;
        if r.address.is_empty() {
            return Err(Error::Shim {
                op: "Prepare".into(),
                message: "the shim returned no stream address".into(),
            });
        }
        Ok(r.address)
    }

    pub async fn dump(
        &self,
        migration_id: &str,
        peer: &str,
        token: &str,
        post_copy: bool,
        hold: bool,
        timeout: Duration,
    ) -> Result<DumpResponse> {
        let req = DumpRequest {
            id: self.id.clone(),
            migration_id: migration_id.into(),
            peer: peer.into(),
            token: token.into(),
            post_copy,
            hold,
            ..Default::default()
        };
        // The ttrpc deadline plus a local one: a shim that vanishes must not hang us.
        match tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.client.dump(context::with_duration(timeout), &req),
        )
        .await
        {
            Err(_) => Err(Error::Timeout(format!(
                "shim Dump did not return within {}s",
                timeout.as_secs()
            ))),
            Ok(r) => r.map_err(|e| Error::shim("Dump", e)),
        }
    }

    /// Post-copy: waits until the destination has fetched every page.
    pub async fn wait_pages(&self, migration_id: &str, timeout: Duration) -> Result<DumpResponse> {
        match tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.client
                .wait_pages(context::with_duration(timeout), &self.mref(migration_id)),
        )
        .await
        {
            Err(_) => Err(Error::Timeout(format!(
                "shim WaitPages did not return within {}s",
                timeout.as_secs()
            ))),
            Ok(r) => r.map_err(|e| Error::shim("WaitPages", e)),
        }
    }

    pub async fn commit(&self, migration_id: &str) -> Result<()> {
        self.client
            .commit(context::with_duration(SHORT), &self.mref(migration_id))
            .await
            .map(|_| ())
            .map_err(|e| Error::shim("Commit", e))
    }

    pub async fn abort(&self, migration_id: &str) -> Result<()> {
        self.client
            .abort(context::with_duration(SHORT), &self.mref(migration_id))
            .await
            .map(|_| ())
            .map_err(|e| Error::shim("Abort", e))
    }

    pub async fn status(&self, migration_id: &str) -> Result<StatusResponse> {
        self.client
            .status(
                context::with_duration(Duration::from_secs(5)),
                &self.mref(migration_id),
            )
            .await
            .map_err(|e| Error::shim("Status", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_file_path() {
        let r = ContainerRef::parse("default/web1").unwrap();
        assert_eq!(
            address_file(Path::new("/run/ums-testbed/a/state"), &r),
            PathBuf::from(
                "/run/ums-testbed/a/state/io.containerd.runtime.v2.task/default/web1/ums/migration.address"
            )
        );
    }

    #[tokio::test]
    async fn reads_and_validates_address() {
        let dir = std::env::temp_dir().join(format!("ums-coord-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("migration.address");
        std::fs::write(&f, "unix:///run/ums/migration/1.sock\n").unwrap();
        assert_eq!(
            read_address(&f, Duration::from_millis(10)).await.unwrap(),
            "unix:///run/ums/migration/1.sock"
        );
        std::fs::write(&f, "tcp://1.2.3.4:5").unwrap();
        assert!(read_address(&f, Duration::from_millis(10)).await.is_err());
        let missing = dir.join("nope");
        let e = read_address(&missing, Duration::from_millis(60))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("serves no migration API"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
