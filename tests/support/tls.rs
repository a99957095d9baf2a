//! Certificates made for a test (with the `openssl` command), and a redis-server of
//! the test's own that speaks only TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TempDir;

/// A certificate authority of one test, in its own temporary directory.
pub struct TestCa {
    pub dir: TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = TempDir::new();
        openssl(
            &dir.0,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
             -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign",
            &["-subj", &format!("/CN={name}")],
        );
        TestCa { dir }
    }

    /// The CA's certificate (what a client is told to trust).
    pub fn cert(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// A server certificate for `sans` (`IP:127.0.0.1,DNS:localhost` …):
    /// returns (certificate, key).
    pub fn issue(&self, name: &str, sans: &str) -> (PathBuf, PathBuf) {
        let dir = &self.dir.0;
        let (csr, key, crt, ext) = (
            format!("{name}.csr"),
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes",
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            "x509 -req -CA ca.pem -CAkey ca.key -CAcreateserial -days 2",
            &["-in", &csr, "-extfile", &ext, "-out", &crt],
        );
        (dir.join(crt), dir.join(key))
    }
}

/// Runs `openssl` in `dir` with the words of `args`, then `more` as they are.
fn openssl(dir: &Path, args: &str, more: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .args(more)
        .output()
        .expect("the openssl command runs (make services installs it)");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A redis-server on a free loopback port that accepts TLS only, with a
/// certificate for 127.0.0.1 and localhost from `ca`; killed when dropped.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
}

impl TlsRedis {
    pub fn start(ca: &TestCa) -> TlsRedis {
        let (cert, key) = ca.issue("redis", "IP:127.0.0.1,DNS:localhost");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            // 127.0.0.2 too: an address the certificate does not name.
            .args(["--bind", "127.0.0.1", "127.0.0.2"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(ca.cert())
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let mut redis = TlsRedis { port, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited ({status}): is it built with TLS?");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on its TLS port {port}");
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
