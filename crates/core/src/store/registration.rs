//! Registering a set at the cost of what is new: a deploy that adds a few
//! migrations to N tracked ones should not read or write all N.
//!
//! A set's [fingerprint](MigrationDef::fingerprint) digests its `(id, name)`
//! pairs in id order, so the digest after the first `k` pairs is the
//! fingerprint of those `k` definitions alone. A store asks (one query on
//! PostgreSQL, one index lookup per prefix on SQLite) which of a few such
//! prefixes it has recorded ([`Prefixes::fingerprints`]):
//! the whole set, and the set without its last 1, 2, … [`CHEAP_ADDITIONS`]
//! definitions (a few kilobytes, a few index lookups). A
//! recorded prefix was registered in full before (every id inserted, every
//! name checked), and tracked names never change, so only the definitions
//! after the longest recorded prefix need the store's checks and inserts
//! ([`Prefixes::unregistered`]). A release that appends up to `CHEAP_ADDITIONS`
//! migrations to the set of the release before (ids grow with time) costs
//! what it adds; anything else (more at once, a new id below a tracked one)
//! falls back to checking every definition, as before.
//!
//! What this trusts: that rows of a recorded set are not deleted or
//! renamed by hand. The runner checks its rows after registering and
//! registers any declared migration it does not find again (a set of at
//! most [`CHEAP_ADDITIONS`] definitions, such as the operator's
//! `register` of one, is always checked in full); a rename is refused by
//! the runner's plan.

use crate::definition::{fingerprint_pairs, fingerprint_text, fingerprint_write};
use crate::fnv::Fnv128;
use crate::{MigrationDef, MigrationId};

/// How many new definitions a release may add after the set it follows
/// and still be registered at the cost of what is new: [`Prefixes::of`]
/// asks for the set without its last 1 to `CHEAP_ADDITIONS` definitions.
pub const CHEAP_ADDITIONS: usize = 64;

/// The fingerprints of a set and of a few of its prefixes, by ascending id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefixes {
    /// Longest first; the first is the whole set. Each with the last id it
    /// covers (`None` for the empty set).
    entries: Vec<(Option<MigrationId>, String)>,
    /// At most `CHEAP_ADDITIONS` definitions: checked in full whatever is recorded.
    small: bool,
}

impl Prefixes {
    /// The prefixes of `defs` worth asking for: the whole set, then the set
    /// without its last 1, 2, … [`CHEAP_ADDITIONS`] definitions.
    /// `defs` must hold no id twice under two names
    /// ([`check_unique_ids`](super::check_unique_ids)).
    /// A set of at most `CHEAP_ADDITIONS` definitions is always checked in
    /// full (its whole fingerprint is asked for, to spare a write): that is
    /// as cheap, and re-creates a row deleted by hand for the operator who
    /// registers one migration again.
    pub fn of(defs: &[MigrationDef]) -> Self {
        let pairs = fingerprint_pairs(defs);
        let small = pairs.len() <= CHEAP_ADDITIONS;
        // The shortest prefix asked for: a small set asks only for itself.
        let shortest = if small {
            pairs.len()
        } else {
            pairs.len() - CHEAP_ADDITIONS
        };
        let mut hash = Fnv128::new();
        let mut entries = Vec::with_capacity(pairs.len() - shortest + 1);
        if shortest == 0 {
            entries.push((None, fingerprint_text(&hash)));
        }
        for (k, &(id, name)) in pairs.iter().enumerate() {
            fingerprint_write(&mut hash, id, name);
            if k + 1 >= shortest {
                entries.push((MigrationId::new(id).ok(), fingerprint_text(&hash)));
            }
        }
        entries.reverse();
        Self { entries, small }
    }

    /// The fingerprint of the whole set ([`MigrationDef::fingerprint`]).
    pub fn whole(&self) -> &str {
        &self.entries[0].1
    }

    /// Every fingerprint to ask the store about, the whole set's first.
    pub fn fingerprints(&self) -> Vec<&str> {
        self.entries.iter().map(|(_, fp)| fp.as_str()).collect()
    }

    /// What is left to register, given which fingerprints the store has
    /// recorded: the definitions after the longest recorded prefix.
    pub fn unregistered(&self, recorded: impl Fn(&str) -> bool) -> LeftToRegister {
        if self.small {
            return LeftToRegister::All;
        }
        match self.entries.iter().position(|(_, fp)| recorded(fp)) {
            Some(0) => LeftToRegister::Nothing,
            Some(at) => match self.entries[at].0 {
                Some(last) => LeftToRegister::After(last),
                None => LeftToRegister::All,
            },
            None => LeftToRegister::All,
        }
    }
}

/// The definitions of a set a store must still check and insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeftToRegister {
    /// The whole set was registered before: nothing to do.
    Nothing,
    /// Those with an id above this one: everything up to it was registered.
    After(MigrationId),
    /// All of them.
    All,
}

impl LeftToRegister {
    /// Whether the definition with this id must be checked and inserted.
    pub fn contains(self, id: MigrationId) -> bool {
        match self {
            Self::Nothing => false,
            Self::After(last) => id > last,
            Self::All => true,
        }
    }

    /// The definitions of `defs` left to register, in their order.
    pub fn filter(self, defs: &[MigrationDef]) -> impl Iterator<Item = &MigrationDef> {
        defs.iter().filter(move |def| self.contains(def.id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(ids: &[i64]) -> Vec<MigrationDef> {
        ids.iter()
            .map(|&id| MigrationDef::new(id, format!("m{id}"), "").unwrap())
            .collect()
    }

    fn range(to: i64) -> Vec<MigrationDef> {
        defs(&(1..=to).collect::<Vec<_>>())
    }

    fn id(raw: i64) -> MigrationId {
        MigrationId::new(raw).unwrap()
    }

    const BIG: i64 = 200;

    #[test]
    fn each_prefix_is_the_fingerprint_of_that_prefix_alone() {
        let mut set = range(BIG);
        set.reverse();
        let prefixes = Prefixes::of(&set);
        assert_eq!(prefixes.whole(), MigrationDef::fingerprint(&set));
        let expected: Vec<String> = (0..=CHEAP_ADDITIONS as i64)
            .map(|dropped| MigrationDef::fingerprint(&range(BIG - dropped)))
            .collect();
        assert_eq!(prefixes.fingerprints(), expected);
    }

    #[test]
    fn only_what_follows_the_longest_recorded_prefix_is_left() {
        let old = range(BIG);
        let recorded = [MigrationDef::fingerprint(&old)];
        let known = |fp: &str| recorded.iter().any(|r| r == fp);
        let grown = range(BIG + 1);
        let left = Prefixes::of(&grown).unregistered(known);
        assert_eq!(left, LeftToRegister::After(id(BIG)));
        assert_eq!(
            left.filter(&grown)
                .map(|d| d.id().get())
                .collect::<Vec<_>>(),
            [BIG + 1]
        );
        assert_eq!(
            Prefixes::of(&old).unregistered(known),
            LeftToRegister::Nothing
        );
        let most = range(BIG + CHEAP_ADDITIONS as i64);
        assert_eq!(
            Prefixes::of(&most).unregistered(known),
            LeftToRegister::After(id(BIG))
        );
        // More new ones than that: everything is checked.
        let more = range(BIG + CHEAP_ADDITIONS as i64 + 1);
        assert_eq!(Prefixes::of(&more).unregistered(known), LeftToRegister::All);
        // A new id below a tracked one changes every prefix that holds it.
        let even: Vec<i64> = (1..=BIG).map(|i| 2 * i).collect();
        let gaps = [MigrationDef::fingerprint(&defs(&even))];
        let mut below = even.clone();
        below.push(2 * BIG - 1);
        assert_eq!(
            Prefixes::of(&defs(&below)).unregistered(|fp| gaps[0] == fp),
            LeftToRegister::All
        );
        // A renamed id in the part registered before: nothing is trusted.
        let renamed: Vec<MigrationDef> = range(BIG + 1)
            .into_iter()
            .map(|d| {
                let name = if d.id() == id(50) { "other" } else { d.name() };
                MigrationDef::new(d.id().get(), name, "").unwrap()
            })
            .collect();
        assert_eq!(
            Prefixes::of(&renamed).unregistered(known),
            LeftToRegister::All
        );
    }

    #[test]
    fn small_sets_are_checked_in_full() {
        let small = range(CHEAP_ADDITIONS as i64);
        let prefixes = Prefixes::of(&small);
        assert_eq!(prefixes.fingerprints(), [MigrationDef::fingerprint(&small)]);
        assert_eq!(prefixes.unregistered(|_| true), LeftToRegister::All);
        let empty = Prefixes::of(&[]);
        assert_eq!(empty.fingerprints(), [MigrationDef::fingerprint(&[])]);
        assert_eq!(empty.unregistered(|_| true), LeftToRegister::All);
        assert!(LeftToRegister::All.contains(id(1)));
        assert!(!LeftToRegister::Nothing.contains(id(1)));
        assert!(!LeftToRegister::After(id(3)).contains(id(3)));
        assert!(LeftToRegister::After(id(3)).contains(id(4)));
    }
}
