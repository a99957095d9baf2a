//! The HTTP client providers are called through: hyper's pooled client, one pool
//! per thread, HTTP/1.1 or HTTP/2 (by ALPN) over TLS checked against the
//! platform's roots. A provider that the environment's egress proxy settings
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) send through a proxy is
//! called through reqwest instead, which speaks CONNECT to it.
//!
//! One pool per thread, because a connection's I/O runs on the runtime that opened
//! it: a request served on one connection worker (`http::workers`) and sent over a
//! connection another worker opened would wake that other thread twice per call.
//! hyper directly rather than a higher-level client, because this is the request
//! path's hottest call and it needs none of the layers such a client adds per
//! request (redirects, which re-parse the URL each time; retries, which the
//! router does with its own policy).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;
use thread_local::ThreadLocal;

use super::error::{TimeoutPhase, UpstreamError};
use crate::telemetry::traces;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Response = hyper::Response<UnsyncBoxBody<Bytes, BoxError>>;
type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an unused connection is kept for the next call.
const IDLE: Duration = Duration::from_secs(90);

pub struct Upstream {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    pools: ThreadLocal<Pool>,
    proxy: Matcher,
    proxied: reqwest::Client,
}

impl Upstream {
    /// Fails when the platform's trust store cannot be used.
    pub fn new(connect_timeout: Duration) -> Result<Upstream, String> {
        Upstream::build(
            connect_timeout,
            Matcher::from_env(),
            reqwest::Client::builder(),
        )
    }

    /// `proxy` says which calls go through a proxy, and `proxied` (set up from the
    /// same settings) makes them.
    fn build(
        connect_timeout: Duration,
        proxy: Matcher,
        proxied: reqwest::ClientBuilder,
    ) -> Result<Upstream, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_platform_verifier())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth();
        let proxied = proxied
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot set up the proxied client: {e}"))?;
        Ok(Upstream {
            tls: Arc::new(tls),
            connect_timeout,
            pools: ThreadLocal::new(),
            proxy,
            proxied,
        })
    }

    /// POSTs `body` to `uri`; the response once its head has arrived.
    pub async fn post(
        &self,
        uri: Uri,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<Response, UpstreamError> {
        if self.proxy.intercept(&uri).is_some() {
            return self.post_proxied(uri, headers, body).await;
        }
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        request.headers_mut().clone_from(headers);
        traces::propagate(request.headers_mut());
        let response = self.pool().request(request).await.map_err(send_error)?;
        Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
    }

    async fn post_proxied(
        &self,
        uri: Uri,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<Response, UpstreamError> {
        let response = self
            .proxied
            .post(uri.to_string())
            .headers({
                let mut headers = headers.clone();
                traces::propagate(&mut headers);
                headers
            })
            .body(body)
            .send()
            .await
            .map_err(|error| match error.is_timeout() {
                true => UpstreamError::Timeout(TimeoutPhase::Connect),
                false => UpstreamError::Connect(error_chain(&error.without_url())),
            })?;
        let response: hyper::Response<reqwest::Body> = response.into();
        Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
    }

    /// A connection of its own to `uri`'s host, in TLS for `https`, for a
    /// protocol the pools do not speak (a WebSocket). Not through an egress
    /// proxy: a provider the proxy settings route is refused by name.
    pub async fn connect_raw(&self, uri: &Uri) -> Result<Box<dyn Io>, UpstreamError> {
        if self.proxy.intercept(uri).is_some() {
            return Err(UpstreamError::Connect(
                "realtime sockets are not opened through an egress proxy".to_owned(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| UpstreamError::Connect("the address names no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let in_time =
            |_: tokio::time::error::Elapsed| UpstreamError::Timeout(TimeoutPhase::Connect);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(in_time)?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| UpstreamError::Connect(format!("{host}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
        let stream = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(in_time)?
            .map_err(|e| UpstreamError::Connect(format!("TLS: {e}")))?;
        Ok(Box::new(stream))
    }

    fn pool(&self) -> &Pool {
        self.pools.get_or(|| {
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            tcp.set_connect_timeout(Some(self.connect_timeout));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*self.tls).clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(tcp);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE)
                .pool_max_idle_per_host(256)
                .pool_timer(TokioTimer::new())
                .build(connector)
        })
    }
}

/// A byte stream to a provider, plain or in TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A failure before any response head arrived: a connect deadline passed, or the
/// connection could not be made or broke.
fn send_error(error: hyper_util::client::legacy::Error) -> UpstreamError {
    let timed_out = error.is_connect()
        && causes(&error).any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
    if timed_out {
        UpstreamError::Timeout(TimeoutPhase::Connect)
    } else {
        UpstreamError::Connect(error_chain(&error))
    }
}

/// The error and its causes in one line ("client error (Connect): tcp connect
/// error: Connection refused (os error 111)").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    for cause in causes(error) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |&cause| cause.source())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_call_the_proxy_settings_name_goes_through_the_proxy() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", proxy.local_addr().unwrap());
        let seen = tokio::spawn(async move {
            let (mut socket, _) = proxy.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let read = socket.read(&mut head).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8_lossy(&head[..read]).into_owned()
        });
        let upstream = Upstream::build(
            Duration::from_secs(5),
            Matcher::builder().all(address.clone()).build(),
            reqwest::Client::builder().proxy(reqwest::Proxy::all(&address).unwrap()),
        )
        .unwrap();
        let uri: Uri = "http://provider.invalid/v1/chat/completions"
            .parse()
            .unwrap();
        let response = upstream
            .post(uri, &HeaderMap::new(), b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("POST http://provider.invalid/v1/chat/completions HTTP/1.1"),
            "the proxy got the call in absolute form: {head}"
        );
    }
}
