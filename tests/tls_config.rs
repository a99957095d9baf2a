//! TLS settings as validation reads them: `rediss://` and its CA file, and a
//! Postgres URL's `sslmode` and `sslrootcert`, each problem named by its key and
//! none quoting a URL.

use ragway::config::{Config, ConfigError, Env, Problem};

use crate::support::TempDir;
use crate::support::tls::TestCa;

fn check(toml: &str, env: &[(&str, &str)]) -> Result<Config, Vec<Problem>> {
    match Config::from_toml(toml, &Env::from_pairs(env.iter().copied())) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid(problems)) => Err(problems),
        Err(other) => panic!("{other}"),
    }
}

fn redis(url: &str, ca_file: Option<&str>) -> String {
    let mut toml = format!("[cache]\nredis_url = \"{url}\"\n");
    if let Some(path) = ca_file {
        toml.push_str(&format!("redis_ca_file = \"{path}\"\n"));
    }
    toml
}

/// The one problem `toml` has: its key and message.
fn problem(toml: &str, env: &[(&str, &str)]) -> (String, String) {
    let problems = check(toml, env).expect_err("a problem");
    assert_eq!(problems.len(), 1, "{problems:?}");
    (problems[0].key.clone(), problems[0].message.clone())
}

#[test]
fn rediss_is_taken_with_or_without_a_ca_file() {
    let ca = TestCa::new("config CA");
    let ca_path = ca.cert().display().to_string();
    let config = check(&redis("rediss://cache.internal:6380", Some(&ca_path)), &[]).unwrap();
    let tier = config.cache.unwrap().redis.unwrap();
    assert_eq!(tier.url, "rediss://cache.internal:6380");
    assert_eq!(tier.ca_file.as_deref(), Some(ca.cert().as_path()));
    assert!(check(&redis("rediss://cache.internal:6380", None), &[]).is_ok());
    assert!(check(&redis("redis://127.0.0.1:6379", None), &[]).is_ok());
}

#[test]
fn redis_tls_mistakes_are_named_by_key() {
    let dir = TempDir::new();
    let ca = TestCa::new("config CA");
    let ca_path = ca.cert().display().to_string();
    let (key, message) = problem(&redis("rediss://cache.internal/#insecure", None), &[]);
    assert_eq!(key, "cache.redis_url");
    assert!(message.contains("#insecure"), "{message}");
    let (key, message) = problem(&redis("redis://cache.internal", Some(&ca_path)), &[]);
    assert_eq!(key, "cache.redis_ca_file");
    assert!(message.contains("rediss://"), "{message}");
    let (key, message) = problem(&redis("http://cache.internal", None), &[]);
    assert_eq!(key, "cache.redis_url");
    assert!(message.contains("rediss://"), "{message}");

    let missing = dir.0.join("absent.pem").display().to_string();
    let (key, message) = problem(&redis("rediss://cache.internal", Some(&missing)), &[]);
    assert_eq!(key, "cache.redis_ca_file");
    assert!(
        message.contains("cannot read") && message.contains(&missing),
        "{message}"
    );
    // A key where the certificate should be.
    let (_, key_file) = ca.issue("server", "DNS:cache.internal");
    let key_file = key_file.display().to_string();
    let (key, message) = problem(&redis("rediss://cache.internal", Some(&key_file)), &[]);
    assert_eq!(key, "cache.redis_ca_file");
    assert!(message.contains("no PEM certificate"), "{message}");
}

#[test]
fn postgres_tls_settings_are_checked_without_quoting_the_url() {
    let ca = TestCa::new("config CA");
    let audit = "[audit]\ndatabase_env = \"AUDIT_DB\"\n";
    let url = |query: &str| format!("postgres://ragway:hunter2-secret@db.internal/audit?{query}");
    let good = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca.cert().display()
    ));
    assert!(check(audit, &[("AUDIT_DB", &good)]).is_ok());
    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        let url = url(&format!("sslmode={mode}"));
        assert!(check(audit, &[("AUDIT_DB", &url)]).is_ok(), "{mode}");
    }

    let (key, message) = problem(audit, &[("AUDIT_DB", &url("sslmode=verify"))]);
    assert_eq!(key, "audit.database_env");
    assert!(message.contains("verify"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");

    let missing = url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    let (key, message) = problem(audit, &[("AUDIT_DB", &missing)]);
    assert_eq!(key, "audit.database_env");
    assert!(
        message.contains("sslrootcert") && message.contains("/nonexistent/ca.pem"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let in_file = "[audit]\ndatabase = \"postgres://db.internal/audit?sslmode=sometimes\"\n";
    let (key, _) = problem(in_file, &[]);
    assert_eq!(key, "audit.database");
}
