//! The fixed cost of a waymark run around a PostgreSQL backfill: the same
//! runner as the benchmark's, on a table of zero streams (one empty batch),
//! against the hand-written loop on the same empty table.
//! `cargo run --release -p waymark-bench --example backfill_fixed_cost`

use std::time::Instant;

use waymark_bench::BoxError;
use waymark_bench::backfill::{pg_hand_loop, pg_runner};
use waymark_core::MigrationStore;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = waymark_tests::pg::fresh_database().await;
    let mut client = db.admin().await;
    waymark_bench::hr::postgres::seed(&client, 0, 1_000).await?;
    client
        .batch_execute("CREATE TABLE backfill_progress (job TEXT PRIMARY KEY, checkpoint TEXT, done INTEGER NOT NULL DEFAULT 0)")
        .await?;
    let store = db.store().await;
    store.prepare().await?;
    let (mut w, mut h) = (Vec::new(), Vec::new());
    for run in 1..=15 {
        let (runner, _) = pg_runner(&store, run, 500).await?;
        let t = Instant::now();
        runner.run(()).await?;
        w.push(t.elapsed());
        let t = Instant::now();
        pg_hand_loop(&mut client, &format!("r{run}"), 500).await?;
        h.push(t.elapsed());
    }
    w.sort();
    h.sort();
    println!(
        "empty backfill: waymark run median {:?}, hand loop median {:?}",
        w[7], h[7]
    );
    Ok(())
}
