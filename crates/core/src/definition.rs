//! What the application declares: a migration's id, name and description.

use serde::Serialize;

use crate::{Error, MigrationId};

/// The longest name allowed, in characters (the original `VARCHAR(250)`).
pub const MAX_NAME_CHARS: usize = 250;
/// The longest description allowed, in characters (the original `VARCHAR(2500)`).
pub const MAX_DESCRIPTION_CHARS: usize = 2500;

/// A migration as the application declares it, validated on construction.
///
/// Limits count characters, not bytes, as the database columns do:
///
/// ```
/// use waymark_core::{Error, MigrationDef};
///
/// let def = MigrationDef::new(1, "backfill_lap_averages", "Recompute averages from streams")?;
/// assert_eq!(def.id().get(), 1);
///
/// // 250 two-byte characters fit; 251 ASCII ones do not.
/// assert!(MigrationDef::new(2, "é".repeat(250), "").is_ok());
/// let err = MigrationDef::new(3, "a".repeat(251), "").unwrap_err();
/// assert!(matches!(err, Error::Invalid { field: "name", .. }));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MigrationDef {
    id: MigrationId,
    name: String,
    description: String,
}

impl MigrationDef {
    /// Validates and builds a definition: `id` > 0, `name` 1..=250 characters,
    /// `description` at most 2500 characters. Anything else is
    /// [`Error::Invalid`] naming the field, the limit and the actual length.
    pub fn new(
        id: i64,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<Self, Error> {
        let id = MigrationId::new(id)?;
        let name = name.into();
        let description = description.into();
        validate_name(&name)?;
        validate_description(&description)?;
        Ok(Self {
            id,
            name,
            description,
        })
    }

    /// The id.
    pub fn id(&self) -> MigrationId {
        self.id
    }

    /// The name, unique per id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// A stable digest of a set of definitions (ids and names, in any order).
    ///
    /// Stores record the digest of each set they registered, so that a later
    /// start-up with the same set can tell in one query that nothing is new
    /// and nothing is pending (see [`MigrationStore::is_settled`](crate::MigrationStore::is_settled)).
    /// The digest is FNV-1a over the sorted `(id, name)` pairs: stable across
    /// Rust versions and platforms, unlike `std`'s hasher.
    pub fn fingerprint(defs: &[MigrationDef]) -> String {
        let mut pairs: Vec<(i64, &str)> = defs.iter().map(|d| (d.id.get(), d.name())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut hash = Fnv128::new();
        for (id, name) in pairs {
            hash.write(&id.to_le_bytes());
            hash.write(&(name.len() as u64).to_le_bytes());
            hash.write(name.as_bytes());
        }
        format!("{:032x}", hash.0)
    }
}

/// Checks a name against the limits of [`MigrationDef::new`].
pub fn validate_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// Checks a description against the limits of [`MigrationDef::new`].
pub fn validate_description(description: &str) -> Result<(), Error> {
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// Checks a configured SQL name (a table, a schema) is a plain identifier:
/// an ASCII letter or `_`, then ASCII letters, digits or `_`, at most
/// `max_chars` long. Stores splice such names into SQL (quoted as well), so
/// nothing else may pass; anything else is [`Error::Invalid`] for `field`.
///
/// ```
/// use waymark_core::validate_identifier;
///
/// assert!(validate_identifier("table", "data_migrations", 63).is_ok());
/// assert!(validate_identifier("table", "x; DROP TABLE y", 63).is_err());
/// ```
pub fn validate_identifier(field: &'static str, name: &str, max_chars: usize) -> Result<(), Error> {
    let reject = |why: &str| Err(Error::invalid(field, format!("{why}, got {name:?}")));
    let mut chars = name.chars();
    match chars.next() {
        None => return reject("must not be empty"),
        Some(first) if !(first.is_ascii_alphabetic() || first == '_') => {
            return reject("must start with an ASCII letter or '_'");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return reject("must contain only ASCII letters, digits and '_'");
    }
    if name.len() > max_chars {
        return reject(&format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// 128-bit FNV-1a: tiny, dependency-free and stable; collisions between two
/// real sets of migration names are not a practical concern at 128 bits.
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: i64, name: &str) -> MigrationDef {
        MigrationDef::new(id, name, "").unwrap()
    }

    #[test]
    fn limits_count_characters() {
        assert!(MigrationDef::new(1, "é".repeat(250), "ü".repeat(2500)).is_ok());
        let err = MigrationDef::new(1, "a".repeat(251), "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid name: must be 1 to 250 characters, got 251"
        );
        let err = MigrationDef::new(1, "a", "d".repeat(2501)).unwrap_err();
        assert!(
            matches!(err, Error::Invalid { field: "description", ref message } if message.contains("2501"))
        );
        assert!(matches!(
            MigrationDef::new(1, "", ""),
            Err(Error::Invalid { field: "name", .. })
        ));
        assert!(matches!(
            MigrationDef::new(0, "a", ""),
            Err(Error::Invalid { field: "id", .. })
        ));
        assert!(matches!(
            MigrationDef::new(-5, "a", ""),
            Err(Error::Invalid { field: "id", .. })
        ));
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let a = MigrationDef::fingerprint(&[def(1, "a"), def(2, "b")]);
        let b = MigrationDef::fingerprint(&[def(2, "b"), def(1, "a")]);
        assert_eq!(a, b);
        assert_ne!(a, MigrationDef::fingerprint(&[def(1, "a"), def(2, "c")]));
        assert_ne!(a, MigrationDef::fingerprint(&[def(1, "a")]));
        // Length-prefixing keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(
            MigrationDef::fingerprint(&[def(1, "ab"), def(2, "c")]),
            MigrationDef::fingerprint(&[def(1, "a"), def(2, "bc")])
        );
        assert_eq!(a.len(), 32);
    }
}
