//! 32 stores each making the same store call at once: how long until all
//! have answered, per call. Shows what a contended start costs before the lock.
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;
use waymark_bench::BoxError;
use waymark_bench::noop::{definitions, register};
use waymark_core::{MigrationDef, MigrationStore};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(32);
    let db = waymark_tests::pg::fresh_database().await;
    let setup = db.store().await;
    register(&setup, 10).await?;
    let mut stores = Vec::new();
    for _ in 0..k {
        let s = db.store().await;
        s.list().await?;
        stores.push(Arc::new(s));
    }
    let defs = Arc::new(definitions(10)?);
    for call in [
        "is_settled",
        "prepare",
        "register",
        "pending",
        "list",
        "is_settled",
        "prepare",
        "register",
    ] {
        let barrier = Arc::new(Barrier::new(k + 1));
        let tasks: Vec<_> = stores
            .iter()
            .map(|s| {
                let (s, b, defs) = (Arc::clone(s), Arc::clone(&barrier), Arc::clone(&defs));
                tokio::spawn(async move {
                    b.wait().await;
                    let t = Instant::now();
                    match call {
                        "is_settled" => {
                            s.is_settled(&MigrationDef::fingerprint(&defs)).await?;
                        }
                        "prepare" => s.prepare().await?,
                        "register" => s.register(&defs).await?,
                        "pending" => {
                            s.pending().await?;
                        }
                        _ => {
                            s.list().await?;
                        }
                    }
                    Ok::<_, waymark_core::Error>(t.elapsed())
                })
            })
            .collect();
        let t = Instant::now();
        barrier.wait().await;
        let mut each = Vec::new();
        for task in tasks {
            each.push(task.await??);
        }
        each.sort();
        println!(
            "{call:<11} all {k} done in {:>6.2} ms; one call median {:>6.2} ms",
            t.elapsed().as_secs_f64() * 1e3,
            each[k / 2].as_secs_f64() * 1e3
        );
    }
    Ok(())
}
