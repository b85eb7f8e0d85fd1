//! `PostgresStore`: building it (from a URL or the application's pool)
//! and what it holds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use waymark_core::Error;
use waymark_core::store::advisory::DeadHolderBound;
use waymark_core::store::{InFlight, LockScope};

use crate::config::{PostgresConfig, describe_server};
use crate::conn::{Canceller, Tls, tls};
use crate::lock;
use crate::sql::PgStatements;
use crate::ssl::Ssl;

/// A [`MigrationStore`](waymark_core::MigrationStore) on PostgreSQL, for servers and for applications
/// that run several replicas against one database.
///
/// Cheap to clone: clones share one pool. Build it from a URL
/// ([`connect`](Self::connect), [`connect_with`](Self::connect_with)) or
/// from the application's own pool ([`from_pool`](Self::from_pool),
/// [`from_pool_with`](Self::from_pool_with)). The run and background locks
/// are advisory locks keyed by schema and table ([`lock_key`](Self::lock_key)),
/// held by a connection that has left the pool. As an
/// [`AtomicStore`](waymark_core::store::AtomicStore), it runs atomic handlers
/// (`Handler::atomic`, `Handler::batched` of waymark's runner) in a
/// transaction that commits their data change with the bookkeeping.
///
/// ```no_run
/// use waymark_core::MigrationStore;
/// use waymark_postgres::{PostgresConfig, PostgresStore};
///
/// # async fn demo() -> Result<(), waymark_core::Error> {
/// let store = PostgresStore::connect_with(
///     PostgresConfig::new("postgres://app@localhost/app").schema("ops"),
/// )
/// .await?;
/// store.prepare().await?;
/// println!("{} pending", store.pending().await?.len());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    schema: String,
    table: String,
    sql: PgStatements,
    /// `host:port (database …)`: what messages name; never a password.
    server: String,
    run_key: i64,
    background_key: i64,
    connect_timeout: Duration,
    statement_timeout: Duration,
    /// The migrations whose atomic transaction is open in this store (and its clones).
    in_flight: InFlight,
    /// How cancel requests reach the server.
    canceller: Canceller,
    /// The explicit choices for ambiguous rows of an adopted table.
    adoption: waymark_core::store::AdoptionChoices,
    /// Whether `prepare` may create the table beside another tracking table.
    allow_second_table: bool,
    /// How soon the server frees a vanished holder's lock.
    dead_holder: DeadHolderBound,
    /// The lock session kept between two locks.
    spare: lock::SpareSession,
}

/// The schema an unqualified `table` means on this session: the first
/// schema of the search path holding it, else the first existing one.
async fn search_path_schema(
    conn: &crate::conn::Conn,
    table: &str,
    server: &str,
) -> Result<String, Error> {
    let client: &deadpool_postgres::Client = conn;
    let row = client
        .query_one(
            "SELECT (SELECT n.nspname::TEXT FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.oid = to_regclass(quote_ident($1))), \
                    current_schema()::TEXT",
            &[&table],
        )
        .await
        .map_err(|e| crate::error::pg(format!("reading the search path at {server}"), e))?;
    let (holding, first): (Option<String>, Option<String>) = (row.get(0), row.get(1));
    let schema = holding.or(first).ok_or_else(|| {
        Error::invalid(
            "schema",
            format!(
                "no schema was given and the search path at {server} names no existing \
                 schema; set PostgresConfig::schema"
            ),
        )
    })?;
    if schema.contains('"') || schema.contains('\0') {
        return Err(Error::invalid(
            "schema",
            format!(
                "the search path's schema {schema:?} cannot be quoted; set PostgresConfig::schema"
            ),
        ));
    }
    Ok(schema)
}

impl PostgresStore {
    /// Connects to the server at `url` with every other setting at its
    /// default (see [`PostgresConfig`]).
    ///
    /// Opens one connection before returning, so a server that is down or a
    /// wrong port is an [`Error::Store`] now, within the connect timeout,
    /// naming the host and port (never the password).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects with `config`; see [`connect`](Self::connect).
    ///
    /// Every connection of the store (its pool, the lock's session, cancel
    /// requests) uses TLS as the URL's `sslmode` and `sslrootcert` say,
    /// with the feature `tls`; without it, plain TCP or a Unix socket, and
    /// modes that need TLS are refused (see [`PostgresConfig`]'s TLS
    /// section).
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, Error> {
        config.check_names()?;
        config.check_limits()?;
        let (pg, ssl) = config.connection()?;
        let tls = tls(&ssl)?;
        let server = describe_server(&pg);
        let connect_timeout = config.effective_connect_timeout(&pg);
        let statement_timeout = config.statement_timeout_value();
        // A TLS connector is Clone, not Copy: written for one.
        #[allow(clippy::clone_on_copy)]
        let pool_tls = tls.clone();
        let manager = Manager::from_config(
            pg,
            pool_tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The dead holder's keepalives go on the lock's session only
        // (`lock::Announcement`), which is idle while it holds the lock:
        // set on the pooled sessions, server-side TCP keepalive or
        // `tcp_user_timeout` settings made every round trip of a migration
        // slower (N pending migrations: 1.07x of the hand-written loop
        // without them, 1.32x with them; docs/benchmarks.md).
        let pool = Pool::builder(manager)
            .max_size(config.pool_size_value())
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .wait_timeout(Some(connect_timeout.saturating_add(statement_timeout)))
            .build()
            .map_err(|e| Error::store(format!("building the pool for {server}"), e))?;
        let schema = config.schema_name().unwrap_or("public").to_owned();
        // A TLS connector is Clone, not Copy: written for one.
        #[allow(clippy::clone_on_copy)]
        let first_tls = tls.clone();
        let store = Self::build(
            pool.clone(),
            &config,
            &schema,
            server.clone(),
            connect_timeout,
            first_tls,
        );
        let conn = store.checkout().await?;
        if config.schema_name().is_some() {
            conn.release();
            return Ok(store);
        }
        // No schema given: the search path decides, as for any libpq client.
        let resolved = search_path_schema(&conn, config.table_name(), &server).await;
        conn.release();
        Ok(Self::build(
            pool,
            &config,
            &resolved?,
            server,
            connect_timeout,
            tls,
        ))
    }

    /// Uses the application's own pool, with the default table
    /// `public.migrations` and default timeouts.
    pub fn from_pool(pool: Pool) -> Self {
        Self::from_pool_with(pool, PostgresConfig::default())
            .expect("the default settings are valid")
    }

    /// Uses the application's own pool with `config`'s schema, table and
    /// timeouts. The pool decides how to connect (its size, its TLS, its
    /// session settings); `config`'s URL, if any, only names the server in
    /// error messages. Getting a connection and each store call are still
    /// bounded by `config`'s timeouts.
    ///
    /// After its first lock the store keeps one idle session of this pool's
    /// server aside (outside the pool, holding nothing) for its next lock.
    ///
    /// The lock's session still gets the dead holder's bound
    /// ([`PostgresConfig::dead_holder_timeout`]) when it takes a lock. The
    /// pool's other sessions keep the settings the application gave them,
    /// as those of [`connect_with`](Self::connect_with)'s pool keep the
    /// server's (see [`PostgresConfig::dead_holder_timeout`]).
    ///
    /// Cancel requests (for a statement of the store's abandoned or timed
    /// out, see [`PostgresConfig::statement_timeout`]) negotiate TLS as the
    /// pool's own sessions do (each session's `sslmode` goes with it). With
    /// the feature `tls`, they use TLS then, checking the server's
    /// certificate as `config`'s URL says (`sslmode`, `sslrootcert`), or not
    /// at all without a URL. Without the feature they go without TLS: with
    /// a server that requires TLS they fail, and such a statement ends only
    /// when the server notices its connection closed.
    pub fn from_pool_with(pool: Pool, config: PostgresConfig) -> Result<Self, Error> {
        config.check_names()?;
        config.check_limits()?;
        let (server, ssl) = if config.url().is_empty() {
            (
                "PostgreSQL (the application's pool)".to_owned(),
                Ssl::default(),
            )
        } else {
            let (pg, ssl) = config.connection()?;
            (describe_server(&pg), ssl)
        };
        // Without the feature the URL's sslmode only describes the
        // application's pool: the cancel requests go without TLS anyway.
        let tls = if cfg!(feature = "tls") {
            tls(&ssl)?
        } else {
            tls(&Ssl::default())?
        };
        let connect_timeout = config.connect_timeout_or_default();
        let schema = config.schema_name().unwrap_or("public").to_owned();
        Ok(Self::build(
            pool,
            &config,
            &schema,
            server,
            connect_timeout,
            tls,
        ))
    }

    fn build(
        pool: Pool,
        config: &PostgresConfig,
        schema: &str,
        server: String,
        connect_timeout: Duration,
        tls: Tls,
    ) -> Self {
        let table = config.table_name();
        Self {
            inner: Arc::new(Inner {
                pool,
                sql: PgStatements::new(schema, table),
                run_key: lock::lock_key(LockScope::Run, schema, table),
                background_key: lock::lock_key(LockScope::Background, schema, table),
                schema: schema.to_owned(),
                table: table.to_owned(),
                server,
                connect_timeout,
                statement_timeout: config.statement_timeout_value(),
                in_flight: InFlight::new(),
                canceller: Canceller {
                    tls,
                    limit: connect_timeout,
                },
                adoption: config.adoption_choices(),
                allow_second_table: config.second_table_allowed(),
                // Checked with the other limits before any store is built.
                dead_holder: config.dead_holder_bound().unwrap_or_default(),
                spare: lock::SpareSession::new(config.statement_timeout_value()),
            }),
        }
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The schema of the tracking table.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The tracking table.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The key of the run lock's advisory lock ([`LockScope::Run`]): FNV-1a
    /// of `waymark:run:<schema>.<table>`, stable across versions and hosts
    /// (every earlier version used the same key). In `pg_locks` it appears
    /// as `classid` = high 32 bits, `objid` = low 32 bits, `objsubid` = 1.
    pub fn lock_key(&self) -> i64 {
        self.inner.run_key
    }

    /// The key of `scope`'s advisory lock, derived like [`lock_key`](Self::lock_key)
    /// (`waymark:background:<schema>.<table>` for [`LockScope::Background`]).
    pub fn lock_key_for(&self, scope: LockScope) -> i64 {
        match scope {
            LockScope::Run => self.inner.run_key,
            LockScope::Background => self.inner.background_key,
            other => lock::lock_key(other, &self.inner.schema, &self.inner.table),
        }
    }

    /// The context of an error while `doing` something to the table.
    pub(crate) fn context(&self, doing: &str) -> String {
        format!("{doing} in {}", self.describe_table())
    }

    /// `schema.table at host:port (database …)`: the table and where it is.
    pub(crate) fn describe_table(&self) -> String {
        format!("{} at {}", self.inner.sql.display, self.inner.server)
    }

    /// The error of a call that found no tracking table (or no schema).
    pub(crate) fn not_initialised(&self) -> Error {
        Error::NotInitialised {
            table: self.describe_table(),
        }
    }

    pub(crate) fn adoption(&self) -> &waymark_core::store::AdoptionChoices {
        &self.inner.adoption
    }

    pub(crate) fn second_table_allowed(&self) -> bool {
        self.inner.allow_second_table
    }

    pub(crate) fn statements(&self) -> &PgStatements {
        &self.inner.sql
    }

    pub(crate) fn in_flight(&self) -> &InFlight {
        &self.inner.in_flight
    }

    pub(crate) fn canceller(&self) -> &Canceller {
        &self.inner.canceller
    }

    pub(crate) fn server(&self) -> &str {
        &self.inner.server
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    pub(crate) fn statement_timeout(&self) -> Duration {
        self.inner.statement_timeout
    }

    pub(crate) fn dead_holder(&self) -> &DeadHolderBound {
        &self.inner.dead_holder
    }

    pub(crate) fn spare_session(&self) -> &lock::SpareSession {
        &self.inner.spare
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.server)
            .field("table", &self.inner.sql.display)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}
