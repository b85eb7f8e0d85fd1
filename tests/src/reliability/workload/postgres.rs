//! The workload on PostgreSQL: data tables, handlers (the store's atomic
//! and batched ones, plain ones on the application's own connection) and
//! the snapshot.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{BoxError, Error, MigrationContext, MigrationStore};
use waymark_postgres::PostgresStore;
use waymark_runner::{Handler, Runner};

use super::{
    ATOMIC, ATOMIC_LATE, BATCH, BATCHED, FLAKY, PAUSE, PLAIN, PLAIN_BATCH, PLAIN_BATCHED, Snapshot,
    Variant, batch_step, definition, flaky_failure,
};

/// The data tables, created once by the test before any helper runs
/// (concurrent `CREATE TABLE IF NOT EXISTS` can fail in PostgreSQL).
pub const SETUP: &str = "
    CREATE TABLE plain_log (migration BIGINT NOT NULL);
    CREATE TABLE atomic_log (seq BIGSERIAL, migration BIGINT NOT NULL, part TEXT NOT NULL);
    CREATE TABLE batch_items (item BIGINT NOT NULL, batch BIGINT NOT NULL);
    CREATE TABLE plain_items (item BIGINT PRIMARY KEY);
    CREATE TABLE plain_item_log (item BIGINT NOT NULL);";

/// The application state of the PostgreSQL workload: its own connection,
/// outside the store's pool, as an application's would be.
#[derive(Debug)]
pub struct PgApp {
    /// The application's connection.
    pub client: Client,
}

impl PgApp {
    /// Connects to `url`; the connection runs on the current runtime.
    pub async fn connect(url: &str) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { client })
    }
}

/// The runner of `variant` on `store`.
pub fn runner(
    store: &PostgresStore,
    variant: Variant,
) -> Result<Runner<PgApp, PostgresStore>, Error> {
    let mut builder = Runner::builder(store.clone()).lock_wait(Duration::from_secs(120));
    for &id in variant.ids() {
        builder = builder.migration(definition(id)?, handler(id));
    }
    builder.build()
}

fn handler(id: i64) -> Handler<PgApp, PostgresStore> {
    match id {
        PLAIN => Handler::async_fn(|ctx: MigrationContext<PgApp>| async move {
            log_plain(&ctx.state().client, ctx.id().get()).await
        }),
        ATOMIC | ATOMIC_LATE => Handler::<PgApp, PostgresStore>::atomic(|tx, ctx| {
            Box::pin(async move {
                let id = ctx.id().get();
                tx.execute(
                    "INSERT INTO atomic_log (migration, part) VALUES ($1, 'first')",
                    &[&id],
                )
                .await?;
                tokio::time::sleep(PAUSE).await;
                tx.execute(
                    "INSERT INTO atomic_log (migration, part) VALUES ($1, 'second')",
                    &[&id],
                )
                .await?;
                Ok::<(), BoxError>(())
            })
        }),
        BATCHED => Handler::<PgApp, PostgresStore>::batched(|tx, from, _ctx| {
            Box::pin(async move {
                let (after, last, step) = batch_step(from, BATCH)?;
                let batch = after / BATCH + 1;
                for item in after + 1..=last {
                    tx.execute("INSERT INTO batch_items VALUES ($1, $2)", &[&item, &batch])
                        .await?;
                    if item == after + 1 {
                        tokio::time::sleep(PAUSE).await;
                    }
                }
                Ok::<_, BoxError>(step)
            })
        }),
        PLAIN_BATCHED => Handler::resumable(|app: std::sync::Arc<PgApp>, from| async move {
            let (after, last, step) = batch_step(from.as_deref(), PLAIN_BATCH)?;
            // One statement, so the upserts and their log commit together.
            app.client
                .execute(
                    "WITH items AS (SELECT generate_series($1::BIGINT + 1, $2::BIGINT) AS item), \
                          upserted AS (INSERT INTO plain_items SELECT item FROM items \
                                       ON CONFLICT DO NOTHING) \
                     INSERT INTO plain_item_log SELECT item FROM items",
                    &[&after, &last],
                )
                .await?;
            tokio::time::sleep(PAUSE).await;
            Ok::<_, BoxError>(step)
        }),
        _ => Handler::async_fn(|ctx: MigrationContext<PgApp>| async move {
            if let Some(failure) = flaky_failure(ctx.migration().attempts) {
                return Err(failure);
            }
            log_plain(&ctx.state().client, FLAKY).await?;
            Ok::<(), BoxError>(())
        }),
    }
}

async fn log_plain(client: &Client, id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("INSERT INTO plain_log VALUES ($1)", &[&id])
        .await
        .map(drop)
}

/// What the workload left in the database; `store` reads the tracking
/// table, `admin` (a session of the test) the data tables.
pub async fn snapshot(store: &PostgresStore, admin: &Client) -> Result<Snapshot, String> {
    let table = format!("{}.{}", store.schema(), store.table());
    let tracked: bool = admin
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let rows = if tracked {
        store.list().await.map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let data = read_data(admin)
        .await
        .map_err(|e| format!("reading the data tables: {e}"))?;
    Ok(Snapshot::new(&rows, data))
}

async fn read_data(admin: &Client) -> Result<Snapshot, tokio_postgres::Error> {
    let mut data = Snapshot::default();
    for row in admin
        .query(
            "SELECT migration, count(*) FROM plain_log GROUP BY migration",
            &[],
        )
        .await?
    {
        data.plain_log.insert(row.get(0), row.get(1));
    }
    for row in admin
        .query("SELECT migration, part FROM atomic_log ORDER BY seq", &[])
        .await?
    {
        data.atomic_log
            .entry(row.get(0))
            .or_default()
            .push(row.get(1));
    }
    let numbers = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|row| row.get(0)).collect();
    data.batch_items = numbers(
        admin
            .query("SELECT item FROM batch_items ORDER BY item", &[])
            .await?,
    );
    data.plain_items = numbers(
        admin
            .query("SELECT item FROM plain_items ORDER BY item", &[])
            .await?,
    );
    data.plain_item_applications = admin
        .query_one("SELECT count(*) FROM plain_item_log", &[])
        .await?
        .get(0);
    Ok(data)
}

/// Whether both locks of `store` are free right now: taken without any
/// wait (`pg_try_advisory_lock`), then released.
pub async fn lock_is_free(store: &PostgresStore) -> Result<(), Error> {
    for scope in [LockScope::Run, LockScope::Background] {
        store
            .lock(&LockRequest::new(scope, Duration::ZERO))
            .await
            .map(drop)?;
    }
    Ok(())
}
