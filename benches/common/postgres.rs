//! Shared by the benchmarks that write to Postgres (included with `#[path]`).

use sqlx::Connection;

/// An empty database named `name` on the server the tests use (`make services`
/// starts one): the last run's is dropped, this run's kept for inspection. Its URL.
pub async fn fresh_database(name: &str) -> String {
    let server = std::env::var("RAGWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {server} (run `make services`): {e}"));
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let (base, _) = server.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{name}")
}
