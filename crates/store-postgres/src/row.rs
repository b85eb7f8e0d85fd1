//! Reading a tracked row, and the text checks PostgreSQL needs.

use tokio_postgres::Row;
use waymark_core::time::OffsetDateTime;
use waymark_core::{Error, Migration, MigrationId};

use crate::error::Failure;

/// A [`Migration`] from a row selected with the shared statements' columns.
pub(crate) fn migration(row: &Row) -> Result<Migration, Failure> {
    let id: i64 = row.try_get("id")?;
    let id = MigrationId::new(id).map_err(|_| stored_id(id))?;
    let mut migration = Migration::new(
        id,
        row.try_get::<_, String>("name")?,
        row.try_get::<_, String>("description")?,
    );
    migration.executed = row.try_get("executed")?;
    migration.executed_at = row.try_get::<_, Option<OffsetDateTime>>("executed_at")?;
    migration.attempts = u32::try_from(row.try_get::<_, i32>("attempts")?).unwrap_or(0);
    migration.last_error = row.try_get("last_error")?;
    migration.checkpoint = row.try_get("checkpoint")?;
    Ok(migration)
}

fn stored_id(id: i64) -> Failure {
    Failure::Done(Error::store_message(
        "reading the tracking table",
        format!("row with id {id}: migration ids must be positive"),
    ))
}

/// PostgreSQL text cannot hold NUL characters: such input is refused with
/// an error naming the field rather than failing on the server.
pub(crate) fn check_text(field: &'static str, text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::invalid(
            field,
            "contains a NUL character, which PostgreSQL text cannot store",
        ));
    }
    Ok(())
}

/// An error text storable as `last_error`: a failure record must not fail,
/// so NUL characters become U+FFFD.
pub(crate) fn storable_error(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}
