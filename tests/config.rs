//! Config loading as an operator meets it: the shipped example, every problem reported
//! at once, environment overrides, and the `ragway` binary itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ragway::config::{Config, ConfigError, Env};

const EXAMPLE: &str = include_str!("../ragway.example.toml");

fn example_env() -> Env {
    Env::from_pairs([
        ("QINIU_API_KEY", "sk-q"),
        ("SILICONFLOW_API_KEY", "sk-s"),
        ("DEEPSEEK_API_KEY", "sk-d"),
        ("INFINI_API_KEY", "sk-i"),
    ])
}

/// The problems validation reports for `toml` (which must have some).
fn problems(toml: &str) -> Vec<ragway::config::Problem> {
    match Config::from_toml(toml, &Env::default()) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn the_example_config_is_valid() {
    let config = Config::from_toml(EXAMPLE, &example_env()).expect("example validates");
    for provider in ["qiniu", "siliconflow", "deepseek", "infini"] {
        assert!(config.providers.contains_key(provider), "{provider}");
    }
    assert!(
        config.auth.keys.is_empty(),
        "client keys are off in the example"
    );
    assert!(!config.models.is_empty());
}

#[test]
fn every_problem_is_reported_at_once_by_key() {
    let toml = r#"
        [server]
        listen = "not-an-address"
        workers = 0
        [providers.qiniu]
        kind = "openai"
        base_url = "https://api.qnaigc.com/v1/chat/completions"
        api_key_env = "MISSING_KEY"
        [providers.bare]
        kind = "openai"
        base_url = "https://api.qnaigc.com"
        [models.chat]
        targets = ["qiniu:deepseek-v3", "nowhere:x", "no-colon"]
    "#;
    let problems = problems(toml);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "server.workers",
            "providers.bare.base_url",
            "providers.qiniu.base_url",
            "providers.qiniu.api_key_env",
            "models.chat.targets[1]",
            "models.chat.targets[2]",
        ]
    );
    let base = &problems[3].message;
    assert!(
        base.contains("`https://api.qnaigc.com/v1`"),
        "the fix is in the message: {base}"
    );
    assert!(problems[4].message.contains("MISSING_KEY"));
}

#[test]
fn durations_and_policies_are_checked() {
    let toml = r#"
        [providers.p]
        kind = "openai"
        base_url = "http://127.0.0.1:1/v1"
        first_token_timeout = "10"
        idle_timeout = "0s"
        retry = { attempts = 0, base = "fast" }
        breaker = { failures = 0, open_for = "1m", max_open_for = "10s" }
        [models.m]
        targets = ["p:x"]
        request_timeout = "2 weeks"
    "#;
    let problems = problems(toml);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "providers.p.first_token_timeout",
            "providers.p.idle_timeout",
            "providers.p.retry.attempts",
            "providers.p.retry.base",
            "providers.p.breaker.failures",
            "providers.p.breaker.max_open_for",
            "models.m.request_timeout",
        ]
    );
    let ok = toml
        .replace("\"10\"", "\"750ms\"")
        .replace("\"0s\"", "\"1.5s\"")
        .replace(
            "attempts = 0, base = \"fast\"",
            "attempts = 2, base = \"100ms\"",
        )
        .replace("failures = 0", "failures = 3")
        .replace("\"10s\" }", "\"10m\" }")
        .replace("\"2 weeks\"", "\"90s\"");
    let config = Config::from_toml(&ok, &Env::default()).expect(&ok);
    let p = &config.providers["p"];
    assert_eq!(
        p.deadlines.first_token,
        std::time::Duration::from_millis(750)
    );
    assert_eq!(p.retry.attempts, 2);
    assert_eq!(p.breaker.max_open_for, std::time::Duration::from_secs(600));
    assert_eq!(
        config.models["m"].request_timeout,
        std::time::Duration::from_secs(90)
    );
}

#[test]
fn unknown_keys_are_named() {
    let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", &Env::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server") && text.contains("listen_on"),
        "{text}"
    );
    let err = Config::from_toml(
        "[providers.q]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"sk-inline\"\n",
        &Env::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("api_key"),
        "secrets cannot be written in the file: {err}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let env = Env::from_pairs([
        ("RAGWAY__SERVER__LISTEN", "0.0.0.0:9999"),
        ("RAGWAY__LOG__FORMAT", "json"),
    ]);
    let config = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\n", &env).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(config.log.format, ragway::config::LogFormat::Json);
    let env = Env::from_pairs([("RAGWAY__SERVER__BOGUS", "1")]);
    assert!(
        Config::from_toml("", &env)
            .unwrap_err()
            .to_string()
            .contains("bogus")
    );
}

#[test]
fn check_config_prints_the_config_with_secrets_redacted() {
    let output = check_example(&[
        ("QINIU_API_KEY", "sk-qiniu-secret-value"),
        ("SILICONFLOW_API_KEY", "sk-s"),
        ("DEEPSEEK_API_KEY", "sk-d"),
        ("INFINI_API_KEY", "sk-i"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("QINIU_API_KEY"), "{stdout}");
    assert!(stdout.contains("<redacted>"));
    assert!(!stdout.contains("sk-qiniu-secret-value"));

    let output = check_example(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("providers.qiniu.api_key_env"));
}

/// `ragway check-config` on the shipped example, with only these keys set.
fn check_example(keys: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragway"));
    command.args([
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/ragway.example.toml"),
    ]);
    for var in [
        "QINIU_API_KEY",
        "SILICONFLOW_API_KEY",
        "DEEPSEEK_API_KEY",
        "INFINI_API_KEY",
    ] {
        command.env_remove(var);
    }
    command.envs(keys.iter().copied()).output().unwrap()
}

/// The real binary: it starts with no config at all, serves, and stops cleanly on
/// SIGTERM.
#[test]
fn the_binary_serves_and_shuts_down_gracefully() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragway"))
        .arg("serve")
        .env("RAGWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("RAGWAY__LOG__FORMAT", "json")
        .env_remove("RAGWAY_CONFIG")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("a log line").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON logs");
        if event["message"] == "ragway listening" {
            break event["address"].as_str().unwrap().to_owned();
        }
    };
    let health = std::net::TcpStream::connect(&address).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    });
    assert!(health.unwrap().starts_with("HTTP/1.1 200"));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ragway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn personal_data_settings_are_checked_by_key() {
    let toml = r#"
        [pii]
        local_input = "plain"
        hash_key_env = "NO_SUCH_KEY"
        [pii.actions]
        phone = "mask"
        email = "drop"
        id_card = "block"
        [guard]
        file = "guard.txt"
        action = "hide"
    "#;
    let problems = problems(toml);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "pii.actions.email",
            "pii.actions.phone",
            "pii.hash_key_env",
            "pii.local_input",
            "guard.action",
        ]
    );
    assert!(
        problems[1].message.contains("mobile"),
        "names the kinds: {}",
        problems[1].message
    );

    let config = Config::from_toml(
        "[pii]\nlocal_input = \"raw\"\n[pii.actions]\nid_card = \"block\"\n",
        &Env::default(),
    )
    .expect("valid");
    assert_eq!(
        config.pii.actions.action(ragway::sanitize::Kind::IdCard),
        ragway::sanitize::Action::Block
    );
    assert_eq!(config.pii.local_input, ragway::config::LocalInput::Raw);
}

#[test]
fn an_embedding_model_is_a_directory_or_an_e5_file() {
    let missing = problems("[embeddings]\nmodel = \"models/absent-e5.bin\"\n");
    assert_eq!(missing[0].key, "embeddings.model");
    assert!(
        missing[0].message.contains("does not exist") && missing[0].message.contains("make models"),
        "{}",
        missing[0].message
    );
    let dir = std::env::temp_dir().join(format!("ragway-empty-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = problems(&format!("[embeddings]\nmodel = \"{}\"\n", dir.display()));
    assert!(
        empty[0].message.contains("has no config.json"),
        "{}",
        empty[0].message
    );
    std::fs::remove_dir_all(&dir).ok();
    let e5 = "[embeddings]\nmodel = \"models/e5-small-q4.bin\"\n";
    assert!(Config::from_toml(e5, &Env::default()).is_ok());
}

#[test]
fn a_qdrant_collections_layout_is_checked_by_key() {
    let embedded = problems(
        "[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n[retrieval]\nreplication_factor = 2\n",
    );
    assert_eq!(embedded.len(), 1, "{embedded:?}");
    assert_eq!(embedded[0].key, "retrieval.replication_factor");
    assert!(embedded[0].message.contains("store = \"qdrant\""));
    let server = "[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n[retrieval]\n\
                  store = \"qdrant\"\nurl = \"http://qdrant:6334\"\n";
    let bad = problems(&format!(
        "{server}shard_number = 0\nreplication_factor = 2\nwrite_consistency_factor = 3\n"
    ));
    let keys: Vec<&str> = bad.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "retrieval.shard_number",
            "retrieval.write_consistency_factor"
        ]
    );
    let good = format!(
        "{server}shard_number = 6\nreplication_factor = 3\nwrite_consistency_factor = 2\n\
         on_disk_payload = true\n"
    );
    let config = Config::from_toml(&good, &Env::default()).unwrap();
    match config.retrieval.unwrap().store {
        ragway::config::StoreConfig::Qdrant { cluster, .. } => {
            assert_eq!(
                (cluster.shard_number, cluster.replication_factor),
                (Some(6), Some(3))
            );
            assert_eq!(
                (cluster.write_consistency_factor, cluster.on_disk_payload),
                (Some(2), Some(true))
            );
        }
        other => panic!("{other:?}"),
    }
}
