//! Where a waymark run spends its time: each store call of a run, timed
//! alone, on SQLite and PostgreSQL, at N pending migrations (`BREAKDOWN_N`,
//! default 20). `cargo run --release -p waymark-bench --example breakdown`

use std::time::{Duration, Instant};

use waymark_bench::BoxError;
use waymark_bench::noop::{definitions, register};
use waymark_bench::pending::{postgres_runner, sqlite_database, sqlite_runner};
use waymark_core::{MigrationDef, MigrationStore};

async fn step<T>(name: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    println!("  {name:<28} {:>9.1} µs", t.elapsed().as_secs_f64() * 1e6);
    out
}

async fn phases(store: &dyn MigrationStore, n: usize) -> Result<(), BoxError> {
    let defs = definitions(n)?;
    let fp = MigrationDef::fingerprint(&defs);
    step("set_state", store.set_state(&fp)).await?;
    step("prepare", store.prepare()).await?;
    step("register", store.register(&defs)).await?;
    step("pending", store.pending()).await?;
    step("list", store.list()).await?;
    let guard = step(
        "lock",
        store.lock(&waymark_core::store::LockRequest::new(
            waymark_core::store::LockScope::Run,
            Duration::from_secs(5),
        )),
    )
    .await?;
    step("pending (locked)", store.pending()).await?;
    step(
        "record_success 1",
        store.record_success(waymark_core::MigrationId::new(1)?),
    )
    .await?;
    step(
        "record_success 2",
        store.record_success(waymark_core::MigrationId::new(2)?),
    )
    .await?;
    step("drop lock", async { drop(guard) }).await;
    step("pending", store.pending()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n = std::env::var("BREAKDOWN_N").map_or(Ok(20), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    println!("sqlite phases");
    let store = sqlite_database(&dir.path().join("a.db"), n).await?;
    phases(&store, n).await?;
    println!("sqlite run of {n}");
    let store = sqlite_database(&dir.path().join("b.db"), n).await?;
    let runner = sqlite_runner(&store, n)?;
    step("run", runner.run(())).await?;

    let db = waymark_tests::pg::fresh_database().await;
    let store = db.store().await;
    register(&store, n).await?;
    db.admin().await.batch_execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)").await?;
    println!("postgres phases");
    phases(&store, n).await?;
    let db = waymark_tests::pg::fresh_database().await;
    let store = db.store().await;
    register(&store, n).await?;
    db.admin().await.batch_execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)").await?;
    println!("postgres run of {n}");
    let runner = postgres_runner(&store, n)?;
    step("run", runner.run(())).await?;
    Ok(())
}
