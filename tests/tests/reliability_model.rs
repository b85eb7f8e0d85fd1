//! Fuzz it: random sequences of store operations, invalid ids and names
//! included, run against MemoryStore (the model) and against SqliteStore
//! and PostgresStore, must give identical results and identical error
//! variants. Rows are compared whole except `executed_at`, compared by
//! presence. 500 cases per backend by default ([`CASES_VAR`] for more),
//! shrunk to a minimal sequence on failure; the seed is printed.
//!
//! One database per backend serves every case: rows are deleted between
//! cases, which is what keeps 500 cases fast.
//!
//! Text with NUL characters is not generated: PostgreSQL cannot store it
//! and refuses it with `Error::Invalid` (see `postgres_store.rs`,
//! `text_postgres_cannot_store_is_refused_by_field`), a documented
//! difference from the other backends.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use tokio::runtime::Runtime;
use waymark_core::{MemoryStore, MigrationStore};
use waymark_tests::reliability::knobs::{self, CASES_VAR};
use waymark_tests::reliability::model::{Op, RawDef, Session};

/// Cases per backend in the default run.
const DEFAULT_CASES: u64 = 500;

#[test]
fn sqlite_store_behaves_like_the_memory_store() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.db");
    let store = runtime.block_on(async {
        let store = waymark_sqlite::SqliteStore::open(&path).await.unwrap();
        store.prepare().await.unwrap();
        store
    });
    let raw = waymark_tests::sqlite::raw(&path);
    compare("model_sqlite", &runtime, &store, || {
        raw.execute_batch("DELETE FROM migrations; DELETE FROM migrations_fingerprints;")
            .expect("emptying the SQLite tables");
    });
}

#[test]
fn postgres_store_behaves_like_the_memory_store() {
    let runtime = runtime();
    let (db, store, admin) = runtime.block_on(async {
        let db = waymark_tests::pg::fresh_database().await;
        let store = db.store().await;
        store.prepare().await.unwrap();
        let admin = db.admin().await;
        (db, store, admin)
    });
    compare("model_postgres", &runtime, &store, || {
        runtime
            .block_on(
                admin.batch_execute("DELETE FROM migrations; DELETE FROM migrations_fingerprints;"),
            )
            .expect("emptying the PostgreSQL tables");
    });
    drop(db);
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the generated cases on `store` and on a fresh MemoryStore each,
/// `reset` emptying `store` before each case.
fn compare(name: &str, runtime: &Runtime, store: &dyn MigrationStore, reset: impl Fn()) {
    let seed = knobs::seed(name);
    let cases = knobs::knob(CASES_VAR, DEFAULT_CASES) as u32;
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&operations(), |ops| {
        reset();
        let model = Arc::new(MemoryStore::new());
        let (expected, actual) = runtime.block_on(async {
            model.prepare().await.unwrap();
            let expected = Session::new(&*model).apply_all(&ops).await;
            let mut session = Session::new(store);
            let actual = session.apply_all(&ops).await;
            session.release();
            (expected, actual)
        });
        for (index, (want, got)) in expected.iter().zip(&actual).enumerate() {
            if want != got {
                let op = ops
                    .get(index)
                    .map_or("the final list".to_owned(), |op| format!("{op:?}"));
                return Err(TestCaseError::fail(format!(
                    "step {index} ({op}): the model gave {want:?}, the store {got:?}"
                )));
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => knobs::announce(format_args!(
            "{name}: seed {seed}: {cases} cases, identical to the model"
        )),
        Err(TestError::Fail(why, ops)) => {
            panic!("{name} (seed {seed}): {why}\nminimal failing sequence: {ops:#?}")
        }
        Err(other) => panic!("{name} (seed {seed}): {other}"),
    }
}

/// Sequences of 1 to 24 operations.
fn operations() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(operation(), 1..=24)
}

fn operation() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Prepare),
        6 => definitions().prop_map(Op::Register),
        2 => Just(Op::List),
        2 => Just(Op::Pending),
        3 => id().prop_map(Op::Get),
        3 => id().prop_map(Op::MarkExecuted),
        3 => id().prop_map(Op::RecordSuccess),
        3 => id().prop_map(Op::MarkPending),
        3 => (id(), text()).prop_map(|(id, text)| Op::RecordFailure(id, text)),
        3 => (id(), text()).prop_map(|(id, text)| Op::SaveCheckpoint(id, text)),
        2 => definitions().prop_map(Op::SetState),
        2 => Just(Op::Lock),
        2 => Just(Op::Unlock),
    ]
}

/// Mostly ids that get registered (1 to 5), some never registered (6 to
/// 9), some invalid (zero and below).
fn id() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1..=5_i64, 2 => 6..=9_i64, 1 => -2..=0_i64]
}

/// Zero to four definitions; ids repeat often, with the same name or
/// another, so conflicts come up.
fn definitions() -> impl Strategy<Value = Vec<RawDef>> {
    let def = (
        prop_oneof![12 => 1..=5_i64, 1 => -1..=0_i64],
        name(),
        description(),
    )
        .prop_map(|(id, name, description)| RawDef {
            id,
            name,
            description,
        });
    prop::collection::vec(def, 0..=4)
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "a",
            "b",
            "fill_pace",
            "é",
            "名前",
            "x'); DROP TABLE migrations; --",
        ])
        .prop_map(str::to_owned),
        1 => Just("é".repeat(250)),
        1 => Just(String::new()),
        1 => Just("n".repeat(251)),
    ]
}

fn description() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["", "d", "Derive pace; it's \"fast\""]).prop_map(str::to_owned),
        1 => Just("ü".repeat(2500)),
        1 => Just("d".repeat(2501)),
    ]
}

/// Checkpoints and error texts, from empty to 3000 characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["", "0", "12", "ünïcødé ✓", "'; DROP TABLE x; --"])
            .prop_map(str::to_owned),
        1 => Just("x".repeat(3000)),
    ]
}
