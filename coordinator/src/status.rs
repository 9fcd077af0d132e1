//! `ums ls` and `ums status`: a coordinator's migrations (its registry, `GET /v1/migrations`)
//! as a table, one migration in detail, and the coordinator's own state.

use std::time::{Duration, UNIX_EPOCH};

use crate::api::{human_bytes, Health, Record, Role, State};
use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::logger::timestamp;
use crate::refs::PeerUrl;

const TIMEOUT: Duration = Duration::from_secs(10);

/// All migrations `at` knows, oldest first.
pub async fn records(http: &HttpClient, at: &PeerUrl) -> Result<Vec<Record>> {
    http.get(&at.join("/v1/migrations"), TIMEOUT).await
}

/// One migration of `at`.
pub async fn record(http: &HttpClient, at: &PeerUrl, id: &str) -> Result<Record> {
    crate::api::validate_migration_id(id)?;
    http.get(&at.join(&format!("/v1/migrations/{id}")), TIMEOUT)
        .await
}

pub async fn health(http: &HttpClient, at: &PeerUrl) -> Result<Health> {
    http.get(&at.join("/healthz"), TIMEOUT).await
}

fn state_str(s: State) -> &'static str {
    match s {
        State::Running => "running",
        State::Completed => "completed",
        State::Failed => "failed",
        State::Aborted => "aborted",
    }
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Destination => "destination",
    }
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// `pre 100 / checkpoint 120 / ...` in ms, or `-` before the first phase ended.
fn phases(r: &Record) -> String {
    let m = r.phases_ms.measured();
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(n, ms)| format!("{} {ms}", n.trim_end_matches("_migration")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `ums ls`: one line per migration under a header.
pub fn table(records: &[Record]) -> String {
    let header = [
        "MIGRATION",
        "REF",
        "APPROACH",
        "ROLE",
        "STATE",
        "PHASE",
        "BYTES",
        "ELAPSED",
        "PHASES (ms)",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.migration_id.clone(),
                r.container.clone(),
                r.approach.clone(),
                role_str(r.role).into(),
                state_str(r.state).into(),
                r.phase.as_str().into(),
                human_bytes(r.bytes),
                secs(r.elapsed_ms),
                phases(r),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `ums status ID`: one migration, a field a line.
pub fn detail(r: &Record) -> String {
    let mut f: Vec<(&str, String)> = vec![
        ("migration", r.migration_id.clone()),
        ("ref", r.container.clone()),
        ("approach", r.approach.clone()),
        (
            "role",
            format!(
                "{} ({} {})",
                role_str(r.role),
                match r.role {
                    Role::Source => "destination",
                    Role::Destination => "source",
                },
                r.peer
            ),
        ),
        ("state", state_str(r.state).into()),
        ("phase", r.phase.as_str().into()),
        (
            "started",
            timestamp(UNIX_EPOCH + Duration::from_millis(r.started_at_ms)),
        ),
        ("elapsed", secs(r.elapsed_ms)),
        ("bytes", format!("{} ({})", r.bytes, human_bytes(r.bytes))),
    ];
    for (n, ms) in r.phases_ms.measured() {
        f.push((n, format!("{ms} ms")));
    }
    if let Some(rep) = &r.result {
        f.push(("total", format!("{} ms", rep.total_ms)));
        f.push(("frozen", format!("{} ms", rep.frozen_ms)));
        f.push(("downtime", format!("{} ms", rep.downtime_ms)));
        f.push((
            "now at",
            format!(
                "{} ({}) {} pid {}",
                rep.location.system, rep.location.url, rep.location.container, rep.location.pid
            ),
        ));
        for w in &rep.warnings {
            f.push(("warning", w.clone()));
        }
        for n in &rep.notes {
            f.push(("note", n.clone()));
        }
    }
    if let Some(n) = &r.note {
        f.push(("note", n.clone()));
    }
    if let Some(e) = &r.error {
        let kind = r.error_kind.as_deref().unwrap_or("error");
        f.push(("error", format!("{e} ({kind})")));
    }
    // At least the longest phase name, so that every record lines up the same.
    let w = f.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(14);
    f.iter().map(|(k, v)| format!("{k:<w$}  {v}\n")).collect()
}

/// `ums status`: the coordinator, then its running migrations.
pub fn summary(at: &PeerUrl, h: &Health, records: &[Record]) -> String {
    let running: Vec<Record> = records
        .iter()
        .filter(|r| r.state == State::Running)
        .cloned()
        .collect();
    let count = |s: State| records.iter().filter(|r| r.state == s).count();
    let mut out = format!(
        "coordinator {} ({}) at {at}: {}, ums {}\nmigrations known: {} (running {}, completed {}, failed {}, aborted {})\n",
        h.name,
        if at.base().starts_with("https://") {
            "TLS"
        } else {
            "plain HTTP"
        },
        h.status,
        h.version,
        records.len(),
        running.len(),
        count(State::Completed),
        count(State::Failed),
        count(State::Aborted),
    );
    if !running.is_empty() {
        out.push('\n');
        out.push_str(&table(&running));
    }
    out
}

/// A clearer error for a coordinator that refused us or cannot be reached.
pub fn explain(e: Error, at: &PeerUrl) -> Error {
    match e {
        Error::Peer {
            status: Some(s @ (401 | 403)),
            message,
            ..
        } => Error::Failed(format!(
            "{at} refused the request ({s}): {message} (the coordinators' token: --token-file, \
             UMS_TOKEN_FILE)"
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PartialPhasesMs, Phase};
    use crate::approach::Approach;

    fn rec(id: &str, state: State, phase: Phase) -> Record {
        Record {
            migration_id: id.into(),
            container: "default/web1".into(),
            approach: Approach::Container.as_str().into(),
            role: Role::Source,
            peer: "https://10.77.0.2:7400".into(),
            phase,
            state,
            bytes: 168_000,
            started_at_ms: 1_709_251_200_123,
            elapsed_ms: 431,
            phases_ms: PartialPhasesMs {
                pre_migration: Some(100),
                checkpoint: Some(120),
                ..Default::default()
            },
            error: None,
            error_kind: None,
            note: None,
            result: None,
        }
    }

    #[test]
    fn ls_table() {
        let t = table(&[
            rec("m-1", State::Completed, Phase::Done),
            rec("m-22", State::Running, Phase::Restore),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("MIGRATION  REF           APPROACH"),
            "{t}"
        );
        assert_eq!(
            lines[1],
            "m-1        default/web1  container-level  source  completed  done     164.1 KiB  0.431s   pre 100 / checkpoint 120"
        );
        assert!(lines[2].contains(" running    restore "), "{t}");
        // Columns line up: REF starts at the same offset everywhere.
        let col = lines[0].find("REF").unwrap();
        assert!(lines
            .iter()
            .all(|l| &l[col..col + 7] == "default" || l[col..].starts_with("REF")));
        assert_eq!(
            table(&[]),
            "MIGRATION  REF  APPROACH  ROLE  STATE  PHASE  BYTES  ELAPSED  PHASES (ms)\n"
        );
    }

    #[test]
    fn status_detail() {
        let mut r = rec("m-1", State::Failed, Phase::Checkpoint);
        r.error = Some("shim Dump: boom".into());
        r.error_kind = Some("shim".into());
        let d = detail(&r);
        assert!(d.contains("migration       m-1\n"), "{d}");
        assert!(
            d.contains("role            source (destination https://10.77.0.2:7400)\n"),
            "{d}"
        );
        assert!(
            d.contains("started         2024-03-01T00:00:00.123Z\n"),
            "{d}"
        );
        assert!(d.contains("pre_migration   100 ms\n"), "{d}");
        assert!(
            d.contains("error           shim Dump: boom (shim)\n"),
            "{d}"
        );
    }

    #[test]
    fn status_summary() {
        let at = PeerUrl::parse("https://10.77.0.1:7400").unwrap();
        let h = Health {
            status: "ok".into(),
            name: "a".into(),
            version: "0.1.0".into(),
            capabilities: None,
        };
        let s = summary(
            &at,
            &h,
            &[
                rec("m-1", State::Completed, Phase::Done),
                rec("m-2", State::Running, Phase::Checkpoint),
            ],
        );
        assert!(
            s.starts_with("coordinator a (TLS) at https://10.77.0.1:7400: ok, ums 0.1.0\nmigrations known: 2 (running 1, completed 1, failed 0, aborted 0)\n"),
            "{s}"
        );
        assert!(s.contains("m-2"), "{s}");
        assert!(!s.contains("m-1 "), "{s}");
    }
}
