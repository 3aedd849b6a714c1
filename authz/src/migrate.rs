//! Versioned schema migrations for the services' embedded SQLite stores (authz, ARDS, the key
//! server): each service lists its steps, append only, and `PRAGMA user_version` records how
//! many ran. Every step runs in its own transaction with the version bump, so a crash leaves
//! the database at a version boundary; a database newer than this build is refused.

use rusqlite::{Connection, Transaction};

/// One migration step.
pub enum Step {
    Sql(&'static str),
    /// For a step plain SQL cannot say (e.g. adding a column an older build may have added).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
}

/// Runs the steps `conn` has not run yet. Returns the schema version reached.
pub fn migrate(conn: &mut Connection, steps: &[Step]) -> Result<i64, MigrateError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let target = steps.len() as i64;
    if current > target {
        return Err(MigrateError::FutureSchema(current));
    }
    for (i, step) in steps.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql)?,
            Step::Code(f) => f(&tx)?,
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(target)
}

/// Whether `table` has `column` (for [`Step::Code`] steps that repair what an older build made).
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Step] = &[
        Step::Sql("CREATE TABLE t (a INTEGER);"),
        Step::Code(|tx| tx.execute_batch("ALTER TABLE t ADD COLUMN b INTEGER;")),
    ];

    #[test]
    fn steps_run_once_in_order_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn, &STEPS[..1]).unwrap(), 1);
        assert!(!has_column(&conn, "t", "b").unwrap());
        // A later build adds a step: only that one runs (the first would fail: table exists).
        assert_eq!(migrate(&mut conn, STEPS).unwrap(), 2);
        assert!(has_column(&conn, "t", "b").unwrap());
        assert_eq!(migrate(&mut conn, STEPS).unwrap(), 2);
        // An older build refuses the newer database instead of writing into it.
        assert!(matches!(
            migrate(&mut conn, &STEPS[..1]),
            Err(MigrateError::FutureSchema(2))
        ));
    }
}
