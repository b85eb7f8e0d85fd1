//! When each of 32 PostgreSQL runners starting together reaches each step:
//! a timeline of a contended start, to see where its wall time goes.
//! `cargo run --release -p waymark-bench --example contended_timeline`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use waymark_bench::BoxError;
use waymark_bench::noop::{definitions, register};
use waymark_core::BoxError as CoreBoxError;
use waymark_runner::{RunEvent, Runner};

type Marks = Arc<Mutex<Vec<(Duration, usize, String)>>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(32);
    for round in 0..3 {
        let db = waymark_tests::pg::fresh_database().await;
        let setup = db.store().await;
        register(&setup, 10).await?;
        db.admin().await.batch_execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)").await?;
        let t0 = Arc::new(Mutex::new(Instant::now()));
        let marks: Marks = Arc::default();
        let mut runners = Vec::new();
        for i in 0..k {
            let store = db.store().await;
            waymark_core::MigrationStore::list(&store).await?;
            let mut builder = Runner::<(), _>::builder(store.clone());
            let (m, t) = (Arc::clone(&marks), Arc::clone(&t0));
            builder = builder.observer(move |e: &RunEvent| {
                let what = match e {
                    RunEvent::LockAcquired { .. } => "lock",
                    RunEvent::AlreadyDone { id, .. } if id.get() == 1 => "already-done",
                    RunEvent::Succeeded { id, .. } if id.get() == 10 => "last-done",
                    _ => return,
                };
                let at = t.lock().unwrap().elapsed();
                m.lock().unwrap().push((at, i, what.to_owned()));
            });
            for def in definitions(10)? {
                builder = builder.atomic(def, |tx, _| {
                    Box::pin(async move {
                        tx.execute("UPDATE counter SET n = n + 1", &[]).await?;
                        Ok::<(), CoreBoxError>(())
                    })
                });
            }
            runners.push(builder.build()?);
        }
        let barrier = Arc::new(Barrier::new(k + 1));
        let tasks: Vec<_> = runners
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let (b, m, t) = (Arc::clone(&barrier), Arc::clone(&marks), Arc::clone(&t0));
                tokio::spawn(async move {
                    b.wait().await;
                    let rep = r.run(()).await;
                    let at = t.lock().unwrap().elapsed();
                    m.lock().unwrap().push((at, i, "returned".into()));
                    rep.map(|_| ())
                })
            })
            .collect();
        *t0.lock().unwrap() = Instant::now();
        barrier.wait().await;
        for t in tasks {
            t.await??;
        }
        let mut marks = marks.lock().unwrap().clone();
        marks.sort();
        println!("round {round}:");
        let show = |label: &str, f: &dyn Fn(&(Duration, usize, String)) -> bool| {
            let v: Vec<_> = marks.iter().filter(|m| f(m)).collect();
            if let (Some(a), Some(b)) = (v.first(), v.last()) {
                println!(
                    "  {label:<14} n={:>2} first {:>6.1} ms last {:>6.1} ms",
                    v.len(),
                    a.0.as_secs_f64() * 1e3,
                    b.0.as_secs_f64() * 1e3
                );
            }
        };
        show("lock", &|m| m.2 == "lock");
        show("last-done", &|m| m.2 == "last-done");
        show("already-done", &|m| m.2 == "already-done");
        show("returned", &|m| m.2 == "returned");
    }
    Ok(())
}
