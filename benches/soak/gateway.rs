//! The release `ragway` binary as a child process, configured with every stage on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::CLIENT_KEY;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway, and a client for it; the process is killed if the soak ends early.
pub struct Gateway {
    child: Option<Child>,
    pub base: String,
    pub client: reqwest::Client,
}

impl Gateway {
    /// Writes its config into `work`, starts it and waits until it is ready.
    pub async fn start(
        repo: &Path,
        work: &Path,
        upstream: u16,
        database: &str,
        redis_prefix: &str,
    ) -> Gateway {
        let port = free_port();
        let config = work.join("ragway.toml");
        std::fs::write(
            &config,
            config_text(port, upstream, repo, work, redis_prefix),
        )
        .expect("write the config");
        let log = work.join("gateway.log");
        let child = command(repo, work, database)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the gateway log"))
            .spawn()
            .expect("start the ragway binary");
        let mut gateway = Gateway {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("an HTTP client"),
        };
        gateway.wait_ready(&log).await;
        gateway
    }

    async fn wait_ready(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().is_ok_and(|s| s.is_some()));
            if exited {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the gateway exited at start-up:\n{log}");
            }
            let ready = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the gateway did not become ready in 120 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Every file under `dir` into the tenant's documents.
    pub async fn ingest(&self, dir: &Path) {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("the corpus directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let text = std::fs::read_to_string(&path).expect("a corpus document");
            let response = self
                .client
                .post(format!("{}/v1/documents", self.base))
                .bearer_auth(CLIENT_KEY)
                .json(&json!({"id": name, "title": name, "text": text}))
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .expect("ingest a document");
            let status = response.status();
            assert!(status.is_success(), "ingest {name}: {status}");
        }
    }

    /// The metrics page (empty when it cannot be read).
    pub async fn scrape(&self) -> String {
        match self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// SIGTERM, as an orchestrator stops it; whether it exited 0 within 60 s.
    pub async fn stop(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while signalled && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ragway --config work/ragway.toml` with the soak's secrets, and no `RAGWAY_*`
/// setting from the caller's environment (it would override the soak's config).
fn command(repo: &Path, work: &Path, database: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragway"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RAGWAY") {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(work.join("ragway.toml"))
        .current_dir(repo)
        .env("RAGWAY_SOAK_KEY", CLIENT_KEY)
        .env("RAGWAY_SOAK_DATABASE_URL", database);
    command
}

/// `ragway audit verify` over the whole table, bounded to 5 minutes: its last line,
/// and whether it passed.
pub async fn verify_chain(repo: &Path, work: &Path, database: &str) -> (bool, String) {
    let mut command = tokio::process::Command::from(command(repo, work, database));
    command.args(["audit", "verify"]).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output()).await;
    let Ok(Ok(output)) = output else {
        return (false, "did not finish in 5 minutes".to_owned());
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let last = text.lines().last().unwrap_or_default().to_owned();
    (output.status.success(), last)
}

/// Removes the soak's answers from Redis (bounded to 30 s).
pub async fn clear_redis(prefix: &str) {
    let clear = async {
        let client = redis::Client::open("redis://127.0.0.1:6379")?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async::<()>(&mut redis)
                    .await?;
            }
            if next == 0 {
                return Ok::<(), redis::RedisError>(());
            }
            cursor = next;
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), clear).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => println!("could not clear {prefix}* from Redis: {error}"),
        Err(_) => println!("could not clear {prefix}* from Redis in 30 s"),
    }
}

/// A free port on loopback (released for the gateway to bind: a race with other
/// processes binding ports at that moment, harmless on a test machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn config_text(port: u16, upstream: u16, repo: &Path, work: &Path, redis_prefix: &str) -> String {
    let repo = repo.display();
    let work = work.display();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[log]
level = "warn"
[[auth.keys]]
id = "soak"
tenant = "acme"
key_env = "RAGWAY_SOAK_KEY"
[providers.upstream]
kind = "openai"
base_url = "http://127.0.0.1:{upstream}/v1"
[models.soak]
targets = ["upstream:soak-model"]
[embeddings]
name = "all-minilm-l6-v2"
model = "{repo}/models/all-MiniLM-L6-v2"
[retrieval]
store = "embedded"
path = "{work}/qdrant"
prompts = "{repo}/prompts"
[cache]
memory_bytes = 67108864
redis_url = "redis://127.0.0.1:6379"
redis_key_prefix = "{redis_prefix}"
[audit]
database_env = "RAGWAY_SOAK_DATABASE_URL"
instance = "soak"
spool_dir = "{work}/audit-spool"
"#
    )
}
