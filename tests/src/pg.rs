//! A throwaway PostgreSQL cluster for tests, and a fresh database per test.
//!
//! The first call in a test process starts one cluster from the installed
//! server binaries (`initdb`, `pg_ctl`, `postgres`; from `PATH` or
//! `/usr/lib/postgresql/*/bin`), as the `postgres` user via `runuser` when
//! running as root: on a free port of 127.0.0.1, in a temporary directory,
//! with `fsync` off and trust authentication. A watchdog process stops it
//! and removes the directory when the test process exits, however it exits
//! (Rust runs no destructors of statics). Missing binaries fail the test
//! with the package to install; nothing is skipped.
//!
//! With `WAYMARK_TEST_DATABASE_URL` set (a superuser URL of a running
//! server), that server is used instead, and each test's database is
//! dropped when the test ends.
//!
//! Every test gets its own database ([`fresh_database`]), so tests run in
//! parallel without seeing each other's tables or advisory locks. A test
//! that stops and starts the server gets a cluster of its own
//! ([`PrivateCluster`]).
//!
//! [`AtomicPostgres`] is the store as the atomic conformance suite drives
//! it ([`fresh_atomic_db`]).

use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, Transaction};
use waymark_core::run::new_context;
use waymark_core::store::{AtomicFn, BatchFn, BoxFuture};
use waymark_core::testkit::{AtomicDb, AtomicFixture, BatchPlan, TestStore};
use waymark_core::{
    BatchStep, BoxError, CancellationToken, Migration, MigrationContext, MigrationStore,
};
use waymark_postgres::{PostgresConfig, PostgresStore};

/// The variable naming an existing server to use instead of a throwaway one.
pub const DATABASE_URL_VAR: &str = "WAYMARK_TEST_DATABASE_URL";

/// The server every test of this process uses.
struct Server {
    /// How to build the URL of one database.
    urls: UrlTemplate,
    /// True for `WAYMARK_TEST_DATABASE_URL`: databases are dropped after
    /// each test, since nobody deletes that server at the end.
    external: bool,
    /// The watchdog, whose stdin this process holds open until it exits:
    /// the kernel then closes it, which tells the watchdog to stop the
    /// cluster and delete it. Never waited for: it outlives this process.
    _watchdog: Option<Child>,
}

/// A server URL with its database left open.
enum UrlTemplate {
    /// `scheme://authority` and `?query` around the `/database` path.
    Url { base: String, query: String },
    /// libpq `key=value` pairs; a later `dbname=` wins.
    KeyValue(String),
}

impl UrlTemplate {
    fn parse(url: &str) -> Self {
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let (rest, query) = match rest.split_once('?') {
                    Some((rest, query)) => (rest, format!("?{query}")),
                    None => (rest, String::new()),
                };
                let authority = rest.split('/').next().unwrap_or_default();
                Self::Url {
                    base: format!("{scheme}://{authority}"),
                    query,
                }
            }
            None => Self::KeyValue(url.trim().to_owned()),
        }
    }

    fn for_database(&self, database: &str) -> String {
        match self {
            Self::Url { base, query } => format!("{base}/{database}{query}"),
            Self::KeyValue(pairs) => format!("{pairs} dbname={database}"),
        }
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Server {
            urls: UrlTemplate::parse(&url),
            external: true,
            _watchdog: None,
        },
        _ => cluster::start(),
    })
}

/// The superuser URL of the server's maintenance database `postgres`.
pub fn server_url() -> String {
    server().urls.for_database("postgres")
}

/// A database of its own for one test, on the shared server; the URL
/// connects as a superuser.
pub struct TestDatabase {
    name: String,
    url: String,
    external: bool,
}

/// An advisory lock as `pg_locks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryLock {
    /// The 64-bit key (`classid` and `objid` joined).
    pub key: i64,
    /// The backend holding or waiting for it.
    pub pid: i32,
    /// Held (true) or waited for (false).
    pub granted: bool,
}

static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// Creates an empty database with a unique name on the shared server.
pub async fn fresh_database() -> TestDatabase {
    fresh_database_with("").await
}

/// [`fresh_database`] created with `options` after `CREATE DATABASE name`,
/// such as `ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`.
pub async fn fresh_database_with(options: &str) -> TestDatabase {
    let server = server();
    let name = format!(
        "waymark_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&server.urls.for_database("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" {options}"))
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e:?}"));
    TestDatabase {
        url: server.urls.for_database(&name),
        name,
        external: server.external,
    }
}

/// A store on a fresh database, with the database that keeps it alive.
pub async fn fresh_store() -> (PostgresStore, TestDatabase) {
    let db = fresh_database().await;
    let store = db.store().await;
    (store, db)
}

/// A fresh database as the conformance suite and the runner suite want it:
/// reopening builds a second store with its own pool on the same database.
pub async fn fresh_test_store() -> TestStore {
    let (store, db) = fresh_store().await;
    let url = db.url().to_owned();
    TestStore::new(
        Arc::new(store),
        Arc::new(move || {
            let url = url.clone();
            Box::pin(async move {
                let other = PostgresStore::connect(&url)
                    .await
                    .expect("reopening the test database");
                Arc::new(other) as Arc<dyn MigrationStore>
            })
        }),
        db,
    )
}

/// The store as the atomic conformance suite drives it: a [`PostgresStore`]
/// under another name, because the suite's [`AtomicFixture`] (core's) can
/// only be implemented for a type of this crate. Every call goes to the
/// store itself, its faster overrides included.
pub type AtomicPostgres = crate::fixture::Fixture<PostgresStore>;

/// A fresh database for one test of the atomic suite.
pub async fn fresh_atomic_db() -> AtomicDb<AtomicPostgres> {
    let (store, db) = fresh_store().await;
    AtomicDb::new(crate::fixture::Fixture(store), db)
}

/// An atomic handler's body for a [`PostgresStore`], from a closure over its
/// transaction, as `Handler::atomic` takes it: for tests that call
/// [`AtomicStore::execute_atomic`](waymark_core::store::AtomicStore::execute_atomic) themselves.
pub fn atomic_fn<S, F>(f: F) -> AtomicFn<S, PostgresStore>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            &'t MigrationContext<S>,
        ) -> BoxFuture<'t, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// A batched atomic handler's body for a [`PostgresStore`], as
/// `Handler::batched` takes it.
pub fn batch_fn<S, F>(f: F) -> BatchFn<S, PostgresStore>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            Option<&'t str>,
            &'t MigrationContext<S>,
        ) -> BoxFuture<'t, Result<BatchStep, BoxError>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// The context the runner gives an atomic handler of migration `row`
/// (state `()`, no progress, `cancel` as its cancellation).
pub fn context_with(
    store: &PostgresStore,
    row: Migration,
    cancel: CancellationToken,
) -> Arc<MigrationContext<()>> {
    let shared: Arc<dyn MigrationStore> = Arc::new(store.clone());
    Arc::new(new_context(Arc::new(()), row, shared, None, cancel))
}

/// [`context_with`] a cancellation that never fires.
pub fn context(store: &PostgresStore, row: Migration) -> Arc<MigrationContext<()>> {
    context_with(store, row, CancellationToken::new())
}

/// The superuser URL of `db` with `options` (libpq's `-c name=value`
/// session settings, as a URL would carry them).
pub fn url_with_options(db: &TestDatabase, options: &str) -> String {
    let encoded = options.replace(' ', "%20").replace('=', "%3D");
    let separator = if db.url().contains('?') { '&' } else { '?' };
    format!("{}{separator}options={encoded}", db.url())
}

/// The suite's data table, created by the first body that writes to it.
const CREATE_DATA: &str = "CREATE TABLE IF NOT EXISTS waymark_suite_data (v BIGINT NOT NULL)";

/// An atomic body from a closure over the transaction (pins down its
/// higher-ranked signature).
fn atomic_body<S, F>(f: F) -> AtomicFn<S, AtomicPostgres>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            &'t MigrationContext<S>,
        ) -> BoxFuture<'t, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

fn batch_body<F>(f: F) -> BatchFn<BatchPlan, AtomicPostgres>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            Option<&'t str>,
            &'t MigrationContext<BatchPlan>,
        ) -> BoxFuture<'t, Result<BatchStep, BoxError>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

impl AtomicFixture for AtomicPostgres {
    fn insert<S: Send + Sync + 'static>(value: i64) -> AtomicFn<S, Self> {
        atomic_body(move |tx, _ctx| {
            Box::pin(async move {
                tx.batch_execute(CREATE_DATA).await?;
                tx.execute("INSERT INTO waymark_suite_data (v) VALUES ($1)", &[&value])
                    .await?;
                Ok::<(), BoxError>(())
            })
        })
    }

    fn batch() -> BatchFn<BatchPlan, Self> {
        batch_body(|tx, from, ctx| {
            Box::pin(async move {
                let plan = *ctx.state();
                let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
                let last = (after + plan.per_batch).min(plan.last);
                tx.batch_execute(CREATE_DATA).await?;
                tx.execute(
                    "INSERT INTO waymark_suite_data (v) \
                     SELECT generate_series($1::BIGINT, $2::BIGINT)",
                    &[&(after + 1), &last],
                )
                .await?;
                let processed = u64::try_from(last - after).unwrap_or(0);
                Ok::<_, BoxError>(if last >= plan.last {
                    BatchStep::done(processed)
                } else if plan.stall {
                    BatchStep::next(from.unwrap_or("0"), processed)
                } else {
                    BatchStep::next(last.to_string(), processed)
                })
            })
        })
    }

    fn endless<S: Send + Sync + 'static>() -> AtomicFn<S, Self> {
        atomic_body(|tx, _ctx| {
            Box::pin(async move {
                tx.batch_execute(CREATE_DATA).await?;
                tx.execute("INSERT INTO waymark_suite_data (v) VALUES (1)", &[])
                    .await?;
                tx.execute("SELECT pg_sleep(3600)", &[]).await?;
                Ok::<(), BoxError>(())
            })
        })
    }

    fn values(&self) -> impl Future<Output = Vec<i64>> + Send {
        let pool = self.0.pool().clone();
        async move {
            let client = pool.get().await.expect("a pooled connection");
            let exists: bool = client
                .query_one("SELECT to_regclass('waymark_suite_data') IS NOT NULL", &[])
                .await
                .expect("looking for the data table")
                .get(0);
            if !exists {
                return Vec::new();
            }
            client
                .query("SELECT v FROM waymark_suite_data ORDER BY v", &[])
                .await
                .expect("reading the data table")
                .iter()
                .map(|row| row.get(0))
                .collect()
        }
    }

    /// Any other client session of the test's database running a
    /// statement or inside a transaction (so possibly holding locks).
    fn busy(&self) -> impl Future<Output = bool> + Send {
        let pool = self.0.pool().clone();
        async move {
            let client = pool.get().await.expect("a pooled connection");
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND backend_type = 'client backend' \
                       AND state IN ('active', 'idle in transaction', \
                                     'idle in transaction (aborted)'))",
                    &[],
                )
                .await
                .expect("reading pg_stat_activity")
                .get(0)
        }
    }
}

impl TestDatabase {
    /// The database's URL (superuser, no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Store settings for this database, to adjust before connecting.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig::new(&self.url)
    }

    /// A store with default settings on this database (its own pool).
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
    }

    /// A new superuser session on this database, outside any store's pool,
    /// to inspect (`pg_locks`, tables) or to sabotage (`pg_terminate_backend`).
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// The advisory locks held or awaited in this database.
    pub async fn advisory_locks(&self) -> Vec<AdvisoryLock> {
        self.admin()
            .await
            .query(
                "SELECT ((l.classid::BIGINT << 32) | l.objid::BIGINT), l.pid, l.granted \
                 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND d.datname = current_database() \
                 ORDER BY l.pid",
                &[],
            )
            .await
            .expect("reading pg_locks")
            .iter()
            .map(|row| AdvisoryLock {
                key: row.get(0),
                pid: row.get(1),
                granted: row.get(2),
            })
            .collect()
    }

    /// Polls `pg_locks` until no advisory lock is left in this database or
    /// `limit` passes; returns what is left (empty on success). The server
    /// frees a closed session's locks asynchronously, within milliseconds.
    pub async fn wait_for_no_advisory_locks(&self, limit: Duration) -> Vec<AdvisoryLock> {
        let started = Instant::now();
        loop {
            let locks = self.advisory_locks().await;
            if locks.is_empty() || started.elapsed() >= limit {
                return locks;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pids of every other session connected to this database.
    pub async fn backends(&self) -> Vec<i32> {
        self.admin()
            .await
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid",
                &[],
            )
            .await
            .expect("reading pg_stat_activity")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Terminates the session `pid` (`pg_terminate_backend`, waiting up to
    /// five seconds for it to end: PostgreSQL 14 or later); false if there
    /// was no such session.
    pub async fn terminate(&self, pid: i32) -> bool {
        self.admin()
            .await
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
            .await
            .expect("pg_terminate_backend")
            .get(0)
    }

    /// Terminates every other session on this database; returns how many.
    pub async fn terminate_all(&self) -> usize {
        let mut terminated = 0;
        for pid in self.backends().await {
            if self.terminate(pid).await {
                terminated += 1;
            }
        }
        terminated
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

/// On an external server, drops the database (on a thread of its own: a
/// destructor cannot await). The throwaway cluster is deleted whole instead.
impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !self.external {
            return;
        }
        let admin_url = server_url();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = connect(&admin_url).await;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// A superuser session at `url` (a [`PrivateCluster`]'s); its connection
/// runs on the current runtime.
/// Waits, up to a minute, until backend `pid` matches `condition` (SQL
/// over the columns of `pg_stat_activity`, such as `state = 'idle'`), as
/// `admin` sees it; panics naming `what` otherwise.
pub async fn wait_for_activity(
    admin: &tokio_postgres::Client,
    pid: i32,
    condition: &str,
    what: &str,
) {
    let sql = format!("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND {condition}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if admin.query_opt(&sql, &[&pid]).await.unwrap().is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid}: never {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn connect_url(url: &str) -> tokio_postgres::Client {
    connect(url).await
}

/// A superuser session; its connection runs on the current runtime.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Starting, and the watchdog that stops, the throwaway cluster.
mod cluster {
    use super::*;

    /// The Debian package with `initdb`, `pg_ctl` and `postgres`.
    const PACKAGE: &str = "postgresql";
    const OWNER: &str = "postgres";

    /// Stops the cluster and deletes its directory once its stdin closes,
    /// that is once the test process has exited. `$1` is the directory,
    /// `$2` pg_ctl, `$3` the user to run it as (empty: this user).
    const WATCHDOG: &str = r#"
cat >/dev/null 2>&1
if [ -n "$3" ]; then
    runuser -u "$3" -- "$2" stop -D "$1/data" -m immediate -w >/dev/null 2>&1
else
    "$2" stop -D "$1/data" -m immediate -w >/dev/null 2>&1
fi
rm -rf "$1"
"#;

    /// A cluster this process started: how to control it, and the watchdog
    /// that deletes it once this process exits.
    pub(super) struct Cluster {
        pub(super) bin: PathBuf,
        pub(super) run_as: Option<&'static str>,
        pub(super) dir: PathBuf,
        pub(super) port: u16,
        pub(super) watchdog: Child,
    }

    impl Cluster {
        fn data(&self) -> PathBuf {
            self.dir.join("data")
        }

        /// Starts the stopped server again, on the same port.
        pub(super) fn start_again(&self) {
            if let Err(log) = start_on(&self.bin, self.run_as, &self.dir, &self.data(), self.port) {
                panic!("starting the cluster again failed:\n{log}");
            }
        }

        /// Stops the server (`pg_ctl stop -m fast`: sessions are ended).
        pub(super) fn stop(&self) {
            let out = run(
                self.run_as,
                &self.bin.join("pg_ctl"),
                &[
                    "stop".as_ref(),
                    "-D".as_ref(),
                    self.data().as_os_str(),
                    "-m".as_ref(),
                    "fast".as_ref(),
                    "-w".as_ref(),
                ],
            );
            assert!(
                out.status.success(),
                "pg_ctl stop failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub(super) fn start() -> Server {
        let cluster = create();
        Server {
            urls: UrlTemplate::parse(&format!(
                "postgres://{OWNER}@127.0.0.1:{}/postgres",
                cluster.port
            )),
            external: false,
            _watchdog: Some(cluster.watchdog),
        }
    }

    /// Creates and starts a cluster of its own.
    pub(super) fn create() -> Cluster {
        create_configured("", None, &[])
    }

    /// Where the cluster's directory goes: the system's temporary directory,
    /// unless the `postgres` user could not reach it (a `TMPDIR` under a
    /// private home, say), then `/tmp`.
    fn temp_root(for_other_user: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = env::temp_dir();
        let reachable = dir.ancestors().all(|ancestor| {
            std::fs::metadata(ancestor).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        });
        if for_other_user && !reachable {
            PathBuf::from("/tmp")
        } else {
            dir
        }
    }

    /// The directory holding `initdb` and `pg_ctl`.
    fn binaries() -> PathBuf {
        let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Some(dir) = env::var_os("PATH")
            .iter()
            .flat_map(env::split_paths)
            .find(|dir| has_tools(dir))
        {
            return dir;
        }
        // Debian installs them outside PATH, one directory per major version.
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                has_tools(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        match versions.pop() {
            Some((_, bin)) => bin,
            None => panic!(
                "the PostgreSQL tests need the server binaries (initdb, pg_ctl, postgres), found \
                 neither in PATH nor in /usr/lib/postgresql/*/bin: install the Debian package \
                 `{PACKAGE}` (apt-get install {PACKAGE}), or set {DATABASE_URL_VAR} to the \
                 superuser URL of a running server"
            ),
        }
    }

    fn is_root() -> bool {
        let out = Command::new("id")
            .arg("-u")
            .output()
            .expect("running `id -u`");
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    }

    fn owner_ids() -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, OWNER])
                .output()
                .expect("running `id`");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| {
                    panic!(
                        "running as root, the tests start PostgreSQL as the user `{OWNER}`, which \
                         does not exist: install the Debian package `{PACKAGE}`"
                    )
                })
        };
        (id("-u"), id("-g"))
    }

    /// Runs a server binary, as `run_as` when given.
    fn run(run_as: Option<&str>, program: &Path, args: &[&OsStr]) -> Output {
        let mut command = match run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
    }

    fn init(bin: &Path, run_as: Option<&str>, data: &Path) {
        let out = run(
            run_as,
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                OWNER.as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Speed over durability: the cluster lives for one test process.
        let settings = "\n# waymark tests\n\
            listen_addresses = '127.0.0.1'\n\
            unix_socket_directories = ''\n\
            fsync = off\n\
            synchronous_commit = off\n\
            full_page_writes = off\n\
            max_connections = 300\n\
            shared_buffers = 64MB\n";
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .expect("configuring the test cluster");
    }

    /// Starts the server on a free port, retrying when another process
    /// takes the port first; returns the port.
    fn launch(bin: &Path, run_as: Option<&str>, dir: &Path, data: &Path) -> u16 {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match start_on(bin, run_as, dir, data, port) {
                Ok(()) => return port,
                Err(log) => last = log,
            }
            if !last.contains("could not bind") && !last.contains("already in use") {
                break;
            }
        }
        panic!("starting the test cluster failed:\n{last}");
    }

    /// `pg_ctl start` on `port`, waiting until the server accepts
    /// connections; the error is everything pg_ctl and the server said.
    fn start_on(
        bin: &Path,
        run_as: Option<&str>,
        dir: &Path,
        data: &Path,
        port: u16,
    ) -> Result<(), String> {
        let log = dir.join("server.log");
        let out = run(
            run_as,
            &bin.join("pg_ctl"),
            &[
                "start".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                format!("-p {port}").as_ref(),
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free port on 127.0.0.1")
            .port()
    }

    /// Creates and starts a cluster of its own as [`create`] does, set up
    /// before its first start: each of `files` written into the data
    /// directory (owned by the server's user, mode 0600), `conf` appended
    /// to `postgresql.conf`, and `hba`, when given, as the whole
    /// `pg_hba.conf`.
    pub(super) fn create_configured(
        conf: &str,
        hba: Option<&str>,
        files: &[(&str, &[u8])],
    ) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let bin = binaries();
        let run_as = if is_root() { Some(OWNER) } else { None };
        let dir = tempfile::Builder::new()
            .prefix("waymark-pg-")
            .tempdir_in(temp_root(run_as.is_some()))
            .expect("creating the cluster's temporary directory")
            .keep();
        let ids = run_as.map(|_| owner_ids());
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .expect("handing the cluster's directory to the postgres user");
        }
        // The watchdog first: whatever happens from here on is cleaned up.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("waymark-pg-watchdog")
            .arg(&dir)
            .arg(bin.join("pg_ctl"))
            .arg(run_as.unwrap_or(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C to the tests must not kill it.
            .process_group(0)
            .spawn()
            .expect("starting the cluster's watchdog (sh)");
        let data = dir.join("data");
        init(&bin, run_as, &data);
        let write = |name: &str, contents: &[u8], mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("setting the mode of {}: {e}", path.display()));
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("handing {} to postgres: {e}", path.display()));
            }
        };
        for (name, contents) in files {
            write(name, contents, 0o600);
        }
        if let Some(hba) = hba {
            write("pg_hba.conf", hba.as_bytes(), 0o600);
        }
        if !conf.is_empty() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .and_then(|mut file| file.write_all(format!("\n{conf}\n").as_bytes()))
                .expect("configuring the cluster");
        }
        let port = launch(&bin, run_as, &dir, &data);
        Cluster {
            bin,
            run_as,
            dir,
            port,
            watchdog,
        }
    }
}

/// A cluster of its own, for a test that stops and starts the server
/// (which would break every other test on the shared one). Started like the
/// shared cluster, always from the installed binaries (it needs control of
/// the server, so [`DATABASE_URL_VAR`] does not apply), and stopped and
/// deleted by its watchdog once it is dropped or the test process exits.
pub struct PrivateCluster {
    cluster: cluster::Cluster,
}

impl PrivateCluster {
    /// Creates and starts a cluster (a second or so: `initdb` and start).
    pub fn start() -> Self {
        Self {
            cluster: cluster::create(),
        }
    }

    /// The superuser URL of database `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.cluster.port
        )
    }

    /// The port the server listens on, the same after a restart.
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// Stops the server, ending every session (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        self.cluster.stop();
    }

    /// Starts the stopped server again on the same port, waiting until it
    /// accepts connections.
    pub fn start_again(&self) {
        self.cluster.start_again();
    }
}

impl fmt::Debug for PrivateCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateCluster")
            .field("dir", &self.cluster.dir)
            .field("port", &self.cluster.port)
            .finish()
    }
}

/// Clusters set up before their first start (TLS: a certificate and
/// `ssl = on`; their own `pg_hba.conf`).
impl PrivateCluster {
    /// Creates and starts a cluster of its own like [`PrivateCluster::start`],
    /// set up before its first start: each of `files` (name, contents)
    /// written into the data directory, owned by the server's user with
    /// mode 0600 (a certificate and its key, referred to by relative paths
    /// such as `ssl_cert_file = 'server.crt'`), `conf` appended to
    /// `postgresql.conf` (settings, one per line), and `hba`, when given, as
    /// the whole `pg_hba.conf`. The server listens on 127.0.0.1; its
    /// superuser `postgres` needs no password wherever `hba` says `trust`.
    pub fn start_configured(conf: &str, hba: Option<&str>, files: &[(&str, &[u8])]) -> Self {
        Self {
            cluster: cluster::create_configured(conf, hba, files),
        }
    }

    /// The cluster's directory, deleted with it: a place for files a test
    /// needs as long as the cluster lives (its data directory is `data`
    /// inside it).
    pub fn dir(&self) -> &Path {
        &self.cluster.dir
    }

    /// What the server has logged so far, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir.join("server.log")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::UrlTemplate;

    #[test]
    fn database_urls_replace_only_the_database() {
        let url = UrlTemplate::parse("postgres://u:p@h:5/admin?sslmode=disable");
        assert_eq!(
            url.for_database("x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(
            UrlTemplate::parse("postgresql://h").for_database("x"),
            "postgresql://h/x"
        );
        assert_eq!(
            UrlTemplate::parse("host=h user=u").for_database("x"),
            "host=h user=u dbname=x"
        );
    }
}
