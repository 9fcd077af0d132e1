//! A minimal `log` backend: `2026-05-01T12:00:00.123Z INFO  message` lines on stderr, with
//! `[m-0123abcd]` before the message on every line logged for a migration's work.
//!
//! The migration id is a task-local ([`in_migration`]): what a migration's task logs, in any
//! module, carries its id; tasks it starts with [`spawn`] inherit it.

use std::future::Future;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
            // Our crates at the chosen level; dependencies (hyper, h2, tonic) only warn and up.
            && (metadata.target().starts_with("ums") || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = line(
            SystemTime::now(),
            record.level(),
            current_migration().as_deref(),
            &record.args().to_string(),
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

tokio::task_local! {
    static MIGRATION: String;
}

/// Runs `f` as work of migration `id`: its log lines carry the id.
pub async fn in_migration<F: Future>(id: &str, f: F) -> F::Output {
    MIGRATION.scope(id.to_string(), f).await
}

/// The migration the current task works for, if any.
pub fn current_migration() -> Option<String> {
    MIGRATION.try_with(|id| id.clone()).ok()
}

/// `tokio::spawn` that keeps the current migration id for the new task's log lines.
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_migration() {
        Some(id) => tokio::spawn(MIGRATION.scope(id, f)),
        None => tokio::spawn(f),
    }
}

/// One log line: timestamp, level, `[migration]` when there is one, the message.
pub fn line(t: SystemTime, level: log::Level, migration: Option<&str>, msg: &str) -> String {
    match migration {
        Some(id) => format!("{} {level:<5} [{id}] {msg}\n", timestamp(t)),
        None => format!("{} {level:<5} {msg}\n", timestamp(t)),
    }
}

/// Installs the logger (once; later calls are ignored).
pub fn init(level: LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_200_123); // 2024-03-01
        assert_eq!(timestamp(t), "2024-03-01T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(timestamp(t), "2000-02-29T01:01:01.000Z");
    }

    #[test]
    fn lines() {
        assert_eq!(
            line(UNIX_EPOCH, log::Level::Info, Some("m-1"), "restore done"),
            "1970-01-01T00:00:00.000Z INFO  [m-1] restore done\n"
        );
        assert_eq!(
            line(UNIX_EPOCH, log::Level::Warn, None, "no token"),
            "1970-01-01T00:00:00.000Z WARN  no token\n"
        );
    }

    #[tokio::test]
    async fn migration_scope_reaches_spawned_tasks() {
        assert_eq!(current_migration(), None);
        let seen = in_migration("m-7", async {
            let inner = spawn(async { current_migration() }).await.unwrap();
            (current_migration(), inner)
        })
        .await;
        assert_eq!(seen, (Some("m-7".into()), Some("m-7".into())));
        // Outside the scope, and in tasks spawned from outside it: none.
        assert_eq!(spawn(async { current_migration() }).await.unwrap(), None);
    }
}
