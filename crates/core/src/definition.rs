//! What the application declares: a migration's id, name and description.

use std::time::Duration;

use serde::Serialize;

use crate::fnv::Fnv128;
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
    #[serde(skip)]
    mode: Mode,
    #[serde(skip)]
    timeout: Option<Duration>,
}

/// When a migration runs relative to the application serving requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Before the application serves: [`Runner::run`] returns only once it
    /// has run. The default.
    ///
    /// [`Runner::run`]: https://docs.rs/waymark/latest/waymark/struct.Runner.html#method.run
    #[default]
    Required,
    /// While the application serves: the run starts it after the required
    /// migrations and reports it through a handle. It must not be something
    /// a required migration depends on.
    Background,
}

impl Mode {
    /// `"required"` or `"background"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Background => "background",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
            mode: Mode::Required,
            timeout: None,
        })
    }

    /// Runs this migration in the background, while the application serves
    /// (see [`Mode::Background`]).
    pub fn background(mut self) -> Self {
        self.mode = Mode::Background;
        self
    }

    /// Limits how long one run of this migration may take, overriding the
    /// runner's default. What happens when it passes depends on the handler
    /// kind (see the runner's documentation); a zero limit is refused when
    /// the runner is built.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Whether it runs before serving or in the background.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Its own time limit, if it has one.
    pub fn time_limit(&self) -> Option<Duration> {
        self.timeout
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
    /// and nothing is pending (see [`MigrationStore::set_state`](crate::MigrationStore::set_state)); mode and timeout are not part of it.
    /// The digest is FNV-1a over the sorted `(id, name)` pairs: stable across
    /// Rust versions and platforms, unlike `std`'s hasher.
    pub fn fingerprint(defs: &[MigrationDef]) -> String {
        let pairs = fingerprint_pairs(defs);
        let mut hash = Fnv128::new();
        for &(id, name) in &pairs {
            fingerprint_write(&mut hash, id, name);
        }
        fingerprint_text(&hash)
    }
}

/// The sorted, deduplicated `(id, name)` pairs a fingerprint digests.
pub(crate) fn fingerprint_pairs(defs: &[MigrationDef]) -> Vec<(i64, &str)> {
    let mut pairs: Vec<(i64, &str)> = defs.iter().map(|d| (d.id.get(), d.name())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Adds one pair to a fingerprint: after the first `k` sorted pairs the
/// digest is the fingerprint of those `k` definitions alone.
pub(crate) fn fingerprint_write(hash: &mut Fnv128, id: i64, name: &str) {
    hash.write(&id.to_le_bytes());
    hash.write(&(name.len() as u64).to_le_bytes());
    hash.write(name.as_bytes());
}

/// A digest as stores record it.
pub(crate) fn fingerprint_text(hash: &Fnv128) -> String {
    format!("{:032x}", hash.0)
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
