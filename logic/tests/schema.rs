//! Migrations and prepared statements against the test PostgreSQL.

mod common;

use common::log_capture::LogCapture;
use deadpool_postgres::{Manager, Pool};
use im_logic::error::LogicError;
use im_logic::migrate::{self, MigrationError};
use im_logic::store::pg;
use im_logic::store::pg::transaction::Pipelined;
use refinery::{Migration, Runner};
use tokio_postgres::NoTls;

async fn connect(url: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL reachable");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

fn pool(url: &str) -> Pool {
    let config: tokio_postgres::Config = url.parse().expect("valid URL");
    Pool::builder(Manager::new(config, NoTls))
        .max_size(1)
        .build()
        .expect("pool builds")
}

#[tokio::test]
async fn migrations_run_twice_without_error() {
    let pool = pool(&common::database_url());
    let mut client = pool.get().await.expect("pooled client");
    let runner = migrate::embedded_runner();

    migrate::apply(&mut client, &runner)
        .await
        .expect("first run");
    let second = migrate::apply(&mut client, &runner)
        .await
        .expect("second run");

    assert_eq!(second, 0, "nothing left to apply");
}

#[tokio::test]
async fn every_statement_prepares_against_schema() {
    let pool = pool(&common::database_url());
    let mut client = pool.get().await.expect("pooled client");
    migrate::apply(&mut client, &migrate::embedded_runner())
        .await
        .expect("migrations apply");

    let statements = pg::all_statements();
    // Every table module's statements, so a module left out of the list is noticed.
    assert!(statements.len() >= 32, "{} statements", statements.len());
    for sql in statements {
        if let Err(err) = client.prepare(sql).await {
            let detail = err.as_db_error().map(|db| db.message().to_owned());
            panic!("{sql} does not prepare: {err} {detail:?}");
        }
    }
}

#[tokio::test]
async fn failed_migration_names_file_and_sql_error() {
    let admin_url = common::database_url();
    let (admin, admin_task) = connect(&admin_url).await;
    let database = common::unique_name("im_migration").to_lowercase();
    admin
        .execute(&format!("CREATE DATABASE {database}"), &[])
        .await
        .expect("scratch database created");
    let mut scratch_config: tokio_postgres::Config = admin_url.parse().expect("valid URL");
    scratch_config.dbname(&database);
    let (mut scratch, scratch_task) = {
        let (client, connection) = scratch_config
            .connect(NoTls)
            .await
            .expect("scratch reachable");
        (
            client,
            tokio::spawn(async move {
                let _ = connection.await;
            }),
        )
    };
    let runner = Runner::new(&[
        Migration::unapplied("V1__good", "CREATE TABLE good (id int)").expect("valid name"),
        Migration::unapplied("V2__broken", "CREATE TABLE broken (").expect("valid name"),
    ]);

    let outcome = migrate::apply(&mut scratch, &runner).await;
    let good_exists: bool = scratch
        .query_one("SELECT to_regclass('good') IS NOT NULL", &[])
        .await
        .expect("query")
        .get(0);
    drop(scratch);
    let _ = scratch_task.await;
    admin
        .execute(&format!("DROP DATABASE {database}"), &[])
        .await
        .expect("scratch database dropped");
    drop(admin);
    let _ = admin_task.await;

    let err = outcome.expect_err("broken migration fails");
    let message = err.to_string();
    assert!(matches!(err, MigrationError::Failed { .. }), "{err:?}");
    assert!(message.contains("V2__broken.sql"), "{message}");
    assert!(message.contains("syntax error"), "{message}");
    assert!(good_exists, "migrations before the broken one stay applied");
}

#[tokio::test]
async fn lost_connection_log_names_its_cause() {
    let (logs, _guard) = LogCapture::install();
    let store = pg::PgStore::new(&common::test_config()).expect("pool");
    let pooled = store.client().await.expect("pooled connection");
    let backend: i32 = pooled
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let (admin, _task) = connect(&common::database_url()).await;

    admin
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .expect("terminate the pooled connection");

    // The server's reason is the source of tokio-postgres's "db error".
    let cause = "terminating connection due to administrator command";
    for _ in 0..50 {
        if !logs.lines_with(cause).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let lines = logs.lines_with(cause);
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert!(
        lines[0].contains("PostgreSQL connection failed"),
        "{}",
        lines[0]
    );
    drop(pooled);
}

/// Returns the id of the transaction it runs in, assigning one if needed.
const TRANSACTION_ID: &str = "SELECT pg_current_xact_id()::text::bigint";

/// Returns the backend process of `db`'s connection.
async fn backend_pid(db: &impl deadpool_postgres::GenericClient) -> Result<i32, LogicError> {
    Ok(db.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

#[tokio::test]
async fn pipelined_begin_precedes_statements() {
    let store = pg::PgStore::new(&common::test_config()).expect("pool");
    let tx = Pipelined::new(store.client().await.expect("pooled connection"));
    let db = tx.db();

    // Prepared beforehand, so that the statement goes out as soon as it is polled. Outside a
    // transaction block each statement would get a transaction of its own.
    let statement = db.prepare_cached(TRANSACTION_ID).await.expect("prepare");
    let first: i64 = tx
        .begin_with(async { Ok(db.query_one(&statement, &[]).await?.get(0)) })
        .await
        .expect("first statement");
    let second: i64 = db
        .query_one(&statement, &[])
        .await
        .expect("second statement")
        .get(0);

    assert_eq!(first, second);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn pipelined_rollback_and_commit_end_the_transaction() {
    let store = pg::PgStore::new(&common::test_config()).expect("pool");
    let (admin, _task) = connect(&common::database_url()).await;
    let table = format!("pipelined_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE TABLE {table} (n int)"))
        .await
        .expect("test table");
    let insert = format!("INSERT INTO {table} VALUES (1)");

    let tx = Pipelined::new(store.client().await.expect("pooled connection"));
    let db = tx.db();
    tx.begin_with(async { Ok(db.execute(insert.as_str(), &[]).await?) })
        .await
        .expect("insert");
    tx.rollback().await;
    let tx = Pipelined::new(store.client().await.expect("pooled connection"));
    let db = tx.db();
    tx.begin_with(async { Ok(db.execute(insert.as_str(), &[]).await?) })
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop test table");

    assert_eq!(
        rows, 1,
        "the rolled back row is gone, the committed one stays"
    );
}

#[tokio::test]
async fn pipelined_dropped_transaction_closes_its_connection() {
    let store = pg::PgStore::new(&common::test_config()).expect("pool");
    let tx = Pipelined::new(store.client().await.expect("pooled connection"));
    let db = tx.db();
    let backend = tx
        .begin_with(async { backend_pid(db).await })
        .await
        .expect("backend pid");

    // As when the task that runs the transaction is cancelled.
    drop(tx);
    let next = store.client().await.expect("pooled connection");
    let next_backend = backend_pid(&next).await.expect("backend pid");
    let (admin, _task) = connect(&common::database_url()).await;
    let mut alive = true;
    for _ in 0..100 {
        alive = admin
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&backend])
            .await
            .expect("activity")
            .is_some();
        if !alive {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    assert_ne!(
        next_backend, backend,
        "the pool handed out the dropped connection"
    );
    assert!(!alive, "the dropped transaction's backend still runs");
}
