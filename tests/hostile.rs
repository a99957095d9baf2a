//! A caller holding a valid key, trying to hurt: the real binary under slow
//! heads, slow bodies, abandoned uploads and a burst of 2,000 concurrent requests
//! keeps answering a normal request, holds its memory, and exits within its grace
//! on SIGTERM; a provider echoing our key gets it relayed nowhere. Every load here
//! is bounded in count and time, and sent to loopback addresses only (slow clients
//! come from 127.0.0.2–4 and the burst from 127.0.1.x, so the per-address cap is
//! exercised without refusing the normal caller on 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{FakeProvider, TempDir};

/// The provider key the gateway is configured with; a test fails if it shows.
const PROVIDER_KEY: &str = "sk-hostile-provider-7f3a9c2e5b1d";
const GRACE_SECS: u64 = 6;
const PER_PEER: usize = 120;

/// The gateway as a separate process, logging JSON to a file.
struct Binary {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Binary {
    async fn start(config: &Path, log: PathBuf) -> Binary {
        let child = Command::new(env!("CARGO_BIN_EXE_ragway"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("HOSTILE_FAKE_KEY", PROVIDER_KEY)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let address = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["message"] == "ragway listening");
            if let Some(event) = listening {
                break event["address"].as_str().unwrap().parse().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the gateway did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Binary {
            child,
            address,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of the line, in clock ticks (100 a second).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(fake: &FakeProvider, dir: &Path) -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = {GRACE_SECS}
header_read_timeout_secs = 2
body_read_timeout_secs = 3
max_connections_per_peer = {PER_PEER}
max_connections = 4000

[log]
format = "json"

[providers.fake]
kind = "openai"
base_url = "{base}"
api_key_env = "HOSTILE_FAKE_KEY"
retry.attempts = 1
# The fake provider shares this test's process (and two cores) with the load: its
# slowness under the burst is the test's, not the gateway's, so its deadlines are
# wide and its breaker patient.
connect_timeout = "10s"
first_token_timeout = "30s"
idle_timeout = "10s"
breaker.failures = 10000

# Questions are not grounded here: the burst measures the gateway's own work, not
# 2,000 question embeddings on two cores.
[models.chat]
targets = ["fake:ok"]
rag = false

[models.leaky]
targets = ["fake:echo-auth-400"]

[models.stall]
targets = ["fake:stall-after-1"]

[embeddings]
name = "all-minilm-l6-v2"
model = "{repo}/models/all-MiniLM-L6-v2"

[retrieval]
path = "{dir}/qdrant"
ingest_concurrency = 2

[audit]
database = "sqlite://{dir}/audit.db"
spool_dir = "{dir}/spool"
"#,
        base = fake.base_url(),
        dir = dir.display(),
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

fn client_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One normal chat request: its status and how long it took.
async fn normal(client: &reqwest::Client, address: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let response = client
        .post(format!("http://{address}/v1/chat/completions"))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, started.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// How a hostile connection ended.
#[derive(Debug)]
struct Ended {
    /// The server's first words, if it said any (`HTTP/1.1 408`, `HTTP/1.1 503`).
    said: String,
    /// When the server closed it; `None`: still open at the end of the test's wait.
    closed_after: Option<Duration>,
}

/// Sends `head`, then `drip` every `every`, until the server answers or closes.
async fn trickle(
    source: IpAddr,
    to: SocketAddr,
    head: Vec<u8>,
    drip: &'static [u8],
    every: Duration,
) -> Ended {
    let started = Instant::now();
    let Ok(mut stream) = connect_from(source, to).await else {
        return Ended {
            said: "connect failed".into(),
            closed_after: Some(started.elapsed()),
        };
    };
    let _ = stream.write_all(&head).await;
    let mut said = Vec::new();
    let mut buffer = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    while started.elapsed() < Duration::from_secs(15) {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => {
                    return Ended {
                        said: String::from_utf8_lossy(&said).into_owned(),
                        closed_after: Some(started.elapsed()),
                    };
                }
                Ok(n) => said.extend_from_slice(&buffer[..n]),
            },
            _ = tick.tick() => {
                // A write to a socket the server closed fails: that is its close.
                if said.is_empty() && stream.write_all(drip).await.is_err() {
                    return Ended { said: String::new(), closed_after: Some(started.elapsed()) };
                }
            }
        }
    }
    Ended {
        said: String::from_utf8_lossy(&said).into_owned(),
        closed_after: None,
    }
}

/// `n` slow heads from `source`: each must be refused at once (past the
/// per-address cap) or closed within the head deadline.
async fn slow_heads(source: IpAddr, to: SocketAddr, n: usize) -> Vec<Ended> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: ragway\r\n".to_vec();
            tokio::spawn(trickle(
                source,
                to,
                head,
                b"x-slow: 1\r\n",
                Duration::from_millis(500),
            ))
        })
        .collect();
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// `n` slow bodies: a whole head announcing 100,000 bytes, then ten every 200 ms.
async fn slow_bodies(source: IpAddr, to: SocketAddr, n: usize) -> Vec<Ended> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: ragway\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"model\": \"chat\", \"messages\": [".to_vec();
            tokio::spawn(trickle(source, to, head, b"          ", Duration::from_millis(200)))
        })
        .collect();
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// A markdown document of about `bytes`, every section different.
fn big_document(bytes: usize, seed: usize) -> String {
    let mut text = String::with_capacity(bytes + 200);
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(&format!(
            "## Part {seed}-{i}\n\nUnit {i} of batch {seed} ships with a {} year warranty; returns within {} days are refunded to the card that paid, and parts for model {} stay in stock for {} years.\n\n",
            i % 7 + 1,
            i % 30 + 7,
            i * 13 % 997,
            i % 11 + 2
        ));
        i += 1;
    }
    text
}

/// Sends a whole upload and returns its connection, the answer not yet read.
async fn upload(source: IpAddr, to: SocketAddr, id: &str, text: &str) -> TcpStream {
    let body = json!({"id": id, "text": text, "format": "markdown"}).to_string();
    let mut stream = connect_from(source, to).await.unwrap();
    let head = format!(
        "POST /v1/documents HTTP/1.1\r\nhost: ragway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    stream
}

/// The gateway's CPU use, in cores, over `window`.
async fn cores_used(gateway: &Binary, window: Duration) -> f64 {
    let before = gateway.cpu();
    tokio::time::sleep(window).await;
    (gateway.cpu() - before).as_secs_f64() / window.as_secs_f64()
}

/// `total` concurrent chat requests spread over 20 source addresses; returns the
/// count per status.
async fn burst(to: SocketAddr, total: usize) -> std::collections::BTreeMap<u16, usize> {
    let clients: Vec<reqwest::Client> = (1..=20)
        .map(|i| client_from(ip(&format!("127.0.1.{i}"))))
        .collect();
    let tasks: Vec<_> = (0..total)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                match client
                    .post(format!("http://{to}/v1/chat/completions"))
                    .json(&json!({"model": "chat", "messages": [{"role": "user", "content": format!("question {i}")}]}))
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(error) => {
                        eprintln!("burst request failed: {error:?}");
                        0
                    }
                }
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for status in futures_util::future::join_all(tasks).await {
        *counts.entry(status.unwrap()).or_insert(0) += 1;
    }
    counts
}

/// Every slow connection ended by the server within `deadline`: refused at once
/// (a 503, or a reset that overtook it), or answered with `answer` (nothing, for a
/// head that never finished) and closed.
fn check_slow(kind: &str, ended: &[Ended], deadline: Duration, answer: &str) {
    let latest = ended.iter().filter_map(|e| e.closed_after).max();
    let answered = ended
        .iter()
        .filter(|e| !answer.is_empty() && e.said.starts_with(answer))
        .count();
    eprintln!(
        "{kind}: {} connections, the last closed after {latest:?}, {answered} answered {answer:?}",
        ended.len()
    );
    assert!(
        answer.is_empty() || answered > 0,
        "{kind}: none answered {answer:?}"
    );
    for e in ended {
        let closed = e
            .closed_after
            .unwrap_or_else(|| panic!("{kind}: a connection was held: {e:?}"));
        assert!(closed <= deadline, "{kind}: closed after {closed:?}: {e:?}");
        // A refusal's 503 may be lost to the reset that follows it when the
        // client keeps writing: then the client hears nothing, and is closed.
        assert!(
            e.said.is_empty() || e.said.starts_with("HTTP/1.1 503") || e.said.starts_with(answer),
            "{kind}: {e:?}"
        );
    }
}

/// A sample of the gateway's own metric (no labels, or the first series named).
async fn metric(client: &reqwest::Client, to: SocketAddr, name: &str) -> f64 {
    let text = client
        .get(format!("http://{to}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_caller_cannot_exhaust_or_stall_the_gateway() {
    let fake = FakeProvider::start().await;
    let dir = TempDir::new();
    let config_path = dir.0.join("ragway.toml");
    std::fs::write(&config_path, config(&fake, &dir.0)).unwrap();
    let gateway = Binary::start(&config_path, dir.0.join("gateway.log")).await;
    let to = gateway.address;
    let me = client_from(ip("127.0.0.1"));

    // The usual latency of a normal request, warmed up.
    for _ in 0..10 {
        assert_eq!(normal(&me, to).await.0, 200);
    }
    let mut usual = Vec::new();
    for _ in 0..30 {
        usual.push(normal(&me, to).await.1);
    }
    let usual = median(usual);
    // Generous for two shared cores, and still far below what a stalled server
    // (seconds) would show.
    let bound = usual * 5 + Duration::from_millis(200);
    eprintln!("normal request: median {usual:?} (bound under attack {bound:?})");

    // Rounds of slow heads, slow bodies and a burst, with the normal caller
    // asking throughout; memory is read after each round.
    let mut rss = Vec::new();
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let attack = async {
            let heads = slow_heads(ip("127.0.0.2"), to, 150);
            let bodies = slow_bodies(ip("127.0.0.3"), to, 150);
            tokio::join!(heads, bodies)
        };
        let asking = async {
            let mut seen = Vec::new();
            let mut open = 0f64;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let (status, took) = normal(&me, to).await;
                assert_eq!(status, 200);
                seen.push(took);
                open = open.max(metric(&me, to, "ragway_open_connections").await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (seen, open)
        };
        let ((heads, bodies), (during, open)) = tokio::join!(attack, asking);
        // The server never held more than the cap per address: two slow
        // addresses, and this caller's own connection or two.
        eprintln!("round {round}: open connections at most {open}");
        assert!(open <= (2 * PER_PEER + 3) as f64, "{open} open");
        let refused = metric(
            &me,
            to,
            "ragway_connections_refused_total{cap=\"per_peer\"}",
        )
        .await;
        assert!(
            refused > 0.0,
            "no connection was refused past the per-address cap"
        );
        check_slow("slow heads", &heads, Duration::from_secs(5), "");
        check_slow(
            "slow bodies",
            &bodies,
            Duration::from_secs(6),
            "HTTP/1.1 408",
        );
        let during = median(during);
        eprintln!("round {round}: normal request under slow clients: median {during:?}");
        assert!(
            during <= bound,
            "normal request under slow clients: {during:?}"
        );

        let started = Instant::now();
        let counts = burst(to, 2_000).await;
        eprintln!(
            "round {round}: 2,000 concurrent requests in {:?}: {counts:?}",
            started.elapsed()
        );
        assert_eq!(counts.get(&200), Some(&2_000), "{counts:?}");
        let after: Vec<Duration> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(normal(&me, to).await.1);
            }
            v
        };
        let after = median(after);
        assert!(after <= bound, "normal request after the burst: {after:?}");
        // The burst's clients are gone: the server lets their connections go (the
        // next round counts what it holds from a clean start).
        let settled = Instant::now() + Duration::from_secs(10);
        loop {
            let open = metric(&me, to, "ragway_open_connections").await;
            if open <= 3.0 {
                break;
            }
            assert!(
                Instant::now() < settled,
                "{open} connections still open 10 s after their clients left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rss.push(gateway.rss_mib());
        eprintln!("round {round}: RSS {:.1} MiB", rss[round]);
    }
    // Flat: the last round leaves the process keeping no more than the first two
    // did, give or take what the allocator keeps of a burst's peak, which varies
    // with how its 2,000 requests overlapped (rounds of one run were seen 70 MiB
    // apart). Memory kept per request grows every round: over the three rounds
    // after the first two, 6,000 requests keeping about 17 KiB each would break
    // the bound.
    let before = rss[0].max(rss[1]);
    let last = rss[ROUNDS - 1];
    assert!(last <= before * 1.25 + 16.0, "RSS {rss:?} MiB");

    // Abandoned uploads. Two held open fill the tenant's ingestion slots: a third
    // is refused with 429 before its body is read.
    let idle = cores_used(&gateway, Duration::from_secs(2)).await;
    let first = upload(ip("127.0.0.4"), to, "big-1", &big_document(2 << 20, 1)).await;
    let second = upload(ip("127.0.0.4"), to, "big-2", &big_document(2 << 20, 2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = cores_used(&gateway, Duration::from_secs(2)).await;
    let small = || {
        me.post(format!("http://{to}/v1/documents"))
            .json(&json!({"id": "small", "text": "# Small\n\nA small document."}))
            .send()
    };
    let third = small().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limited");
    // Then both clients leave: the work they started stops.
    drop((first, second));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_leaving = cores_used(&gateway, Duration::from_secs(3)).await;
    eprintln!(
        "gateway CPU: idle {idle:.2}, ingesting {busy:.2}, after the clients left {after_leaving:.2} cores"
    );
    // They were running (the 429 says both were in flight; the CPU, that they
    // were working, on cores the rest of the suite shares).
    // The bars are relative: under the rest of the suite's load the gateway gets
    // less of the two cores, ingesting or not.
    assert!(
        busy > 0.15,
        "two ingestions should keep the cores busy: {busy:.2}"
    );
    assert!(
        after_leaving < (busy / 2.0).min(0.3),
        "abandoned ingestion still running: {after_leaving:.2} cores (ingesting {busy:.2})"
    );
    // And the slots are free again.
    let again = small().await.unwrap();
    assert_eq!(again.status(), 201);

    // A provider that echoes our Authorization header: the client never sees it.
    let leaked = me
        .post(format!("http://{to}/v1/chat/completions"))
        .json(&json!({"model": "leaky", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(leaked.status(), 400);
    let text = leaked.text().await.unwrap();
    assert!(!text.contains(PROVIDER_KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");

    // SIGTERM with a stream open and an upload ingesting: out within the grace.
    let mut stream = connect_from(ip("127.0.0.1"), to).await.unwrap();
    let body =
        json!({"model": "stall", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: ragway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut first_bytes = [0u8; 64];
    let n = stream.read(&mut first_bytes).await.unwrap();
    assert!(first_bytes[..n].starts_with(b"HTTP/1.1 200"));
    let _ingesting = upload(ip("127.0.0.4"), to, "big-3", &big_document(2 << 20, 3)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &gateway.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut gateway = gateway;
    let status = loop {
        if let Some(status) = gateway.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(GRACE_SECS + 10),
            "still running {:?} after SIGTERM",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = stopped.elapsed();
    eprintln!("exit after SIGTERM: {took:?} (grace {GRACE_SECS} s)");
    assert!(status.success(), "{status:?}");
    assert!(
        took <= Duration::from_secs(GRACE_SECS) + Duration::from_millis(1500),
        "{took:?}"
    );

    // The key is in no log line and no audit row.
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(
        !log.contains(PROVIDER_KEY),
        "the log holds the provider key"
    );
    let export = Command::new(env!("CARGO_BIN_EXE_ragway"))
        .args(["--config", config_path.to_str().unwrap(), "audit", "export"])
        .env("HOSTILE_FAKE_KEY", PROVIDER_KEY)
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&export.stdout);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(
        rows.lines().count() > 4_000,
        "{} rows",
        rows.lines().count()
    );
    assert!(
        !rows.contains(PROVIDER_KEY),
        "an audit row holds the provider key"
    );
    assert!(
        rows.contains("echo-auth-400"),
        "the leaky call is on the record"
    );
}

// === in process: what the caller and the provider can plant ===

mod planted {
    use serde_json::{Value, json};

    use crate::support::postgres::fresh_database;
    use crate::support::{FakeProvider, Gateway, config_with};

    const KEY: &str = "sk-provider-planted-0b9e8d7c6a5f";
    const PHONE: &str = "13912348765";
    const ID_CARD: &str = "11010519491231002X";

    fn audit(instance: &str, spool: &std::path::Path) -> String {
        format!(
            "\n[auth]\nadmin_key_env = \"ADMIN\"\n\
             [audit]\ndatabase_env = \"AUDIT_DB\"\ninstance = \"{instance}\"\nspool_dir = \"{}\"\n\
             flush_every = \"20ms\"\nwrite_timeout = \"1s\"\nshutdown_deadline = \"3s\"\n",
            spool.display()
        )
    }

    /// Every row, once there are `n` (waiting up to 30 s for the writer).
    async fn every_row(db: &str, n: usize) -> Vec<String> {
        let pool = sqlx::PgPool::connect(db).await.unwrap();
        let mut rows = Vec::new();
        for _ in 0..300 {
            rows = sqlx::query_scalar("SELECT row_to_json(l)::text FROM audit_log l")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
            if rows.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(rows.len(), n, "{rows:?}");
        rows
    }

    /// A provider (or a proxy before it) that echoes the request's Authorization
    /// header in its error: whole or streamed, as JSON or plain text, the key
    /// reaches neither the client nor the audit trail nor the query endpoint.
    #[tokio::test]
    async fn an_echoed_provider_key_is_relayed_nowhere() {
        let fake = FakeProvider::start().await;
        let db = fresh_database().await;
        let spool = super::TempDir::new();
        let config = format!(
            "{}{}",
            config_with(
                &fake,
                "api_key_env = \"FAKE_KEY\"\nretry.attempts = 1",
                &[
                    ("rejected", &["echo-auth-400"]),
                    ("down", &["echo-auth-503"]),
                    ("proxy", &["echo-auth-502"]),
                ],
            ),
            audit("gw-secrets", &spool.0.join("spool")),
        );
        let env = [
            ("AUDIT_DB", db.as_str()),
            ("ADMIN", "admin-planted-secret"),
            ("FAKE_KEY", KEY),
        ];
        let gw = Gateway::start_with_env(&config, &env).await;
        for model in ["rejected", "down", "proxy"] {
            for stream in [false, true] {
                let response = gw
                    .chat(json!({"model": model, "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}]}))
                    .await;
                assert!(response.status().as_u16() >= 400, "{model}");
                let text = response.text().await.unwrap();
                assert!(
                    !text.contains(KEY) && !text.contains("0b9e8d7c6a5f"),
                    "{model}: {text}"
                );
            }
        }
        // The fake did see the key: the test is not vacuous.
        let sent = format!("Bearer {KEY}");
        assert!(
            fake.requests()
                .iter()
                .all(|r| r.authorization.as_deref() == Some(sent.as_str()))
        );
        let rows = every_row(&db, 6).await;
        for row in &rows {
            assert!(!row.contains("0b9e8d7c6a5f"), "{row}");
        }
        assert!(rows.iter().any(|r| r.contains("[redacted]")), "{rows:?}");
        let listed = gw
            .http()
            .get(format!("{}/admin/audit?limit=100", gw.url))
            .bearer_auth("admin-planted-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);
        let listed = listed.text().await.unwrap();
        assert!(listed.contains("echo-auth-503") && !listed.contains("0b9e8d7c6a5f"));
    }

    /// Personal data in every field a client controls besides the messages — the
    /// request id, the user agent, the `user` field, an unknown model's name, a
    /// document's id that becomes a citation — is in no column of any row.
    #[tokio::test]
    async fn personal_data_in_client_controlled_fields_is_not_stored() {
        let fake = FakeProvider::start().await;
        let db = fresh_database().await;
        let dir = super::TempDir::new();
        let config = format!(
            "{}\n[embeddings]\nmodel = \"models/all-MiniLM-L6-v2\"\n\n[retrieval]\npath = \"{}\"\n{}",
            config_with(&fake, "", &[("chat", &["echo"])]),
            dir.0.join("qdrant").display(),
            audit("gw-planted", &dir.0.join("spool")),
        );
        let env = [("AUDIT_DB", db.as_str()), ("ADMIN", "admin-planted-secret")];
        let gw = Gateway::start_with_env(&config, &env).await;
        let doc_id = format!("客户 {PHONE} 退货说明.md");
        let stored = gw
            .http()
            .post(format!("{}/v1/documents", gw.url))
            .header("user-agent", format!("uploader ({PHONE})"))
            .json(
                &json!({"id": doc_id, "text": "# 退货\n\n退货款项在十四个工作日内退回原支付卡。"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), 201);
        let made_id = stored.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let asked = gw
            .http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("x-request-id", format!("req-{PHONE}"))
            .header("user-agent", format!("bot/1.0 (+{PHONE}; id {ID_CARD})"))
            .json(&json!({"model": "chat", "user": PHONE,
                "messages": [{"role": "user", "content": format!("退货款项多久退回？我的电话 {PHONE}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(asked.status(), 200);
        let answer: Value = asked.json().await.unwrap();
        let cited = answer["ragway"]["citations"][0]["doc_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            cited, doc_id,
            "the citation, restored for the client: {answer}"
        );
        let unknown = gw
            .http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("x-request-id", format!("req {ID_CARD}"))
            .json(&json!({"model": format!("model-{PHONE}"), "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let rows = every_row(&db, 3).await;
        for row in &rows {
            assert!(!row.contains(PHONE) && !row.contains(ID_CARD), "{row}");
        }
        // The fields were there, redacted, not dropped.
        let all = rows.join("\n");
        assert!(
            all.contains("req-<PHONE_1>") && all.contains("退货说明.md"),
            "{all}"
        );
        assert!(
            all.contains(&made_id),
            "the gateway's own request id: {all}"
        );
    }

    /// `{…}GARBAGE` is not a JSON body: refused as OpenAI refuses it; trailing
    /// whitespace is fine.
    #[tokio::test]
    async fn bytes_after_the_json_body_are_refused() {
        let fake = FakeProvider::start().await;
        let gw = Gateway::start(&config_with(&fake, "", &[("chat", &["ok"])])).await;
        let body = r#"{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}"#;
        let send = |text: String| {
            gw.http()
                .post(format!("{}/v1/chat/completions", gw.url))
                .header("content-type", "application/json")
                .body(text)
                .send()
        };
        for trailing in ["GARBAGE", "{}", " x", "\u{0}"] {
            let response = send(format!("{body}{trailing}")).await.unwrap();
            let error = crate::support::expect_error(response, 400).await;
            assert_eq!(error["code"], "invalid_request", "{trailing:?}");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("not valid JSON"),
                "{error}"
            );
        }
        let fine = send(format!("{body} \n\t")).await.unwrap();
        assert_eq!(fine.status(), 200);
        assert_eq!(fake.total_attempts(), 1);
    }

    /// With `server.metrics_listen`, /metrics is served there and not on the
    /// public address.
    #[tokio::test]
    async fn metrics_can_have_their_own_address() {
        let fake = FakeProvider::start().await;
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = free.local_addr().unwrap();
        drop(free);
        let config = format!(
            "[server]\nmetrics_listen = \"{metrics}\"\n{}",
            config_with(&fake, "", &[("chat", &["ok"])])
        );
        let gw = Gateway::start(&config).await;
        assert_eq!(gw.get("/metrics").await.status(), 404);
        let mut scraped = None;
        for _ in 0..100 {
            if let Ok(response) = gw
                .http()
                .get(format!("http://{metrics}/metrics"))
                .send()
                .await
            {
                scraped = Some(response);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let scraped = scraped.expect("the metrics address answers");
        assert_eq!(scraped.status(), 200);
        assert!(
            scraped
                .text()
                .await
                .unwrap()
                .contains("ragway_requests_total")
        );
        let other = gw
            .http()
            .get(format!("http://{metrics}/v1/models"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
    }
}
