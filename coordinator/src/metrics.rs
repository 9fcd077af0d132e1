//! The coordinator's Prometheus metrics (`GET /metrics`, text format 0.0.4): migrations by
//! approach, role and outcome, image bytes sent, phase and total durations as histograms, and
//! requests refused for their credentials. Counted when a migration ends (the registry keeps
//! only a bounded history; these counters keep counting).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::api::{Record, Role, State};

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (n, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (approach, role, outcome) -> migrations ended so.
    migrations: BTreeMap<(String, &'static str, &'static str), u64>,
    /// approach -> image bytes this system sent as a source.
    bytes_sent: BTreeMap<String, u64>,
    /// (approach, phase) -> durations of that phase (source side: all five are measured there).
    phases: BTreeMap<(String, &'static str), Histogram>,
    /// (approach, role) -> from the request to the end.
    totals: BTreeMap<(String, &'static str), Histogram>,
    /// HTTP status (401, 403) -> requests refused for their credentials.
    refused: BTreeMap<u16, u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn role_label(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Destination => "destination",
    }
}

/// `name="value"` with the value escaped as the text format wants.
fn label(name: &str, value: &str) -> String {
    let v = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{name}=\"{v}\"")
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a migration that just ended (its final record).
    pub fn migration_ended(&self, r: &Record) {
        let outcome = match r.state {
            State::Completed => "completed",
            State::Failed => "failed",
            State::Aborted => "aborted",
            State::Running => return,
        };
        let role = role_label(r.role);
        let approach = r.approach.clone();
        let mut g = self.lock();
        *g.migrations
            .entry((approach.clone(), role, outcome))
            .or_default() += 1;
        g.totals
            .entry((approach.clone(), role))
            .or_default()
            .observe(r.elapsed_ms as f64 / 1000.0);
        if r.role == Role::Source {
            *g.bytes_sent.entry(approach.clone()).or_default() += r.bytes;
            for (phase, ms) in r.phases_ms.measured() {
                g.phases
                    .entry((approach.clone(), phase))
                    .or_default()
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Counts a request refused with `status` (401 or 403).
    pub fn refused(&self, status: u16) {
        *self.lock().refused.entry(status).or_default() += 1;
    }

    /// The text exposition; `running`: migrations in progress now, by role.
    pub fn render(&self, system: &str, running: &[(Role, u64)]) -> String {
        let g = self.lock();
        let sys = label("system", system);
        let mut out = String::new();
        out.push_str(
            "# HELP ums_migrations_total Migrations that ended, by approach, role and outcome.\n\
             # TYPE ums_migrations_total counter\n",
        );
        for ((approach, role, outcome), n) in &g.migrations {
            let _ = writeln!(
                out,
                "ums_migrations_total{{{sys},{},{},{}}} {n}",
                label("approach", approach),
                label("role", role),
                label("outcome", outcome)
            );
        }
        out.push_str(
            "# HELP ums_migrations_in_progress Migrations running now, by role.\n\
             # TYPE ums_migrations_in_progress gauge\n",
        );
        for (role, n) in running {
            let _ = writeln!(
                out,
                "ums_migrations_in_progress{{{sys},{}}} {n}",
                label("role", role_label(*role))
            );
        }
        out.push_str(
            "# HELP ums_stream_bytes_sent_total Image bytes streamed by this system as a source.\n\
             # TYPE ums_stream_bytes_sent_total counter\n",
        );
        for (approach, n) in &g.bytes_sent {
            let _ = writeln!(
                out,
                "ums_stream_bytes_sent_total{{{sys},{}}} {n}",
                label("approach", approach)
            );
        }
        out.push_str(
            "# HELP ums_migration_phase_duration_seconds Duration of each phase of the migrations this system sourced.\n\
             # TYPE ums_migration_phase_duration_seconds histogram\n",
        );
        for ((approach, phase), h) in &g.phases {
            let labels = format!(
                "{sys},{},{}",
                label("approach", approach),
                label("phase", phase)
            );
            h.render(&mut out, "ums_migration_phase_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP ums_migration_duration_seconds Duration of migrations from request to end, by role.\n\
             # TYPE ums_migration_duration_seconds histogram\n",
        );
        for ((approach, role), h) in &g.totals {
            let labels = format!(
                "{sys},{},{}",
                label("approach", approach),
                label("role", role)
            );
            h.render(&mut out, "ums_migration_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP ums_http_refused_total API requests refused for missing (401) or wrong (403) credentials.\n\
             # TYPE ums_http_refused_total counter\n",
        );
        for (status, n) in &g.refused {
            let _ = writeln!(out, "ums_http_refused_total{{{sys},code=\"{status}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PartialPhasesMs, Phase};

    fn record(role: Role, state: State, bytes: u64, phases: PartialPhasesMs) -> Record {
        Record {
            migration_id: "m-1".into(),
            container: "default/web1".into(),
            approach: "container-level".into(),
            role,
            peer: "b".into(),
            phase: Phase::Done,
            state,
            bytes,
            started_at_ms: 0,
            elapsed_ms: 700,
            phases_ms: phases,
            error: None,
            error_kind: None,
            note: None,
            result: None,
        }
    }

    #[test]
    fn counts_and_histograms() {
        let m = Metrics::new();
        let phases = PartialPhasesMs {
            pre_migration: Some(100),
            checkpoint: Some(300),
            transfer: Some(40),
            restore: Some(200),
            post_copy: None,
            post_migration: Some(60),
        };
        m.migration_ended(&record(Role::Source, State::Completed, 1000, phases));
        m.migration_ended(&record(
            Role::Source,
            State::Failed,
            24,
            PartialPhasesMs {
                pre_migration: Some(3000),
                ..Default::default()
            },
        ));
        m.migration_ended(&record(
            Role::Destination,
            State::Completed,
            0,
            PartialPhasesMs::default(),
        ));
        m.migration_ended(&record(
            Role::Source,
            State::Running,
            5,
            PartialPhasesMs::default(),
        ));
        m.refused(401);
        m.refused(403);
        m.refused(403);
        let t = m.render("a", &[(Role::Source, 2), (Role::Destination, 0)]);
        let has = |l: &str| assert!(t.lines().any(|x| x == l), "missing {l:?} in\n{t}");
        has(
            r#"ums_migrations_total{system="a",approach="container-level",role="source",outcome="completed"} 1"#,
        );
        has(
            r#"ums_migrations_total{system="a",approach="container-level",role="source",outcome="failed"} 1"#,
        );
        has(
            r#"ums_migrations_total{system="a",approach="container-level",role="destination",outcome="completed"} 1"#,
        );
        has(r#"ums_migrations_in_progress{system="a",role="source"} 2"#);
        has(r#"ums_stream_bytes_sent_total{system="a",approach="container-level"} 1024"#);
        // 0.1 s of pre_migration and 3 s: one in le=0.1, both by le=5.
        has(
            r#"ums_migration_phase_duration_seconds_bucket{system="a",approach="container-level",phase="pre_migration",le="0.1"} 1"#,
        );
        has(
            r#"ums_migration_phase_duration_seconds_bucket{system="a",approach="container-level",phase="pre_migration",le="5"} 2"#,
        );
        has(
            r#"ums_migration_phase_duration_seconds_count{system="a",approach="container-level",phase="pre_migration"} 2"#,
        );
        has(
            r#"ums_migration_phase_duration_seconds_sum{system="a",approach="container-level",phase="pre_migration"} 3.1"#,
        );
        has(
            r#"ums_migration_phase_duration_seconds_count{system="a",approach="container-level",phase="restore"} 1"#,
        );
        has(
            r#"ums_migration_duration_seconds_bucket{system="a",approach="container-level",role="source",le="+Inf"} 2"#,
        );
        has(r#"ums_http_refused_total{system="a",code="403"} 2"#);
        // Every sample line belongs to a declared family.
        let families: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                families.iter().any(|f| l.starts_with(f)),
                "undeclared sample {l}"
            );
        }
    }

    #[test]
    fn label_escaping() {
        assert_eq!(label("a", "x\"y\\z\n"), r#"a="x\"y\\z\n""#);
    }
}
