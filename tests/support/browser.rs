//! Headless Chromium driven over WebDriver (ChromeDriver, from Debian's packages;
//! `make test` installs both): just the few commands the console's tests use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

/// Where a test's screenshots go: under the integration tests' own output
/// directory.
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// A fresh headless Chromium in `lang`, or `None` (with a notice) where
    /// ChromeDriver is not installed.
    pub async fn start(lang: &str) -> Option<Browser> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = match Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(driver) => driver,
            Err(error) => {
                eprintln!("NOTICE: no chromedriver ({error}): run scripts/browser.sh");
                return None;
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = Instant::now() + Duration::from_secs(10);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < ready, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1280,900", format!("--lang={lang}")],
                "prefs": {"intl.accept_languages": lang},
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
        };
        let created = browser.command("POST", "/session", capabilities).await;
        browser.session = created["sessionId"].as_str().expect("a session").to_owned();
        Some(browser)
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        let value = answer["value"].clone();
        if let Some(error) = value.get("error") {
            panic!("webdriver {method} {path}: {error} {}", value["message"]);
        }
        value
    }

    async fn session_command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    pub async fn goto(&self, url: &str) {
        self.session_command("POST", "/url", json!({"url": url}))
            .await;
    }

    pub async fn url(&self) -> String {
        let url = self.session_command("GET", "/url", Value::Null).await;
        url.as_str().unwrap_or_default().to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .session_command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.session_command(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.session_command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Accepts the dialog the page opened (`confirm`, `alert`).
    pub async fn accept_dialog(&self) {
        self.session_command("POST", "/alert/accept", json!({}))
            .await;
    }

    /// The value `script` (a function body) returns in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.session_command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits until `script` returns something truthy; returns it.
    pub async fn wait_for(&self, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(script).await;
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "never true in the page: {script}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's console messages at level SEVERE (script errors, CSP refusals).
    pub async fn severe_logs(&self) -> Vec<String> {
        let logs = self
            .session_command("POST", "/se/log", json!({"type": "browser"}))
            .await;
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a PNG of the window as `name` under [`screenshots`]; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .session_command("GET", "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let path = screenshots().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Browser {
    /// Closes the browser (ending the session stops Chromium), then the driver.
    pub async fn quit(self) {
        let path = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(path).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser goes with its driver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
