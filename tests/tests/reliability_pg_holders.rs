//! Lock holders under faults, with separate processes (`pg_helper`): a
//! holder whose lock session is terminated while it runs an atomic
//! migration, and a holder whose network is silently cut off.
//!
//! Each is a case of docs/reliability.md ("Replicas and lock holders under
//! faults").

use std::process::Command;
use std::time::{Duration, Instant};

use waymark_core::store::advisory::DeadHolderBound;
use waymark_core::{BoxError, MigrationDef};
use waymark_postgres::{PostgresConfig, PostgresStore};
use waymark_runner::{Runner, Status};
use waymark_tests::pg::{PrivateCluster, TestDatabase, fresh_database};
use waymark_tests::sqlite::Helper;

const HELPER: &str = env!("CARGO_BIN_EXE_pg_helper");

/// A guard against hanging, not a measurement.
const LIMIT: Duration = Duration::from_secs(90);

/// What one helper's run reported, as it printed it.
#[derive(Debug, PartialEq, Eq)]
struct Reported {
    executed: bool,
    already_done: bool,
}

fn reported(lines: &[String], ok: bool) -> Reported {
    assert!(ok, "the helper failed: {lines:?}");
    let report = lines
        .iter()
        .find(|line| line.starts_with("report "))
        .unwrap_or_else(|| panic!("no report in {lines:?}"));
    assert!(report.ends_with("failed=[]"), "{report}");
    let reported = Reported {
        executed: report.contains(" executed=[1]"),
        already_done: report.contains("already_done=[1]"),
    };
    // The events say the same as the report.
    let heard = Reported {
        executed: lines.iter().any(|line| line == "event executed 1"),
        already_done: lines.iter().any(|line| line == "event already_done 1"),
    };
    assert_eq!(heard, reported, "events and report agree: {lines:?}");
    reported
}

async fn effects(db: &TestDatabase) -> Vec<i64> {
    effects_of(&db.admin().await).await
}

/// Terminates the session holding the run lock (the only advisory lock).
async fn terminate_lock_session(db: &TestDatabase) {
    let held: Vec<_> = db
        .advisory_locks()
        .await
        .into_iter()
        .filter(|lock| lock.granted)
        .collect();
    assert_eq!(held.len(), 1, "one lock, the holder's: {held:?}");
    assert!(db.terminate(held[0].pid).await, "terminated {held:?}");
}

/// The lock holder's session is terminated while its atomic migration
/// sleeps in its transaction; a second replica takes the lock and runs the
/// same migration. Whichever commits first executed it; the other's
/// bookkeeping is refused, its changes roll back, and its report says
/// "already done": exactly one report across both runs says executed, and
/// its process is the one whose effect is in the table. Both orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_terminated_lock_session_exactly_one_report_says_executed() {
    // (holder's sleep, replica's sleep): the replica commits first, then
    // the holder does.
    for (holder_sleep, replica_sleep, replica_wins) in
        [("4000", "200", true), ("1500", "4000", false)]
    {
        let db = fresh_database().await;
        db.admin()
            .await
            .batch_execute("CREATE TABLE effects (pid BIGINT NOT NULL)")
            .await
            .unwrap();
        let mut holder = Helper::spawn(HELPER, ["slow-atomic", db.url(), holder_sleep]);
        holder.wait_for("running", LIMIT);
        terminate_lock_session(&db).await;
        let mut replica = Helper::spawn(HELPER, ["slow-atomic", db.url(), replica_sleep]);
        replica.wait_for("running", LIMIT);
        let (holder_pid, replica_pid) = (holder.pid(), replica.pid());
        let (holder_lines, holder_ok) = holder.finish(LIMIT);
        let (replica_lines, replica_ok) = replica.finish(LIMIT);
        let (by_holder, by_replica) = (
            reported(&holder_lines, holder_ok),
            reported(&replica_lines, replica_ok),
        );
        let winner = if replica_wins {
            replica_pid
        } else {
            holder_pid
        };
        assert_eq!(
            effects(&db).await,
            [i64::from(winner)],
            "applied once, by the run that committed first"
        );
        let expect = |won: bool| Reported {
            executed: won,
            already_done: !won,
        };
        assert_eq!(by_replica, expect(replica_wins), "{replica_lines:?}");
        assert_eq!(by_holder, expect(!replica_wins), "{holder_lines:?}");
        let row = db.store().await;
        let row =
            waymark_core::MigrationStore::get(&row, waymark_core::MigrationId::new(1).unwrap())
                .await
                .unwrap();
        assert!(row.executed);
        assert_eq!(row.attempts, 1, "one success counted");
    }
}

/// A network namespace joined to this one by a veth pair: a process run
/// inside it reaches the server through the pair, and taking the pair's
/// inner end down drops its traffic silently (no FIN, no RST, no ICMP), as
/// a host that dies or is partitioned away does. Deleted on drop.
struct CutOffHost {
    namespace: String,
    inner: String,
    outer_address: &'static str,
}

impl CutOffHost {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let host = Self {
            namespace: format!("wm-cut-{tag}"),
            inner: format!("wmi{tag}"),
            outer_address: "10.213.77.1",
        };
        let outer = format!("wmo{tag}");
        let ns = host.namespace.as_str();
        ip(&["netns", "add", ns]);
        ip(&[
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &host.inner,
            "netns",
            ns,
        ]);
        ip(&["addr", "add", "10.213.77.1/30", "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            "10.213.77.2/30",
            "dev",
            &host.inner,
        ]);
        ip(&["-n", ns, "link", "set", &host.inner, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        host
    }

    /// Drops every packet from now on, in both directions.
    fn cut(&self) {
        ip(&["-n", &self.namespace, "link", "set", &self.inner, "down"]);
    }

    /// `ip netns exec <namespace> <program> <args>`, as a [`Helper`].
    fn spawn(&self, program: &str, args: &[&str]) -> Helper {
        let mut all = vec!["netns", "exec", self.namespace.as_str(), program];
        all.extend_from_slice(args);
        Helper::spawn("ip", all)
    }
}

impl Drop for CutOffHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes both ends of the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (the test needs iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {} (this test needs root, as CI runs it, to make a network namespace)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A replica on another host holds the run lock and its network vanishes
/// without a word. The server keeps its session, and the lock, no longer
/// than the holder's dead-holder bound (its own keepalives, with the
/// server's defaults left as they are: two hours), and a fresh replica then
/// runs the migration. The holder's own transaction, cut off before its
/// commit, leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_silently_loses_the_lock_within_the_bound() {
    let cluster = PrivateCluster::start_configured(
        "listen_addresses = '*'",
        Some("local all all trust\nhost all all 0.0.0.0/0 trust\n"),
        &[],
    );
    let url = cluster.url("postgres");
    let admin = waymark_tests::pg::connect_url(&url).await;
    admin
        .batch_execute("CREATE TABLE effects (pid BIGINT NOT NULL)")
        .await
        .unwrap();
    // The server is left as installed: no keepalive setting of its own, so
    // a silent peer is only noticed after the system's two hours.
    let idle: String = admin
        .query_one(
            "SELECT reset_val FROM pg_settings WHERE name = 'tcp_keepalives_idle'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle, "0", "the server uses the system's default (7200 s)");

    let host = CutOffHost::create();
    let bound = DeadHolderBound::new(Duration::from_secs(4)).unwrap();
    let remote = format!(
        "postgres://postgres@{}:{}/postgres",
        host.outer_address,
        cluster.port()
    );
    let mut holder = host.spawn(HELPER, &["slow-atomic", &remote, "600000", "4"]);
    holder.wait_for("running", LIMIT);
    host.cut();
    let cut = Instant::now();

    let store = PostgresStore::connect_with(PostgresConfig::new(&url))
        .await
        .unwrap();
    let def = MigrationDef::new(1, "slow_recount", "inserts a row without a unique key").unwrap();
    let runner = Runner::<(), PostgresStore>::builder(store)
        .lock_wait(Duration::from_secs(60))
        .atomic(def, |tx, _ctx| {
            Box::pin(async move {
                tx.execute("INSERT INTO effects (pid) VALUES (0)", &[])
                    .await?;
                Ok::<(), BoxError>(())
            })
        })
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap().into_report();
    let took = cut.elapsed();
    let outcome = report.outcome(waymark_core::MigrationId::new(1).unwrap());
    assert!(
        matches!(outcome.map(|o| &o.status), Some(Status::Executed)),
        "{report:?}"
    );
    // The documented bound, with room for scheduling on a busy machine.
    let allowed = bound.worst_case() + Duration::from_secs(5);
    assert!(
        took <= allowed,
        "the lock was freed {took:?} after the cut (bound {:?})",
        bound.worst_case()
    );
    assert_eq!(
        effects_of(&admin).await,
        [0],
        "only the fresh replica's effect"
    );
    holder.kill();
}

async fn effects_of(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query("SELECT pid FROM effects", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}
