//! Test logs through `LogStore`, on SQLite and on PostgreSQL alike (`PATCHBAY_TEST_PG_URL`,
//! which `scripts/test` sets to a throwaway cluster; the PostgreSQL case fails, never skips,
//! without one): chunks kept compressed, a redelivered chunk ignored, a missing middle chunk
//! said, a re-run replacing the log.

use patchbay_logs::LogStore;
use patchbay_store::Db;

/// Each backend, with a way to count the bytes it stored.
enum Backend {
    /// The directory lives as long as the database.
    Sqlite {
        db: Db,
        _dir: tempfile::TempDir,
    },
    Pg(patchbay_store_pg::PgStore),
}

impl Backend {
    fn logs(&self) -> LogStore {
        match self {
            Backend::Sqlite { db, .. } => LogStore::new(db.clone()),
            Backend::Pg(store) => LogStore::on_postgres(store.clone()),
        }
    }

    async fn stored_bytes(&self) -> i64 {
        match self {
            Backend::Sqlite { db, .. } => {
                db.read(|c| Ok(c.query_row("SELECT sum(length(data)) FROM test_logs", [], |r| r.get(0))?)).await.unwrap()
            }
            Backend::Pg(store) => {
                let client = store.client().await.unwrap();
                client.query_one("SELECT sum(length(data))::BIGINT FROM test_logs", &[]).await.unwrap().get(0)
            }
        }
    }
}

async fn chunks_round_trip_compressed_and_idempotent(backend: Backend) {
    let logs = backend.logs();
    assert_eq!(logs.read("j").await.unwrap(), None);
    let big = "compiling foo.c\n".repeat(4000);
    logs.append("j", "r1", 0, false, &big).await.unwrap();
    assert!(!logs.read("j").await.unwrap().unwrap().complete);
    logs.append("j", "r1", 1, true, "error: it broke\n").await.unwrap();
    logs.append("j", "r1", 1, true, "error: it broke\n").await.unwrap();
    let log = logs.read("j").await.unwrap().unwrap();
    assert!(log.complete);
    assert_eq!(log.text, format!("{big}error: it broke\n"));
    let stored = backend.stored_bytes().await;
    assert!((stored as usize) < big.len() / 10, "kept compressed: {stored} bytes");
    // A missing middle chunk is said, not hidden.
    logs.append("k", "r1", 0, false, "a").await.unwrap();
    logs.append("k", "r1", 2, true, "c").await.unwrap();
    let k = logs.read("k").await.unwrap().unwrap();
    assert!(!k.complete && k.text.contains("missing"));
    // A re-run of a job replaces its log; chunks of two runs never mix.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    logs.append("j", "r2", 0, true, "second run\n").await.unwrap();
    assert_eq!(logs.read("j").await.unwrap().unwrap().text, "second run\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("db.sqlite3")).unwrap();
    chunks_round_trip_compressed_and_idempotent(Backend::Sqlite { db, _dir: dir }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let store = patchbay_store_pg::PgStore::connect(&url, 4, patchbay_bus::Sealer::default()).await.unwrap();
    chunks_round_trip_compressed_and_idempotent(Backend::Pg(store)).await;
}
