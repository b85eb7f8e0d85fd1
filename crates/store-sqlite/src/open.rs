//! Opening the connection: flags, a check that the file is a database
//! before anything can write to it, then durability. Opening never
//! changes the database: read-only commands leave it exactly as it was.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use waymark_core::Error;

use crate::config::{Location, SqliteConfig};
use crate::error::Site;

/// An open connection, a read connection beside it for a file, and
/// whether it can write.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) reader: Option<Connection>,
    pub(crate) read_only: bool,
}

/// Opens the database `config` names (already validated).
pub(crate) fn open(config: &SqliteConfig, site: &Site) -> Result<Opened, Error> {
    let (conn, read_only) = match &config.location {
        Location::Memory => {
            let conn = Connection::open_in_memory().map_err(site.err("opening"))?;
            // Nothing else can reach this database, so read-only can only
            // mean refusing writes on this connection.
            if config.read_only {
                conn.pragma_update(None, "query_only", true)
                    .map_err(site.err("making the connection read-only"))?;
            }
            (conn, config.read_only)
        }
        Location::File(path) => {
            let read_only = config.read_only || write_protected(path);
            // No SQLITE_OPEN_URI: the path is a path, never a `file:` URI
            // that could switch options on.
            let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
            flags |= if read_only {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            } else {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            };
            let conn =
                Connection::open_with_flags(path, flags).map_err(|err| open_failed(path, err))?;
            (conn, read_only)
        }
    };
    configure(&conn, site)?;
    let reader = match &config.location {
        Location::File(path) => Some(open_reader(path, site)?),
        Location::Memory => None,
    };
    Ok(Opened {
        conn,
        reader,
        read_only,
    })
}

/// Settings of the store's write connection, whoever opened it: the busy
/// timeout, a check that the file is a database, `synchronous = FULL`.
pub(crate) fn configure(conn: &Connection, site: &Site) -> Result<(), Error> {
    conn.busy_timeout(site.busy_timeout)
        .map_err(site.err("setting the busy timeout"))?;
    // SQLite reads the header lazily. Read it now, before any statement that
    // could write, so a file that is not a database is refused untouched.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(site.err("reading the database header"))?;
    // See the crate documentation for why FULL rather than NORMAL.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(site.err("setting synchronous = FULL"))?;
    Ok(())
}

/// The read connection of a database file: read-only, so that reads never
/// wait for the store's own writer (in WAL mode, not for any writer).
pub(crate) fn open_reader(path: &Path, site: &Site) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| open_failed(path, err))?;
    conn.busy_timeout(site.busy_timeout)
        .map_err(site.err("setting the busy timeout of the read connection"))?;
    Ok(conn)
}

/// Switches the database to WAL journal mode (a no-op when it already is).
/// `prepare` calls it only for a database it creates from nothing: an
/// application's existing database keeps the journal mode it chose.
///
/// SQLite does not call the busy handler for this switch: while another
/// connection opens the same new file it fails with `SQLITE_BUSY` at once.
/// So retry for as long as the busy timeout allows.
pub(crate) fn use_wal(conn: &Connection, site: &Site, busy_timeout: Duration) -> Result<(), Error> {
    let current: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .map_err(site.err("reading the journal mode"))?;
    if current.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let started = Instant::now();
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Ok(mode) => break mode,
            Err(err)
                if matches!(
                    err.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && started.elapsed() < busy_timeout =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(site.error("switching to WAL journal mode", err)),
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(location = %site.location, %mode, "SQLite refused WAL journal mode");
    }
    Ok(())
}

/// A file with no write permission bit is opened read-only, whoever runs
/// the process: SQLite already does so for ordinary users, and root, who
/// could write anyway, gets the same behaviour instead of a surprise.
fn write_protected(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().readonly())
}

/// An [`Error::Store`] naming the path and, for a file that cannot be
/// opened, the likely reason.
fn open_failed(path: &Path, err: rusqlite::Error) -> Error {
    let reason = if err.sqlite_error_code() == Some(ErrorCode::CannotOpen) {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if path.is_dir() {
            format!(": {} is a directory", path.display())
        } else if !parent.exists() {
            format!(": the directory {} does not exist", parent.display())
        } else if !parent.is_dir() {
            format!(": {} is not a directory", parent.display())
        } else {
            ": the file cannot be created or opened for writing here".to_owned()
        }
    } else {
        String::new()
    };
    Error::store(
        format!("opening SQLite database {}{reason}", path.display()),
        err,
    )
}
