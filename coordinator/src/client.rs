//! `ums migrate`: asks the source coordinator to migrate a container and follows the migration
//! (`GET /v1/migrations/{id}`) until it completes or fails.

use std::time::{Duration, Instant};

use crate::api::{
    human_bytes, MigrateAccepted, MigrateRequest, Phase, Placement, Record, Report, State,
};
use crate::approach::{Approach, Survey};
use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::refs::{ContainerRef, PeerUrl};

/// How long `ums migrate` keeps asking a source coordinator that does not answer.
const LOST_CONTACT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub from: String,
    pub to: String,
    pub container: String,
    /// Give up following after this long (the migration itself goes on at the source).
    pub timeout: Duration,
    pub poll: Duration,
    /// Sent as a bearer token (required when the coordinators have one).
    pub token: Option<String>,
    /// Verifies https:// coordinators (their CA).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The destination interface and pod.
    pub placement: Placement,
    /// The service's stable endpoint on the destination.
    pub endpoint: Option<crate::expose::EndpointOptions>,
    /// Force this approach (refused before anything is touched if it is not feasible).
    pub approach: Option<Approach>,
    /// Post-copy (CRIU lazy pages; container-level only).
    pub post_copy: bool,
    /// Post-copy, held: the restored service stays frozen until its last page is in.
    pub hold: bool,
}

impl MigrateOptions {
    pub fn new(from: &str, to: &str, container: &str) -> MigrateOptions {
        MigrateOptions {
            from: from.to_string(),
            to: to.to_string(),
            container: container.to_string(),
            timeout: Duration::from_secs(1800),
            poll: Duration::from_millis(100),
            token: None,
            tls: None,
            placement: Placement::default(),
            endpoint: None,
            approach: None,
            post_copy: false,
            hold: false,
        }
    }
}

/// What the client reports while it follows a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Accepted(MigrateAccepted),
    /// A new phase, or more bytes in the current one.
    Phase {
        migration_id: String,
        phase: Phase,
        bytes: u64,
        elapsed_ms: u64,
    },
}

impl Progress {
    /// The line `ums migrate` prints on stderr.
    pub fn line(&self) -> String {
        match self {
            Progress::Accepted(a) => format!(
                "ums: migration {} of {} from {} to {} ({}) started",
                a.migration_id, a.container, a.source_system, a.destination_system, a.destination
            ),
            Progress::Phase {
                migration_id,
                phase,
                bytes,
                elapsed_ms,
            } => format!(
                "ums: {migration_id} [{:>5}.{:03}s] {:<14} {}",
                elapsed_ms / 1000,
                elapsed_ms % 1000,
                phase.as_str(),
                human_bytes(*bytes)
            ),
        }
    }
}

/// Runs a migration; `progress` sees the start and every phase change or byte count change.
pub async fn migrate(opts: &MigrateOptions, mut progress: impl FnMut(Progress)) -> Result<Report> {
    let (http, from, accepted): (_, _, MigrateAccepted) = post_migrate(opts, false).await?;
    let id = accepted.migration_id.clone();
    progress(Progress::Accepted(accepted));

    let started = Instant::now();
    let url = from.join(&format!("/v1/migrations/{id}"));
    let mut last: Option<(Phase, u64)> = None;
    // Since when the source has not answered: a restarting coordinator ends the migrations it
    // finds in flight (recovery.rs) and answers again.
    let mut lost: Option<Instant> = None;
    loop {
        if started.elapsed() > opts.timeout {
            return Err(Error::Timeout(format!(
                "migration {id} did not finish within {}s (it may still run at {from})",
                opts.timeout.as_secs()
            )));
        }
        let rec: Record = match http.get(&url, Duration::from_secs(10)).await {
            Ok(r) => {
                lost = None;
                r
            }
            Err(Error::Peer {
                status: Some(404),
                message,
                ..
            }) => {
                return Err(Error::Failed(format!(
                    "the source coordinator {from} no longer knows migration {id} ({message}): \
                     restarted without its state dir?"
                )))
            }
            Err(e) => {
                let since = *lost.get_or_insert_with(Instant::now);
                if since.elapsed() >= LOST_CONTACT {
                    return Err(Error::Failed(format!(
                        "lost contact with the source coordinator {from} for {}s ({e}); \
                         migration {id} may still be running there",
                        LOST_CONTACT.as_secs()
                    )));
                }
                tokio::time::sleep(opts.poll * 2).await;
                continue;
            }
        };
        let now = (rec.phase, rec.bytes);
        if last != Some(now) && rec.state == State::Running {
            progress(Progress::Phase {
                migration_id: id.clone(),
                phase: rec.phase,
                bytes: rec.bytes,
                elapsed_ms: rec.elapsed_ms,
            });
            last = Some(now);
        }
        match rec.state {
            State::Running => tokio::time::sleep(opts.poll).await,
            State::Completed => {
                // Completed by a restarted source coordinator: the figures died with the
                // run that had them; the record says where the service runs.
                return rec.result.ok_or_else(|| {
                    Error::Failed(format!(
                        "migration {id} completed, but the source has no figures of it: {}",
                        rec.note.as_deref().unwrap_or("no reason given")
                    ))
                });
            }
            State::Failed | State::Aborted => return Err(failure(&rec)),
        }
    }
}

/// `ums migrate --dry-run`: which approach the source would use, and why the others cannot.
pub async fn survey(opts: &MigrateOptions) -> Result<Survey> {
    Ok(post_migrate(opts, true).await?.2)
}

/// `POST /v1/migrate` to the source: the client, the source's URL and its answer.
async fn post_migrate<R: serde::de::DeserializeOwned>(
    opts: &MigrateOptions,
    dry_run: bool,
) -> Result<(HttpClient, PeerUrl, R)> {
    let from = PeerUrl::parse(&opts.from)?;
    // Checked here too for a quick, local error.
    PeerUrl::parse(&opts.to)?;
    ContainerRef::parse(&opts.container)?;
    opts.placement.validate()?;
    let http = HttpClient::with_tls(opts.token.clone(), opts.tls.clone());
    let answer = http
        .post(
            &from.join("/v1/migrate"),
            &MigrateRequest {
                container: opts.container.clone(),
                to: opts.to.clone(),
                placement: opts.placement.clone(),
                endpoint: opts.endpoint.clone(),
                approach: opts.approach,
                dry_run,
                post_copy: opts.post_copy,
                hold: opts.hold,
            },
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| refusal(e, &from, "the migration", "source coordinator"))?;
    Ok((http, from, answer))
}

fn failure(rec: &Record) -> Error {
    Error::Failed(format!(
        "migration {} of {} failed in phase {}: {}",
        rec.migration_id,
        rec.container,
        rec.phase.as_str(),
        rec.error.as_deref().unwrap_or("no reason given")
    ))
}

/// A coordinator's refusal of `what` (an action phrase, e.g. "the migration"), phrased for the
/// user; `role` names the coordinator when it could not be reached at all.
pub(crate) fn refusal(e: Error, at: &PeerUrl, what: &str, role: &str) -> Error {
    match e {
        Error::Peer {
            status: Some(s),
            message,
            ..
        } => Error::Failed(format!("{at} refused {what} ({s}): {message}")),
        Error::Peer {
            status: None,
            message,
            ..
        } => Error::Failed(format!("{role} {at}: {message}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartialPhasesMs;
    use crate::api::Role;

    #[test]
    fn progress_lines() {
        let p = Progress::Phase {
            migration_id: "m-1".into(),
            phase: Phase::Checkpoint,
            bytes: 3 * 1024 * 1024,
            elapsed_ms: 1234,
        };
        assert_eq!(p.line(), "ums: m-1 [    1.234s] checkpoint     3.0 MiB");
    }

    #[test]
    fn failure_names_phase_and_reason() {
        let rec = Record {
            migration_id: "m-1".into(),
            container: "default/web1".into(),
            approach: crate::approach::Approach::Container.as_str().into(),
            role: Role::Source,
            peer: "http://b".into(),
            phase: Phase::PreMigration,
            state: State::Failed,
            bytes: 0,
            started_at_ms: 0,
            elapsed_ms: 5,
            phases_ms: PartialPhasesMs::default(),
            error: Some("image X not present on system b".into()),
            error_kind: Some("peer".into()),
            note: None,
            result: None,
        };
        assert_eq!(
            failure(&rec).to_string(),
            "migration m-1 of default/web1 failed in phase pre_migration: image X not present on system b"
        );
    }

    #[tokio::test]
    async fn local_validation() {
        let e = migrate(
            &MigrateOptions::new("10.0.0.1:7400", "http://127.0.0.1:1", "default/web1"),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::BadRequest(_)), "{e}");
        let e = migrate(
            &MigrateOptions::new("http://127.0.0.1:1", "http://127.0.0.1:2", "web1"),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_source() {
        // Port 1 on loopback: nothing listens there.
        let e = migrate(
            &MigrateOptions::new("http://127.0.0.1:1", "http://127.0.0.1:2", "default/web1"),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
    }
}
