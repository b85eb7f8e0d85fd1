//! PostgreSQL over TLS (waymark-postgres' feature `tls`): a throwaway
//! cluster of this test's own with `ssl = on` and a certificate for
//! `localhost` signed by a certificate authority the test makes (with the
//! `openssl` command), which admits TLS sessions only (`hostssl`).
//!
//! Every `sslmode` is tried in both forms of a connection string (URL and
//! libpq `key=value`): `require` and `prefer` use TLS, `verify-full`
//! accepts `localhost` and refuses `127.0.0.1` (not in the certificate),
//! `verify-ca` accepts `127.0.0.1`, a certificate of another authority is
//! refused, `disable` is turned away by the server; the lock's session and
//! cancel requests go over TLS too; and no error shows the password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use waymark_core::store::{AtomicError, AtomicStore, LockRequest, LockScope};
use waymark_core::{
    BoxError, CancellationToken, Error, MigrationDef, MigrationId, MigrationStore, error_chain,
};
use waymark_postgres::{PostgresConfig, PostgresStore};
use waymark_tests::pg::{PrivateCluster, atomic_fn, context_with};

/// The password of the role the tests connect as (SCRAM): it must appear
/// in no error.
const PASSWORD: &str = "tls-s3cret-pw";
const USER: &str = "app";

/// The TLS cluster every test of this file shares, and its files.
struct Tls {
    cluster: PrivateCluster,
    /// The authority that signed the server's certificate (PEM).
    ca: PathBuf,
    /// Another authority, which signed nothing the server has.
    other_ca: PathBuf,
}

static TLS: OnceLock<Tls> = OnceLock::new();

fn tls() -> &'static Tls {
    TLS.get_or_init(start)
}

/// Makes the certificates, starts the cluster with them, then creates the
/// role and its database (over TLS: nothing else gets in).
fn start() -> Tls {
    let work = tempfile::tempdir().expect("a directory for the certificates");
    let certs = make_certificates(work.path());
    let conf = "ssl = on\n\
                ssl_cert_file = 'server.crt'\n\
                ssl_key_file = 'server.key'\n\
                password_encryption = 'scram-sha-256'";
    // TLS sessions only: the superuser without a password, everyone else
    // with SCRAM (so that channel binding can be asked for).
    let hba = "hostssl all postgres 127.0.0.1/32 trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n";
    let cluster = PrivateCluster::start_configured(
        conf,
        Some(hba),
        &[
            ("server.crt", &certs.server_cert),
            ("server.key", &certs.server_key),
        ],
    );
    // Beside the cluster, so they go when it goes.
    let ca = cluster.dir().join("ca.pem");
    let other_ca = cluster.dir().join("other-ca.pem");
    std::fs::write(&ca, &certs.ca_cert).unwrap();
    std::fs::write(&other_ca, &certs.other_ca_cert).unwrap();
    let admin_url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        cluster.port()
    );
    // A runtime of its own: this runs inside whichever test comes first.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin = PostgresStore::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("the superuser over TLS: {}", error_chain(&e)));
            let client = admin.pool().get().await.unwrap();
            // Two calls: CREATE DATABASE runs outside any transaction.
            for sql in [
                format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
                format!("CREATE DATABASE {USER} OWNER {USER}"),
            ] {
                client.batch_execute(&sql).await.unwrap();
            }
        });
    })
    .join()
    .expect("creating the test role");
    Tls {
        cluster,
        ca,
        other_ca,
    }
}

struct Certificates {
    ca_cert: Vec<u8>,
    other_ca_cert: Vec<u8>,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
}

/// A certificate authority, a server certificate it signs for `localhost`
/// (a DNS name only: no IP address), and an unrelated authority; P-256
/// keys, valid for two days.
fn make_certificates(dir: &Path) -> Certificates {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "the TLS tests make their certificates with the `openssl` command, which \
                     could not be run ({e}): install the Debian package `openssl`"
                )
            });
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let new_ca = |name: &str, subject: &str| {
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    };
    new_ca("ca", "/CN=waymark test CA");
    new_ca("other-ca", "/CN=waymark unrelated CA");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "1001",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    Certificates {
        ca_cert: read("ca.crt"),
        other_ca_cert: read("other-ca.crt"),
        server_cert: read("server.crt"),
        server_key: read("server.key"),
    }
}

/// The two forms of one connection: a URL and libpq key=value pairs,
/// with `params` (`sslmode=…`, `sslrootcert=…`) in each.
fn both_forms(host: &str, params: &[(&str, &str)]) -> [String; 2] {
    let port = tls().cluster.port();
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F")))
        .collect();
    let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
    let url = if query.is_empty() {
        format!("postgres://{USER}:{PASSWORD}@{host}:{port}/{USER}")
    } else {
        format!(
            "postgres://{USER}:{PASSWORD}@{host}:{port}/{USER}?{}",
            query.join("&")
        )
    };
    let key_value = format!(
        "host={host} port={port} user={USER} password={PASSWORD} dbname={USER} {}",
        pairs.join(" ")
    );
    [url, key_value]
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn all_text(err: &Error) -> String {
    format!("{err}\n{err:?}\n{}", error_chain(err))
}

/// Connects, and fails the test with the server's log if that fails.
async fn connect(url: &str) -> PostgresStore {
    connect_with(PostgresConfig::new(url)).await
}

/// [`connect`] with settings of the test's own (a schema of its own, for
/// tests that write).
async fn connect_with(config: PostgresConfig) -> PostgresStore {
    let url = format!("{config:?}");
    match PostgresStore::connect_with(config.connect_timeout(secs(10))).await {
        Ok(store) => store,
        Err(e) => panic!(
            "connecting with {url}: {}\nserver log:\n{}",
            error_chain(&e),
            tls().cluster.log()
        ),
    }
}

/// What connecting fails with; fails the test if it succeeds or if the
/// error shows the password.
async fn refused(url: &str) -> Error {
    match PostgresStore::connect_with(PostgresConfig::new(url).connect_timeout(secs(10))).await {
        Ok(_) => panic!("{} connected", url.replace(PASSWORD, "***")),
        Err(err) => {
            let text = all_text(&err);
            assert!(!text.contains(PASSWORD), "the password shows: {text}");
            assert!(!text.contains("s3cret"), "the password shows: {text}");
            err
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Whether the store's pooled session is a TLS one, as the server sees it.
async fn session_is_tls(store: &PostgresStore) -> bool {
    let client = store.pool().get().await.unwrap();
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn require_uses_tls_without_checking_the_certificate() {
    for url in both_forms("127.0.0.1", &[("sslmode", "require")]) {
        let store = connect(&url).await;
        assert!(session_is_tls(&store).await, "{url}");
    }
    // A name the certificate does not have: require checks nothing.
    for url in both_forms("localhost", &[("sslmode", "require")]) {
        assert!(session_is_tls(&connect(&url).await).await);
    }
}

#[tokio::test]
async fn verify_full_accepts_the_certificate_s_host_name() {
    let ca = &tls().ca;
    for url in both_forms(
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", path(ca))],
    ) {
        let store = connect(&url).await;
        assert!(session_is_tls(&store).await, "{url}");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    let ca = &tls().ca;
    for url in both_forms(
        "127.0.0.1",
        &[("sslmode", "verify-full"), ("sslrootcert", path(ca))],
    ) {
        let err = refused(&url).await;
        assert!(matches!(err, Error::Store { .. }), "{err:?}");
        let text = error_chain(&err);
        assert!(
            text.contains("certificate does not match the host name \"127.0.0.1\""),
            "{text}"
        );
        assert!(text.contains("sslmode=verify-full"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
    }
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let ca = &tls().ca;
    for url in both_forms(
        "127.0.0.1",
        &[("sslmode", "verify-ca"), ("sslrootcert", path(ca))],
    ) {
        let store = connect(&url).await;
        assert!(session_is_tls(&store).await, "{url}");
    }
}

#[tokio::test]
async fn a_certificate_of_another_authority_is_refused() {
    let other = &tls().other_ca;
    // require with an sslrootcert checks the chain too, as libpq does.
    for mode in ["verify-full", "verify-ca", "require"] {
        for url in both_forms(
            "localhost",
            &[("sslmode", mode), ("sslrootcert", path(other))],
        ) {
            let err = refused(&url).await;
            let text = error_chain(&err);
            assert!(
                text.contains("certificate is not signed by a trusted root"),
                "{mode}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_root_file_is_invalid_before_connecting() {
    for url in both_forms(
        "localhost",
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", "/nonexistent/waymark/ca.pem"),
        ],
    ) {
        let err = refused(&url).await;
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "sslrootcert",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("/nonexistent/waymark/ca.pem"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn disable_is_turned_away_by_a_server_that_requires_tls() {
    for url in both_forms("127.0.0.1", &[("sslmode", "disable")]) {
        let err = refused(&url).await;
        assert!(matches!(err, Error::Store { .. }), "{err:?}");
        let text = error_chain(&err);
        // The server's own words: no hostssl line admits a plain session.
        assert!(text.contains("pg_hba.conf"), "{text}");
        assert!(text.contains("no encryption"), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{}", tls().cluster.port())),
            "{text}"
        );
    }
}

#[tokio::test]
async fn prefer_uses_tls_when_the_server_offers_it() {
    let [url, key_value] = both_forms("127.0.0.1", &[("sslmode", "prefer")]);
    for url in [url, key_value] {
        assert!(session_is_tls(&connect(&url).await).await, "{url}");
    }
    // prefer is the default.
    for url in both_forms("localhost", &[]) {
        assert!(session_is_tls(&connect(&url).await).await, "{url}");
    }
}

#[tokio::test]
async fn prefer_falls_back_to_plain_tcp_and_require_refuses_a_server_without_tls() {
    let plain = PrivateCluster::start();
    let url = |mode: &str| {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres?sslmode={mode}",
            plain.port()
        )
    };
    let store = connect(&url("prefer")).await;
    assert!(!session_is_tls(&store).await);
    let err = refused(&url("require")).await;
    let text = error_chain(&err);
    assert!(text.contains("server does not support TLS"), "{text}");
}

#[tokio::test]
async fn channel_binding_goes_with_the_tls_session() {
    // SCRAM-SHA-256-PLUS: the server checks the hash of its certificate
    // that the client sends, so this connects only if ours is right.
    let ca = &tls().ca;
    for url in both_forms(
        "localhost",
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", path(ca)),
            ("channel_binding", "require"),
        ],
    ) {
        let store = connect(&url).await;
        assert!(session_is_tls(&store).await, "{url}");
    }
}

#[tokio::test]
async fn the_lock_s_session_is_a_tls_session() {
    let ca = &tls().ca;
    let [url, _] = both_forms(
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", path(ca))],
    );
    let store = connect_with(
        // The TLS tests share one database: each its own schema, on purpose.
        PostgresConfig::new(&url)
            .schema("lock_over_tls")
            .allow_second_table(true),
    )
    .await;
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "over_tls", "").unwrap()])
        .await
        .unwrap();
    let _guard = store
        .lock(&LockRequest::new(LockScope::Run, secs(5)))
        .await
        .unwrap();
    let client = store.pool().get().await.unwrap();
    let holders: Vec<bool> = client
        .query(
            "SELECT s.ssl FROM pg_locks l JOIN pg_stat_ssl s ON s.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND ((l.classid::BIGINT << 32) | l.objid::BIGINT) = $1",
            &[&store.lock_key()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(holders, [true]);
    assert_eq!(store.pending().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_cancelled_statement_is_cancelled_over_tls() {
    // The server admits TLS sessions only; a cancel request that failed
    // would leave the statement sleeping for a minute.
    let ca = &tls().ca;
    let [_, key_value] = both_forms(
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", path(ca))],
    );
    let store = connect_with(
        PostgresConfig::new(&key_value)
            .schema("cancel_over_tls")
            .allow_second_table(true),
    )
    .await;
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(7, "sleeps", "").unwrap()])
        .await
        .unwrap();
    let row = store.get(MigrationId::new(7).unwrap()).await.unwrap();
    let cancel = CancellationToken::new();
    let work = atomic_fn(|tx, _ctx| {
        Box::pin(async move {
            tx.execute("SELECT pg_sleep(60)", &[]).await?;
            Ok::<(), BoxError>(())
        })
    });
    let running =
        tokio::spawn(store.execute_atomic(work, context_with(&store, row, cancel.clone())));
    let watcher = connect(&key_value).await;
    let sleeping = || async {
        let client = watcher.pool().get().await.unwrap();
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let started = Instant::now();
    while sleeping().await == 0 {
        assert!(started.elapsed() < secs(10), "the statement never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let outcome = tokio::time::timeout(secs(20), running)
        .await
        .expect("the cancelled handler returns")
        .unwrap();
    assert!(
        matches!(outcome, Err(AtomicError::Failed(_))),
        "{outcome:?}"
    );
    let cancelled_at = Instant::now();
    while sleeping().await > 0 {
        assert!(
            cancelled_at.elapsed() < secs(5),
            "the statement still runs: the cancel request did not arrive\n{}",
            tls().cluster.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < secs(30), "took {:?}", started.elapsed());
}
