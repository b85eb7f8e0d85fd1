//! How to reach the server and where to keep the tracking table.

use std::fmt;
use std::time::Duration;
use waymark_core::store::AdoptionChoices;
use waymark_core::store::advisory::DeadHolderBound;

use tokio_postgres::config::Host;
use waymark_core::{Error, error_chain};

use crate::ssl::{self, Ssl, SslMode};

/// The longest schema name PostgreSQL keeps whole (`NAMEDATALEN - 1` bytes).
const MAX_SCHEMA_LEN: usize = 63;
/// The longest table name: 63 bytes less the longest suffix of the names
/// derived from it (`_fingerprints`), so derived names are never truncated.
const MAX_TABLE_LEN: usize = 50;

/// tokio-postgres' default idle time before the first keepalive probe.
const LIBPQ_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// Idle time before the first keepalive probe on the store's connections.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered probes.
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection counts as dead.
const KEEPALIVES_RETRIES: u32 = 3;

/// Connect timeout when neither the builder nor the URL sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Statement timeout when the builder sets none.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections in a pool the store creates itself.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Settings of a [`PostgresStore`](crate::PostgresStore): the server, the
/// table, and limits so that no call waits forever.
///
/// Every setting is checked when the store is built; a bad one is
/// [`Error::Invalid`] naming it (`"url"`, `"sslmode"`, `"sslrootcert"`,
/// `"schema"`, `"table"`, `"pool_size"`, `"connect_timeout"`,
/// `"statement_timeout"`, `"dead_holder_timeout"`).
///
/// # TLS
///
/// The connection string's `sslmode` and `sslrootcert` work as in libpq,
/// in both forms (`postgres://u@db/app?sslmode=verify-full&sslrootcert=/etc/ca.pem`
/// and `host=db user=u sslmode=verify-full sslrootcert=/etc/ca.pem`), with
/// the feature `tls` (rustls; waymark's `postgres-tls`):
///
/// | `sslmode` | TLS | certificate checked |
/// | --- | --- | --- |
/// | `disable` | never | — |
/// | `prefer` (default) | when the server offers it, plain TCP when it refuses | no |
/// | `require` | always | no; its chain only when `sslrootcert` is given (as libpq) |
/// | `verify-ca` | always | its chain, against the roots; not the host name |
/// | `verify-full` | always | its chain and that it names the host |
///
/// The roots are the PEM file `sslrootcert` names (one or more
/// certificates), read when the store is built (restart to pick up a new
/// one), or the platform's trusted roots with `sslrootcert=system` (which,
/// as in libpq, allows verify-full only and makes it the default) or when a
/// verify mode has no `sslrootcert` (libpq would read
/// `~/.postgresql/root.crt` instead). verify-full checks the `host` of the
/// string: a name against the certificate's DNS names, an IP address
/// against its IP addresses; with `hostaddr` alone, the address. Every
/// connection of the store is made so (the pool, the lock's session), and
/// so are cancel requests. Unix sockets never use TLS (libpq ignores
/// `sslmode` there). `sslmode=allow`, client certificates (`sslcert`,
/// `sslkey`) and `sslcrl` are not supported.
///
/// Without the feature, `disable` and `prefer` connect without TLS, and
/// `require`, `verify-ca` and `verify-full` are refused at once, an
/// [`Error::Invalid`] for `"sslmode"` saying that the feature is needed.
/// A missing or unreadable `sslrootcert` (or no platform roots) is an
/// [`Error::Invalid`] for `"sslrootcert"`; a certificate refused while
/// connecting is an [`Error::Store`] saying why (for verify-full on a
/// wrong host: the certificate does not match the host name). No error
/// repeats the connection string.
///
/// ```
/// use std::time::Duration;
/// use waymark_postgres::PostgresConfig;
///
/// let config = PostgresConfig::new("postgres://app@db.internal:5432/app")
///     .schema("ops")
///     .table("data_migrations")
///     .connect_timeout(Duration::from_secs(5))
///     .statement_timeout(Duration::from_secs(30))
///     .pool_size(4);
/// assert!(config.validate().is_ok());
///
/// let bad = PostgresConfig::new("postgres://app@db/app").table("drop table x");
/// assert!(matches!(bad.validate(), Err(waymark_core::Error::Invalid { field: "table", .. })));
/// ```
#[derive(Clone)]
pub struct PostgresConfig {
    url: String,
    schema: Option<String>,
    table: String,
    connect_timeout: Option<Duration>,
    statement_timeout: Duration,
    pool_size: usize,
    adoption: AdoptionChoices,
    allow_second_table: bool,
    dead_holder_timeout: Duration,
}

impl PostgresConfig {
    /// Settings for the server at `url`, either a URL
    /// (`postgres://user:password@host:port/database?options`) or libpq
    /// `key=value` pairs; defaults everywhere else: table `public.migrations`,
    /// connect timeout 10 s (unless the URL sets `connect_timeout`),
    /// statement timeout 60 s, pool of 8 connections.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The schema of the tracking table, created by `prepare` when
    /// missing. A plain lowercase identifier: `a-z`, `0-9`, `_`, not
    /// starting with a digit nor with `pg_`, at most 63 bytes.
    ///
    /// Without it, the server's `search_path` decides, as for any libpq
    /// client: [`PostgresStore::connect_with`](crate::PostgresStore::connect_with)
    /// uses the first schema of the search path that holds the table, or
    /// else the first one that exists (where an unqualified `CREATE TABLE`
    /// would go; `public` on a default server).
    /// [`from_pool_with`](crate::PostgresStore::from_pool_with), which
    /// cannot ask the server before its first call, uses `public`: name the
    /// schema there when it is another.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The tracking table (default `migrations`). A plain identifier
    /// (ASCII letters, case kept, digits, `_`) of at most 50 bytes: the store also creates
    /// `<table>_fingerprints` and the index `<table>_pending_idx`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long opening one connection may take, TCP and start-up
    /// handshake together (default 10 s). Also bounds how long a call waits
    /// to get a connection from the pool, together with the statement timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long each of the store's own calls may wait for the server
    /// (default 60 s): a read, a registration, a row change, the
    /// bookkeeping and commit that end an atomic handler's transaction.
    ///
    /// It limits waymark's statements only. The store enforces it on the
    /// client, and when it passes sends the server a cancel request for
    /// the statement, so nothing is left running; the bookkeeping at the
    /// end of an atomic transaction also runs under `SET LOCAL
    /// statement_timeout`. An atomic handler's own statements run under the
    /// session's setting: the server's, the role's or the database's
    /// `statement_timeout`, or one the URL sets (`options=-c
    /// statement_timeout=…`), none by default; a long backfill is limited
    /// by the migration's timeout in the runner, not by this. An error
    /// caused by this limit names it (`PostgresConfig::statement_timeout`).
    ///
    /// Also bounds, with the connect timeout, how long a call waits for a
    /// pooled connection, and, added to the wait asked for, taking a lock.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The most connections the store's own pool opens (default 8). The run
    /// lock uses one more connection of its own while held.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The explicit choices for rows of an adopted table whose state would
    /// otherwise be a guess (a NULL `executed`). Without them `prepare`
    /// refuses such a table and changes nothing;
    /// [`plan_prepare`](waymark_core::MigrationStore::plan_prepare) lists the rows.
    pub fn adoption(mut self, choices: AdoptionChoices) -> Self {
        self.adoption = choices;
        self
    }

    /// Lets `prepare` create this tracking table although another one is
    /// in the database (the same table name in another schema, or a table
    /// with `id`, `name` and `executed` columns under another name). Off by
    /// default: a mistyped table or schema would otherwise start from an
    /// empty table and run every migration again.
    pub fn allow_second_table(mut self, allow: bool) -> Self {
        self.allow_second_table = allow;
        self
    }

    /// How soon the server frees the lock of a holder whose host died or
    /// was cut off without closing its connection (default 20 s, so that a
    /// replica waiting even 30 s for the lock still runs; whole seconds from
    /// 2 s to a day).
    ///
    /// The lock's session sets its own server-side TCP keepalives and
    /// `tcp_user_timeout` from it, so the server ends that session, and
    /// frees the lock, within the bound plus one probe interval
    /// ([`DeadHolderBound::worst_case`], 22 s by default) instead of after
    /// the server's own keepalive setting (two hours by default). A holder
    /// that is alive answers the probes and keeps its lock however long it
    /// runs. A holder on a Unix socket needs no bound: its death closes the
    /// socket at once. Behind a pooler the setting reaches the pooler's
    /// server connection, not the holder's.
    ///
    /// Only the lock's session gets it: the pooled sessions keep the
    /// server's keepalive settings, since these slow every round trip; the
    /// row locks an atomic migration's transaction took when its holder
    /// was cut off last as long as the server's own keepalives say
    /// (docs/reliability.md).
    ///
    /// [`DeadHolderBound::worst_case`]: waymark_core::store::advisory::DeadHolderBound::worst_case
    pub fn dead_holder_timeout(mut self, timeout: Duration) -> Self {
        self.dead_holder_timeout = timeout;
        self
    }

    pub(crate) fn dead_holder_bound(&self) -> Result<DeadHolderBound, Error> {
        DeadHolderBound::new(self.dead_holder_timeout)
    }

    pub(crate) fn adoption_choices(&self) -> AdoptionChoices {
        self.adoption
    }

    pub(crate) fn second_table_allowed(&self) -> bool {
        self.allow_second_table
    }

    /// The schema name as configured; `None`: the search path decides.
    pub fn schema_name(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table name as configured.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Checks every setting without connecting, the TLS settings included:
    /// an `sslmode` this build cannot honour (no `tls` feature), and with
    /// the feature, an `sslrootcert` that cannot be read.
    pub fn validate(&self) -> Result<(), Error> {
        self.check_names()?;
        self.check_limits()?;
        if !self.url.is_empty() {
            let (_, ssl) = self.connection()?;
            crate::conn::tls(&ssl)?;
        }
        Ok(())
    }

    pub(crate) fn check_names(&self) -> Result<(), Error> {
        if let Some(schema) = &self.schema {
            validate_identifier("schema", schema, MAX_SCHEMA_LEN)?;
            if schema.starts_with("pg_") {
                return Err(Error::invalid(
                    "schema",
                    format!("names starting with pg_ are reserved by PostgreSQL, got {schema:?}"),
                ));
            }
        }
        validate_identifier("table", &self.table, MAX_TABLE_LEN)
    }

    pub(crate) fn check_limits(&self) -> Result<(), Error> {
        if self.pool_size == 0 {
            return Err(Error::invalid("pool_size", "must be at least 1, got 0"));
        }
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "connect_timeout",
                "must be longer than zero (zero would mean waiting forever)",
            ));
        }
        if self.statement_timeout < Duration::from_millis(1) {
            return Err(Error::invalid(
                "statement_timeout",
                format!(
                    "must be at least 1 ms (zero would mean no limit), got {:?}",
                    self.statement_timeout
                ),
            ));
        }
        self.dead_holder_bound()?;
        Ok(())
    }

    /// The parsed connection settings, with the store's timeouts applied.
    /// The error never repeats the URL: it may hold a password.
    #[cfg(test)]
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, Error> {
        self.connection().map(|(pg, _)| pg)
    }

    /// The parsed connection settings, with the store's timeouts applied,
    /// and the TLS settings (`sslmode`, `sslrootcert`), which the store
    /// reads itself: tokio-postgres gets the string without them, and the
    /// mode it negotiates (`prefer` for `prefer`; `require` for require and
    /// both verify modes, whose checks are the connector's).
    pub(crate) fn connection(&self) -> Result<(tokio_postgres::Config, Ssl), Error> {
        let ssl::Extracted { rest, mut ssl } = ssl::extract(&self.url)?;
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e| {
            Error::invalid(
                "url",
                format!("not a PostgreSQL connection string: {}", error_chain(&e)),
            )
        })?;
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            return Err(Error::invalid("url", "names no host to connect to"));
        }
        // PostgreSQL offers no TLS on Unix sockets, and libpq ignores
        // sslmode there: so does the store.
        #[cfg(unix)]
        if pg.get_hostaddrs().is_empty()
            && pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)))
        {
            ssl.mode = SslMode::Disable;
        }
        // tokio-postgres starts TLS only with a host name to check: with
        // `hostaddr` alone, the address is the name (an IP address in the
        // certificate, for verify-full).
        if ssl.mode != SslMode::Disable && pg.get_hosts().is_empty() {
            for addr in pg.get_hostaddrs().to_vec() {
                pg.host(addr.to_string());
            }
        }
        pg.ssl_mode(ssl.mode.driver());
        let connect_timeout = self.effective_connect_timeout(&pg);
        pg.connect_timeout(connect_timeout);
        // No session-wide statement_timeout: atomic handlers run their own
        // statements on these sessions, under the server's setting (see
        // `statement_timeout`).
        if pg.get_application_name().is_none() {
            pg.application_name("waymark");
        }
        // A peer gone without a word (a failover, a dropped NAT mapping)
        // must end the session on this side too, so that a run whose lock
        // died with it notices (`LockGuard::check`) within a minute rather
        // than after the system default of two hours. A URL's own setting wins.
        if pg.get_keepalives_idle() == LIBPQ_KEEPALIVES_IDLE {
            pg.keepalives_idle(KEEPALIVES_IDLE);
            pg.keepalives_interval(KEEPALIVES_INTERVAL);
            pg.keepalives_retries(KEEPALIVES_RETRIES);
        }
        Ok((pg, ssl))
    }

    pub(crate) fn effective_connect_timeout(&self, pg: &tokio_postgres::Config) -> Duration {
        self.connect_timeout
            .or_else(|| pg.get_connect_timeout().copied().filter(|t| !t.is_zero()))
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn connect_timeout_or_default(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    pub(crate) fn statement_timeout_value(&self) -> Duration {
        self.statement_timeout
    }

    pub(crate) fn pool_size_value(&self) -> usize {
        self.pool_size
    }
}

/// No URL and every default: for
/// [`PostgresStore::from_pool_with`](crate::PostgresStore::from_pool_with),
/// where the application's pool decides how to connect.
impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            schema: None,
            table: "migrations".to_owned(),
            connect_timeout: None,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            adoption: AdoptionChoices::new(),
            allow_second_table: false,
            dead_holder_timeout: DeadHolderBound::DEFAULT,
        }
    }
}

/// Never shows the URL: it may hold a password.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (server, sslmode) = match self.connection() {
            Ok((pg, ssl)) => (describe_server(&pg), ssl.mode.to_string()),
            Err(_) if self.url.is_empty() => ("<none>".to_owned(), "-".to_owned()),
            Err(_) => ("<unparsed url>".to_owned(), "-".to_owned()),
        };
        f.debug_struct("PostgresConfig")
            .field("server", &server)
            .field("sslmode", &sslmode)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("pool_size", &self.pool_size)
            .field("dead_holder_timeout", &self.dead_holder_timeout)
            .finish()
    }
}

/// A plain identifier (core's rule). Mixed case is kept as written: waymark
/// always quotes names, so `Migrations` is the table an application created
/// as `"Migrations"` (tools that do not quote would fold it to lowercase).
fn validate_identifier(field: &'static str, name: &str, max_len: usize) -> Result<(), Error> {
    waymark_core::store::validate_identifier(field, name, max_len)
}

/// `host:port` of every server the settings name, and the database; never
/// the user's password.
pub(crate) fn describe_server(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let port = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432)
    };
    let mut hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = pg
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| match addr {
                std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", port(i)),
                std::net::IpAddr::V4(v4) => format!("{v4}:{}", port(i)),
            })
            .collect();
    }
    let mut described = hosts.join(",");
    if let Some(db) = pg.get_dbname().or(pg.get_user()) {
        described.push_str(&format!(" (database {db:?})"));
    }
    described
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<(), Error>) -> &'static str {
        match result {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn names_must_be_plain_identifiers() {
        for bad in ["", "1st", "a-b", "a b", "x\"y", "é", "a;drop"] {
            let config = PostgresConfig::new("host=h").table(bad);
            assert_eq!(field(config.validate()), "table", "{bad:?}");
            let config = PostgresConfig::new("host=h").schema(bad);
            assert_eq!(field(config.validate()), "schema", "{bad:?}");
        }
        assert_eq!(
            field(PostgresConfig::new("host=h").schema("pg_temp").validate()),
            "schema"
        );
        // Quoted everywhere, so mixed case is kept as written.
        assert!(
            PostgresConfig::new("host=h")
                .schema("App")
                .table("Migrations")
                .validate()
                .is_ok()
        );
        assert_eq!(
            field(
                PostgresConfig::new("host=h")
                    .table("t".repeat(51))
                    .validate()
            ),
            "table"
        );
        assert!(
            PostgresConfig::new("host=h")
                .schema("s".repeat(63))
                .table(format!("_t{}", "9".repeat(48)))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn limits_must_be_positive() {
        let base = PostgresConfig::new("host=h");
        assert_eq!(field(base.clone().pool_size(0).validate()), "pool_size");
        assert_eq!(
            field(base.clone().connect_timeout(Duration::ZERO).validate()),
            "connect_timeout"
        );
        assert_eq!(
            field(base.statement_timeout(Duration::from_micros(10)).validate()),
            "statement_timeout"
        );
    }

    #[test]
    fn bad_urls_are_invalid_and_never_show_the_password() {
        for url in [
            "postgres://app:hunter2secret@db:notaport/app",
            "postgres://app:hunter2secret@/app",
            "host=db password=hunter2secret port=x",
            "password='hunter2secret",
        ] {
            let err = PostgresConfig::new(url).validate().unwrap_err();
            assert!(
                matches!(err, Error::Invalid { field: "url", .. }),
                "{err:?}"
            );
            for text in [err.to_string(), format!("{err:?}"), error_chain(&err)] {
                assert!(!text.contains("hunter2"), "{url}: {text}");
            }
            let debug = format!("{:?}", PostgresConfig::new(url));
            assert!(!debug.contains("hunter2"), "{debug}");
        }
    }

    #[test]
    fn server_is_described_by_host_port_and_database() {
        let pg: tokio_postgres::Config = "postgres://u:secret@db.example:6543/app".parse().unwrap();
        assert_eq!(describe_server(&pg), "db.example:6543 (database \"app\")");
        let pg: tokio_postgres::Config = "host=a,b port=1,2 user=u".parse().unwrap();
        assert_eq!(describe_server(&pg), "a:1,b:2 (database \"u\")");
        let pg: tokio_postgres::Config = "host=::1 dbname=d".parse().unwrap();
        assert_eq!(describe_server(&pg), "[::1]:5432 (database \"d\")");
    }

    #[test]
    fn dead_peers_are_noticed_within_a_minute_unless_the_url_says_otherwise() {
        let pg = PostgresConfig::new("postgres://u@h/d").pg_config().unwrap();
        assert_eq!(pg.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        let own = PostgresConfig::new("postgres://u@h/d?keepalives_idle=5")
            .pg_config()
            .unwrap();
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(5));
    }

    #[test]
    fn timeouts_reach_the_connection_settings() {
        let config = PostgresConfig::new("postgres://u@h/d?options=-c%20search_path%3Dx")
            .statement_timeout(Duration::from_millis(1500));
        let pg = config.pg_config().unwrap();
        // The store's statement timeout is not the session's: handlers'
        // statements run under the server's (and the URL's) own setting.
        assert_eq!(pg.get_options(), Some("-c search_path=x"));
        let plain = PostgresConfig::new("postgres://u@h/d").pg_config().unwrap();
        assert_eq!(plain.get_options(), None);
        assert_eq!(pg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(pg.get_application_name(), Some("waymark"));
        let from_url = PostgresConfig::new("postgres://u@h/d?connect_timeout=3");
        assert_eq!(
            from_url.pg_config().unwrap().get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let explicit = from_url.connect_timeout(Duration::from_secs(1));
        assert_eq!(
            explicit.pg_config().unwrap().get_connect_timeout(),
            Some(&Duration::from_secs(1))
        );
    }

    #[test]
    fn ssl_parameters_are_read_by_the_store_in_both_forms() {
        use tokio_postgres::config::SslMode as Driver;
        for (url, mode) in [
            ("postgres://u:pw@h/d", Driver::Prefer),
            ("postgres://u:pw@h/d?sslmode=disable", Driver::Disable),
            ("host=h user=u sslmode=prefer", Driver::Prefer),
            (
                "postgres://u:pw@h/d?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a",
                Driver::Require,
            ),
            (
                "host=h user=u sslmode=verify-ca sslrootcert=/ca.pem",
                Driver::Require,
            ),
            ("host=h sslmode=require", Driver::Require),
        ] {
            let (pg, _) = PostgresConfig::new(url).connection().unwrap();
            assert_eq!(pg.get_ssl_mode(), mode, "{url}");
        }
        let (pg, ssl) = PostgresConfig::new(
            "postgres://u:pw@h/d?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a",
        )
        .connection()
        .unwrap();
        assert_eq!(ssl.mode, SslMode::VerifyFull);
        assert_eq!(pg.get_application_name(), Some("a"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn tls_needs_a_host_name_so_hostaddr_stands_in() {
        let (pg, _) = PostgresConfig::new("hostaddr=127.0.0.1 user=u")
            .connection()
            .unwrap();
        assert_eq!(pg.get_hosts(), &[Host::Tcp("127.0.0.1".to_owned())]);
        let (pg, _) = PostgresConfig::new("hostaddr=127.0.0.1 user=u sslmode=disable")
            .connection()
            .unwrap();
        assert!(pg.get_hosts().is_empty());
        let (pg, ssl) = PostgresConfig::new("host=/run/postgresql user=u sslmode=verify-full")
            .connection()
            .unwrap();
        assert_eq!(ssl.mode, SslMode::Disable, "Unix sockets never use TLS");
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn bad_ssl_settings_name_sslmode_and_never_show_the_password() {
        for url in [
            "postgres://app:hunter2secret@db/app?sslmode=sometimes",
            "host=db password=hunter2secret sslmode=allow",
            "host=db password=hunter2secret sslrootcert=system sslmode=require",
        ] {
            let err = PostgresConfig::new(url).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: "sslmode",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(!error_chain(&err).contains("hunter2"), "{err}");
            let debug = format!("{:?}", PostgresConfig::new(url));
            assert!(!debug.contains("hunter2"), "{debug}");
        }
        let debug = format!(
            "{:?}",
            PostgresConfig::new("postgres://u:hunter2secret@db/app?sslmode=require&sslrootcert=/x")
        );
        assert!(
            debug.contains("db:5432") && debug.contains("require"),
            "{debug}"
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_feature_modes_that_need_tls_are_refused_at_once() {
        for mode in ["require", "verify-ca", "verify-full"] {
            for url in [
                format!("postgres://u:hunter2secret@db/app?sslmode={mode}"),
                format!("host=db password=hunter2secret sslmode={mode} sslrootcert=/ca.pem"),
            ] {
                let err = PostgresConfig::new(&url).validate().unwrap_err();
                match &err {
                    Error::Invalid {
                        field: "sslmode",
                        message,
                    } => {
                        assert!(message.contains("`tls` feature"), "{message}")
                    }
                    other => panic!("{url}: {other:?}"),
                }
                assert!(!error_chain(&err).contains("hunter2"), "{err}");
            }
        }
        for url in [
            "postgres://u@db/app?sslmode=prefer&sslrootcert=/nonexistent.pem",
            "host=db sslmode=disable",
        ] {
            assert!(PostgresConfig::new(url).validate().is_ok(), "{url}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn with_the_feature_root_files_are_read_when_validating() {
        assert!(
            PostgresConfig::new("postgres://u@db/app?sslmode=require")
                .validate()
                .is_ok()
        );
        for url in [
            "postgres://u:hunter2secret@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "host=db password=hunter2secret sslmode=require sslrootcert=/nonexistent/ca.pem",
        ] {
            let err = PostgresConfig::new(url).validate().unwrap_err();
            match &err {
                Error::Invalid {
                    field: "sslrootcert",
                    message,
                } => assert!(message.contains("/nonexistent/ca.pem"), "{message}"),
                other => panic!("{url}: {other:?}"),
            }
            assert!(!error_chain(&err).contains("hunter2"), "{err}");
        }
    }
}
