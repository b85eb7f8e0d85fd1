//! The identifier of a migration.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The identifier of a migration: a positive `i64`.
///
/// Ids order migrations: pending migrations always run in ascending id order.
/// Zero and negative values are rejected with [`Error::Invalid`].
///
/// ```
/// use waymark_core::MigrationId;
///
/// let id = MigrationId::new(7)?;
/// assert_eq!(id.get(), 7);
/// assert!(MigrationId::new(0).is_err());
/// # Ok::<(), waymark_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct MigrationId(i64);

impl MigrationId {
    /// Validates `id`: it must be greater than zero.
    pub fn new(id: i64) -> Result<Self, Error> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(Error::invalid(
                "id",
                format!("must be a positive integer, got {id}"),
            ))
        }
    }

    /// The raw value, as stored in the `id` column.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for MigrationId {
    type Error = Error;

    fn try_from(id: i64) -> Result<Self, Error> {
        Self::new(id)
    }
}

impl From<MigrationId> for i64 {
    fn from(id: MigrationId) -> i64 {
        id.0
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MigrationId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let raw: i64 = s
            .trim()
            .parse()
            .map_err(|_| Error::invalid("id", format!("must be a positive integer, got {s:?}")))?;
        Self::new(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_and_negative() {
        for bad in [0, -1, i64::MIN] {
            assert!(matches!(
                MigrationId::new(bad),
                Err(Error::Invalid { field: "id", .. })
            ));
        }
        assert_eq!(MigrationId::new(i64::MAX).unwrap().get(), i64::MAX);
    }

    #[test]
    fn parses_from_text() {
        assert_eq!("42".parse::<MigrationId>().unwrap().get(), 42);
        assert!("abc".parse::<MigrationId>().is_err());
        assert!("-3".parse::<MigrationId>().is_err());
    }
}
