//! tokio-postgres + deadpool against sqlx on the statement shapes patchbay's PostgreSQL store
//! runs: a prepared one-row read, the aggregator's transaction (insert on conflict, row lock,
//! update, commit) and many reads at once through a pool. Both clients run in one process,
//! round after round in turn, so the machine's load swings hit both alike.
//!
//! Usage: pg-clients <postgres-url> [rounds]

use std::time::{Duration, Instant};

const POOL: usize = 8;
const READS: usize = 4000;
const TXNS: usize = 1500;
const CONCURRENT: usize = 16000;

/// Per-operation times of one workload, in microseconds.
struct Run {
    client: &'static str,
    workload: &'static str,
    took: Duration,
    micros: Vec<u64>,
}

impl Run {
    fn line(&mut self) -> String {
        self.micros.sort_unstable();
        let q = |p: f64| self.micros[((self.micros.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        format!(
            "{:<14} {:<11} {:>9.0} ops/s   p50 {:>6.3} ms   p99 {:>6.3} ms",
            self.client,
            self.workload,
            self.micros.len() as f64 / self.took.as_secs_f64(),
            q(0.50),
            q(0.99)
        )
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(feature = "tp")]
mod tp {
    use super::*;
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

    pub async fn pool(url: &str) -> Pool {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let manager = Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        Pool::builder(manager).max_size(POOL).runtime(Runtime::Tokio1).build().unwrap()
    }

    pub async fn reads(pool: &Pool) -> Run {
        let client = pool.get().await.unwrap();
        let mut micros = Vec::with_capacity(READS);
        let start = Instant::now();
        for i in 0..READS as i64 {
            let t = Instant::now();
            let stmt = client.prepare_cached("SELECT k, v FROM pgc WHERE k = $1").await.unwrap();
            let rows = client.query(&stmt, &[&(i % 1000)]).await.unwrap();
            assert!(rows.len() <= 1);
            micros.push(t.elapsed().as_micros() as u64);
        }
        Run { client: "tokio-postgres", workload: "read", took: start.elapsed(), micros }
    }

    pub async fn txns(pool: &Pool, base: i64) -> Run {
        let mut client = pool.get().await.unwrap();
        let mut micros = Vec::with_capacity(TXNS);
        let start = Instant::now();
        for i in 0..TXNS as i64 {
            let t = Instant::now();
            let k = base + i % 100;
            let tx = client.transaction().await.unwrap();
            let ins = tx.prepare_cached("INSERT INTO pgc (k, v) VALUES ($1, 0) ON CONFLICT (k) DO NOTHING").await.unwrap();
            tx.execute(&ins, &[&k]).await.unwrap();
            let lock = tx.prepare_cached("SELECT v FROM pgc WHERE k = $1 FOR UPDATE").await.unwrap();
            let v: i64 = tx.query_one(&lock, &[&k]).await.unwrap().get(0);
            let upd = tx.prepare_cached("UPDATE pgc SET v = $2 WHERE k = $1").await.unwrap();
            tx.execute(&upd, &[&k, &(v + 1)]).await.unwrap();
            tx.commit().await.unwrap();
            micros.push(t.elapsed().as_micros() as u64);
        }
        Run { client: "tokio-postgres", workload: "transaction", took: start.elapsed(), micros }
    }

    pub async fn concurrent(pool: &Pool) -> Run {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..POOL {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut micros = Vec::with_capacity(CONCURRENT / POOL);
                for i in 0..(CONCURRENT / POOL) as i64 {
                    let t = Instant::now();
                    let client = pool.get().await.unwrap();
                    let stmt = client.prepare_cached("SELECT k, v FROM pgc WHERE k = $1").await.unwrap();
                    client.query(&stmt, &[&((i * 7 + w as i64) % 1000)]).await.unwrap();
                    micros.push(t.elapsed().as_micros() as u64);
                }
                micros
            }));
        }
        let mut micros = Vec::new();
        for t in tasks {
            micros.extend(t.await.unwrap());
        }
        Run { client: "tokio-postgres", workload: "pool x8", took: start.elapsed(), micros }
    }
}

#[cfg(feature = "sqlx")]
mod sq {
    use super::*;
    use sqlx::Row;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    pub async fn pool(url: &str) -> PgPool {
        PgPoolOptions::new().max_connections(POOL as u32).connect(url).await.unwrap()
    }

    pub async fn reads(pool: &PgPool) -> Run {
        let mut conn = pool.acquire().await.unwrap();
        let mut micros = Vec::with_capacity(READS);
        let start = Instant::now();
        for i in 0..READS as i64 {
            let t = Instant::now();
            let rows = sqlx::query("SELECT k, v FROM pgc WHERE k = $1").bind(i % 1000).fetch_all(&mut *conn).await.unwrap();
            assert!(rows.len() <= 1);
            micros.push(t.elapsed().as_micros() as u64);
        }
        Run { client: "sqlx", workload: "read", took: start.elapsed(), micros }
    }

    pub async fn txns(pool: &PgPool, base: i64) -> Run {
        let mut conn = pool.acquire().await.unwrap();
        let mut micros = Vec::with_capacity(TXNS);
        let start = Instant::now();
        for i in 0..TXNS as i64 {
            let t = Instant::now();
            let k = base + i % 100;
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            sqlx::query("INSERT INTO pgc (k, v) VALUES ($1, 0) ON CONFLICT (k) DO NOTHING").bind(k).execute(&mut *tx).await.unwrap();
            let v: i64 = sqlx::query("SELECT v FROM pgc WHERE k = $1 FOR UPDATE").bind(k).fetch_one(&mut *tx).await.unwrap().get(0);
            sqlx::query("UPDATE pgc SET v = $2 WHERE k = $1").bind(k).bind(v + 1).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            micros.push(t.elapsed().as_micros() as u64);
        }
        Run { client: "sqlx", workload: "transaction", took: start.elapsed(), micros }
    }

    pub async fn concurrent(pool: &PgPool) -> Run {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..POOL {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut micros = Vec::with_capacity(CONCURRENT / POOL);
                for i in 0..(CONCURRENT / POOL) as i64 {
                    let t = Instant::now();
                    sqlx::query("SELECT k, v FROM pgc WHERE k = $1").bind((i * 7 + w as i64) % 1000).fetch_all(&pool).await.unwrap();
                    micros.push(t.elapsed().as_micros() as u64);
                }
                micros
            }));
        }
        let mut micros = Vec::new();
        for t in tasks {
            micros.extend(t.await.unwrap());
        }
        Run { client: "sqlx", workload: "pool x8", took: start.elapsed(), micros }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: pg-clients <postgres-url> [rounds]");
    let rounds: usize = args.next().map(|r| r.parse().unwrap()).unwrap_or(3);
    setup(&url).await;
    #[cfg(feature = "tp")]
    let tp_pool = tp::pool(&url).await;
    #[cfg(feature = "sqlx")]
    let sq_pool = sq::pool(&url).await;
    for round in 1..=rounds {
        println!("round {round} (load {})", load());
        #[cfg(feature = "tp")]
        for mut run in [tp::reads(&tp_pool).await, tp::txns(&tp_pool, 0).await, tp::concurrent(&tp_pool).await] {
            println!("  {}", run.line());
        }
        #[cfg(feature = "sqlx")]
        for mut run in [sq::reads(&sq_pool).await, sq::txns(&sq_pool, 1000).await, sq::concurrent(&sq_pool).await] {
            println!("  {}", run.line());
        }
    }
    println!("load after {}", load());
}

/// The table both clients work on, made afresh.
async fn setup(url: &str) {
    #[cfg(feature = "tp")]
    {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute("DROP TABLE IF EXISTS pgc; CREATE TABLE pgc (k BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO pgc SELECT g, 0 FROM generate_series(0, 999) g ON CONFLICT DO NOTHING").await.unwrap();
    }
    #[cfg(all(feature = "sqlx", not(feature = "tp")))]
    {
        use sqlx::Executor;
        let pool = sq::pool(url).await;
        pool.execute("DROP TABLE IF EXISTS pgc; CREATE TABLE pgc (k BIGINT PRIMARY KEY, v BIGINT NOT NULL); INSERT INTO pgc SELECT g, 0 FROM generate_series(0, 999) g ON CONFLICT DO NOTHING").await.unwrap();
    }
}
