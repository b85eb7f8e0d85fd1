//! What every PostgreSQL backend (tokio-postgres, sqlx) does the same way
//! with the session that holds an advisory lock: who it says holds it, how
//! soon the server frees it when its holder vanishes, and how `locks()`
//! reads it back.
//!
//! # The dead holder's bound
//!
//! A session-level advisory lock lives as long as its session. When the
//! holder's host dies or is cut off without a FIN or RST, the server learns
//! only from its own TCP keepalives, two hours later with the server's
//! defaults (`tcp_keepalives_idle = 7200`). So the lock session sets its own
//! keepalives and `tcp_user_timeout` ([`DeadHolderBound`]): the server then
//! ends the session, and frees the lock, within the bound. The settings are
//! per session and need no privilege; on a Unix socket they are ignored
//! (a local holder's death closes the socket at once).

use std::time::Duration;

use super::{LockHolder, LockScope};
use crate::Error;

/// The longest `application_name` PostgreSQL keeps (`NAMEDATALEN - 1` bytes).
const MAX_APPLICATION_NAME: usize = 63;

/// How much of the bound passes before the first keepalive probe; the
/// rest is spent on up to [`MAX_PROBES`] probes.
const IDLE_SHARE: u32 = 2;
/// The most unanswered probes before the server gives up.
const MAX_PROBES: u64 = 5;

/// How long the server keeps the lock of a holder that vanished without
/// closing its connection, as the server keepalive settings of the lock's
/// session.
///
/// ```
/// use std::time::Duration;
/// use waymark_core::store::advisory::DeadHolderBound;
///
/// let bound = DeadHolderBound::new(Duration::from_secs(20)).unwrap();
/// assert_eq!(bound.keepalives_idle(), 10);
/// assert_eq!(bound.keepalives_interval(), 2);
/// assert_eq!(bound.keepalives_count(), 5);
/// assert_eq!(bound.user_timeout_ms(), 20_000);
/// // The server notices at the first probe past the bound.
/// assert_eq!(bound.worst_case(), Duration::from_secs(22));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadHolderBound {
    timeout: Duration,
    idle: u64,
    interval: u64,
    count: u64,
}

impl DeadHolderBound {
    /// The default bound: 20 s, short enough that a replica starting as
    /// the holder vanishes still runs within a lock wait as short as 30 s
    /// (the runner waits ten minutes by default), long enough that a
    /// holder on a congested network is not cut off while alive.
    pub const DEFAULT: Duration = Duration::from_secs(20);

    /// The settings for `timeout`, in whole seconds (at least 2 s, since
    /// the server counts keepalives in seconds; at most a day).
    /// [`Error::Invalid`] for the field `dead_holder_timeout` otherwise.
    pub fn new(timeout: Duration) -> Result<Self, Error> {
        let secs = timeout.as_secs();
        if !(2..=86_400).contains(&secs) || timeout.subsec_nanos() != 0 {
            return Err(Error::invalid(
                "dead_holder_timeout",
                format!(
                    "must be a whole number of seconds from 2 s to one day (PostgreSQL \
                     counts keepalives in seconds), got {timeout:?}"
                ),
            ));
        }
        let idle = secs.div_ceil(u64::from(IDLE_SHARE));
        let rest = secs - idle;
        let count = rest.clamp(1, MAX_PROBES);
        let interval = (rest / count).max(1);
        Ok(Self {
            timeout,
            idle,
            interval,
            count,
        })
    }

    /// The bound asked for.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `tcp_keepalives_idle`, in seconds.
    pub fn keepalives_idle(&self) -> u64 {
        self.idle
    }

    /// `tcp_keepalives_interval`, in seconds.
    pub fn keepalives_interval(&self) -> u64 {
        self.interval
    }

    /// `tcp_keepalives_count`.
    pub fn keepalives_count(&self) -> u64 {
        self.count
    }

    /// `tcp_user_timeout`, in milliseconds: also bounds data the server
    /// sent and nobody acknowledged.
    pub fn user_timeout_ms(&self) -> u64 {
        self.timeout.as_secs() * 1_000
    }

    /// The longest the server can keep a vanished holder's lock: the bound,
    /// plus the one probe interval in which it may fall (Linux checks the
    /// user timeout as each probe is due).
    pub fn worst_case(&self) -> Duration {
        Duration::from_secs(
            self.timeout
                .as_secs()
                .max(self.idle + self.interval * self.count),
        ) + Duration::from_secs(self.interval)
    }

    /// The parameters of [`ANNOUNCE`] after the `application_name` ($1):
    /// $2 idle, $3 interval, $4 count, $5 user timeout, as text.
    pub fn parameters(&self) -> [String; 4] {
        [
            self.idle.to_string(),
            self.interval.to_string(),
            self.count.to_string(),
            self.user_timeout_ms().to_string(),
        ]
    }
}

impl Default for DeadHolderBound {
    fn default() -> Self {
        Self::new(Self::DEFAULT).expect("the default bound is valid")
    }
}

/// Run on the lock's session once it holds the lock: names the holder
/// (`$1`, [`session_tag`]) and sets the keepalives of [`DeadHolderBound`]
/// (`$2` to `$5`). A setting this server does not have (`tcp_user_timeout`
/// before PostgreSQL 12) is skipped rather than refused.
pub const ANNOUNCE: &str = "SELECT count(set_config(s.name, s.value, false)) \
     FROM (VALUES ('application_name', $1::text), ('tcp_keepalives_idle', $2::text), \
     ('tcp_keepalives_interval', $3::text), ('tcp_keepalives_count', $4::text), \
     ('tcp_user_timeout', $5::text)) AS s(name, value) \
     WHERE s.name IN (SELECT name FROM pg_settings)";

/// The advisory locks among the keys `$1` (`BIGINT[]`) held in this
/// database now, exclusively (the shared transaction locks replicas wait
/// on together are not holders): key, the holding backend's pid, its `application_name`,
/// client address and when its state last changed (the lock session runs
/// nothing after [`ANNOUNCE`], so that is when it took the lock). Columns
/// other than the key and pid are NULL for a session of another role,
/// unless the reader has `pg_read_all_stats`.
pub const HELD_LOCKS: &str = "SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, \
     l.pid, a.application_name, host(a.client_addr), a.state_change \
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.mode = 'ExclusiveLock' \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY($1) \
     ORDER BY l.pid";

/// The application's name keeps at least this much of the tag, however
/// long the host name.
const MIN_APPLICATION_CHARS: usize = 16;

/// The prefix of every lock session's `application_name`.
const TAG_PREFIX: &str = "waymark ";

/// The `application_name` of a session holding the `scope` lock for
/// `holder`: `waymark <scope> <pid>@<host> <application>`, printable ASCII
/// only (the server would mangle anything else) and cut to the 63 bytes the
/// server keeps, the application's name first.
///
/// ```
/// use waymark_core::store::LockScope;
/// use waymark_core::store::advisory::{parse_session_tag, session_tag};
/// use waymark_core::store::LockHolder;
///
/// let holder = LockHolder::named("billing-api");
/// let tag = session_tag(LockScope::Run, &holder);
/// let (scope, parsed) = parse_session_tag(&tag).unwrap();
/// assert_eq!(scope, LockScope::Run);
/// assert_eq!(parsed.pid, holder.pid);
/// assert_eq!(parsed.application, "billing-api");
/// ```
pub fn session_tag(scope: LockScope, holder: &LockHolder) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    };
    // Spaces separate the fields: none inside the host.
    let mut host = clean(&holder.host).replace(' ', "?");
    let application = clean(&holder.application);
    let head = format!("{TAG_PREFIX}{scope} {}@", holder.pid);
    // What is left for "<host> <application>".
    let room = MAX_APPLICATION_NAME.saturating_sub(head.len() + 1);
    if host.len() + application.len() > room {
        // A long host name (`ip-10-0-12-34.eu-west-1.compute.internal`)
        // gives way first: its first label names the machine.
        if let Some(dot) = host.find('.') {
            host.truncate(dot);
        }
    }
    let kept_for_application = application.len().min(MIN_APPLICATION_CHARS);
    host.truncate(room.saturating_sub(kept_for_application));
    // Printable ASCII only, so byte lengths are character counts.
    let mut tag = format!("{head}{host} {application}");
    tag.truncate(MAX_APPLICATION_NAME);
    tag
}

/// The scope and holder a lock session's `application_name` names, if it
/// is one [`session_tag`] made. The application's name may be cut short.
pub fn parse_session_tag(tag: &str) -> Option<(LockScope, LockHolder)> {
    let rest = tag.strip_prefix(TAG_PREFIX)?;
    let (scope, rest) = rest.split_once(' ')?;
    let scope = match scope {
        "run" => LockScope::Run,
        "background" => LockScope::Background,
        _ => return None,
    };
    let (who, application) = match rest.split_once(' ') {
        Some((who, application)) => (who, application),
        None => (rest, ""),
    };
    let (pid, host) = who.split_once('@')?;
    Some((scope, LockHolder::at(host, pid.parse().ok()?, application)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_host_names_leave_room_for_the_application() {
        let holder = LockHolder::at(
            "ip-10-0-12-34.eu-west-1.compute.internal",
            4_194_304,
            "billing-api-worker",
        );
        for scope in [LockScope::Run, LockScope::Background] {
            let tag = session_tag(scope, &holder);
            assert!(tag.len() <= MAX_APPLICATION_NAME, "{tag}");
            let (parsed_scope, parsed) = parse_session_tag(&tag).unwrap();
            assert_eq!(parsed_scope, scope);
            assert_eq!(parsed.host, "ip-10-0-12-34", "{tag}");
            assert_eq!(parsed.pid, 4_194_304);
            assert_eq!(parsed.application, "billing-api-worker", "{tag}");
        }
        // A host with no dots that fills everything is cut, not the name.
        let holder = LockHolder::at("h".repeat(80), 7, "app");
        let (_, parsed) = parse_session_tag(&session_tag(LockScope::Background, &holder)).unwrap();
        assert_eq!(parsed.application, "app");
        assert!(parsed.host.starts_with("hhh"));
        // Short names are kept whole.
        let holder = LockHolder::at("db-1.internal", 12, "api");
        let (_, parsed) = parse_session_tag(&session_tag(LockScope::Run, &holder)).unwrap();
        assert_eq!(parsed.host, "db-1.internal");
    }

    #[test]
    fn bounds_split_into_idle_and_probes() {
        let bound = DeadHolderBound::new(Duration::from_secs(4)).unwrap();
        assert_eq!(
            (
                bound.keepalives_idle(),
                bound.keepalives_interval(),
                bound.keepalives_count()
            ),
            (2, 1, 2)
        );
        assert_eq!(bound.worst_case(), Duration::from_secs(5));
        let bound = DeadHolderBound::new(Duration::from_secs(2)).unwrap();
        assert_eq!(bound.keepalives_idle() + bound.keepalives_count(), 2);
        let bound = DeadHolderBound::new(Duration::from_secs(3600)).unwrap();
        assert_eq!(bound.keepalives_idle(), 1800);
        assert!(bound.idle + bound.interval * bound.count <= 3600);
        assert_eq!(
            DeadHolderBound::default().timeout(),
            DeadHolderBound::DEFAULT
        );
    }

    #[test]
    fn bounds_out_of_range_are_refused() {
        for bad in [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_millis(2500),
            Duration::from_secs(86_401),
        ] {
            let err = DeadHolderBound::new(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: "dead_holder_timeout",
                        ..
                    }
                ),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn tags_are_ascii_cut_to_what_the_server_keeps_and_parse_back() {
        let holder = LockHolder::at("höst a", 42, "app\nname ü");
        let tag = session_tag(LockScope::Background, &holder);
        assert_eq!(tag, "waymark background 42@h?st?a app?name ?");
        let (scope, parsed) = parse_session_tag(&tag).unwrap();
        assert_eq!(scope, LockScope::Background);
        assert_eq!((parsed.pid, parsed.host.as_str()), (42, "h?st?a"));
        assert_eq!(parsed.application, "app?name ?");

        let long = LockHolder::at("h".repeat(20), 7, "a".repeat(80));
        let tag = session_tag(LockScope::Run, &long);
        assert_eq!(tag.len(), MAX_APPLICATION_NAME);
        let (_, parsed) = parse_session_tag(&tag).unwrap();
        assert_eq!(parsed.host, "h".repeat(20));
        assert!(parsed.application.starts_with("aaaa"));

        for foreign in ["waymark", "psql", "waymark run x@h", "waymark other 1@h a"] {
            assert!(parse_session_tag(foreign).is_none(), "{foreign}");
        }
    }
}
