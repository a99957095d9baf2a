//! A real Postgres for the audit tests: a fresh database per test, and a TCP proxy
//! in front of it that a test can cut (as a down or blocked database looks to the
//! gateway).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;

/// The server the tests use (`make test` starts one when none is running).
pub fn server_url() -> String {
    std::env::var("RAGWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The CA whose certificate the test server presents (`make services` makes both;
/// `RAGWAY_TEST_TLS_DIR` moves it from `~/.cache/ragway/tls`). Fails, not skips,
/// when missing: the TLS tests must not pass by not running.
pub fn server_ca() -> std::path::PathBuf {
    let dir = std::env::var_os("RAGWAY_TEST_TLS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/ragway/tls")
        });
    let ca = dir.join("ca.pem");
    assert!(
        ca.is_file(),
        "{} is missing: the test Postgres must serve TLS with a certificate from that CA \
         (run `make services`)",
        ca.display()
    );
    ca
}

const PREFIX: &str = "ragway_test_";

/// A new, empty database; returns its URL. Test databases left by an earlier run
/// are dropped on the first call.
pub async fn fresh_database() -> String {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    let server = server_url();
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {server} (run `make services`): {e}"));
    SWEPT
        .get_or_init(|| async {
            let stale: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                    .bind(format!("{PREFIX}%"))
                    .fetch_all(&mut admin)
                    .await
                    .unwrap();
            for name in stale {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        })
        .await;
    let name = format!(
        "{PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    with_database(&server, &name)
}

/// `url` with its database (the path) replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{database}")
}

/// `url` with its host and port replaced (to go through a [`Proxy`]).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = &rest[rest.find('/').unwrap_or(rest.len())..];
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{addr}{path}")
}

/// The host and port of `url`.
pub fn address(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.replace("localhost", "127.0.0.1").parse().unwrap()
}

/// Forwards connections to `target` until cut.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::start_at("127.0.0.1", target).await
    }

    /// A proxy listening on `host` (any of 127.0.0.0/8 on Linux), which a client
    /// then names in its URL and checks the server's certificate against.
    pub async fn start_at(host: &str, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((host, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, open) = (Arc::clone(&cut), Arc::clone(&open));
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is reset
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    open.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            cut,
            open,
            _accept: accept,
        }
    }

    /// Breaks every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The first bytes of a client's `SSLRequest` (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A server without TLS, as a client sees it: answers every `SSLRequest` with
/// `N` (no TLS here), then carries the plain-text session to `target`.
pub async fn without_tls(target: SocketAddr) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let forwarded = if first == SSL_REQUEST {
                    client.write_all(b"N").await
                } else {
                    server.write_all(&first).await
                };
                if forwarded.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}
