//! SQLite storage: one database file shared by every instance, safe across processes.
//!
//! WAL mode lets readers run beside the single writer; `busy_timeout` makes a connection wait
//! for another process's write lock instead of failing; multi-statement writes use
//! `BEGIN IMMEDIATE`, which takes the write lock up front (a deferred transaction that upgrades
//! from read to write can fail with `SQLITE_BUSY` without waiting). Usernames are unique in the
//! schema itself, so concurrent sign-ups on different instances can never both succeed.
//!
//! rusqlite is blocking: [`Store::call`] runs every query on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

/// How long a connection waits for another writer before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections kept open per instance between queries.
const MAX_IDLE: usize = 8;

/// Created on first start; every statement is idempotent, so instances starting together are
/// fine (they run it one after the other inside `BEGIN IMMEDIATE`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256  BLOB    PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id, expires_at);
";

/// Columns of [`User`], in the order [`User::from_row`] reads them.
const USER_COLUMNS: &str = "id, username, display_name, created_at, updated_at";

/// A database failure (answered `500`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The database directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Unique, case-insensitively.
    pub username: String,
    /// Free text shown in the page.
    pub display_name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl User {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
        Ok(User {
            id: row.get(0)?,
            username: row.get(1)?,
            display_name: row.get(2)?,
            created_at: row.get(3)?,
            updated_at: row.get(4)?,
        })
    }
}

/// The database file and a few open connections to it.
pub struct Store {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, switches it to WAL and creates the
    /// schema.
    pub async fn open(path: &Path) -> Result<Arc<Store>, DbError> {
        let store = Arc::new(Store {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        store
            .call(|conn| {
                // Persistent in the file; a no-op once any instance has set it.
                let mode: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(journal_mode = %mode, "database is not in WAL mode");
                }
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(SCHEMA)?;
                tx.commit()
            })
            .await?;
        Ok(store)
    }

    /// Runs `query` on a pooled connection on the blocking thread pool.
    pub async fn call<T, F>(self: &Arc<Self>, query: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = match store.take_idle() {
                Some(conn) => conn,
                None => store.connect()?,
            };
            let result = query(&mut conn);
            // A connection is left in autocommit mode by every query (transactions roll back on
            // drop), so it can be reused whatever the outcome.
            store.put_idle(conn);
            Ok(result?)
        })
        .await?
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Durable across application crashes in WAL mode; only an OS crash can lose the last
        // commits, which is the usual trade for a web app.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().ok()?.pop()
    }

    fn put_idle(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
    }
}

/// Inserts a user; `None` if the username is taken (the unique constraint decided).
pub fn insert_user(
    conn: &mut Connection,
    username: &str,
    password_hash: &str,
    display_name: &str,
    now: i64,
) -> rusqlite::Result<Option<User>> {
    let sql = format!(
        "INSERT INTO users (username, password_hash, display_name, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4) RETURNING {USER_COLUMNS}"
    );
    let inserted = conn.query_row(
        &sql,
        params![username, password_hash, display_name, now],
        User::from_row,
    );
    match inserted {
        Ok(user) => Ok(Some(user)),
        Err(rusqlite::Error::SqliteFailure(err, _))
            if err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The user called `username` (case-insensitively) and their password hash.
pub fn user_with_hash(
    conn: &Connection,
    username: &str,
) -> rusqlite::Result<Option<(User, String)>> {
    let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = ?1");
    conn.prepare_cached(&sql)?
        .query_row([username], |row| Ok((User::from_row(row)?, row.get(5)?)))
        .optional()
}

/// Stores a session and drops the user's expired ones, in one transaction.
pub fn insert_session(
    conn: &mut Connection,
    token_sha256: &[u8],
    user_id: i64,
    now: i64,
    expires_at: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND expires_at <= ?2",
        params![user_id, now],
    )?;
    tx.execute(
        "INSERT INTO sessions (token_sha256, user_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token_sha256, user_id, now, expires_at],
    )?;
    tx.commit()
}

/// The user owning an unexpired session with this token digest.
pub fn session_user(
    conn: &Connection,
    token_sha256: &[u8],
    now: i64,
) -> rusqlite::Result<Option<User>> {
    let sql = format!(
        "SELECT {} FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_sha256 = ?1 AND s.expires_at > ?2",
        USER_COLUMNS
            .split(", ")
            .map(|column| format!("u.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    conn.prepare_cached(&sql)?
        .query_row(params![token_sha256, now], User::from_row)
        .optional()
}

/// Sets a user's display name; `None` if the user no longer exists.
pub fn update_display_name(
    conn: &Connection,
    user_id: i64,
    display_name: &str,
    now: i64,
) -> rusqlite::Result<Option<User>> {
    let sql = format!(
        "UPDATE users SET display_name = ?1, updated_at = ?2 WHERE id = ?3 RETURNING {USER_COLUMNS}"
    );
    conn.query_row(&sql, params![display_name, now, user_id], User::from_row)
        .optional()
}

/// A trivial query, for the health check.
pub fn ping(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))
}
