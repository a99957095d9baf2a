//! The client for any OpenAI-compatible chat API (Qiniu, SiliconFlow, DeepSeek,
//! Infini-AI GenStudio, vLLM, llama.cpp server, …), over one pooled HTTP client.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::ProviderConfig;
use super::endpoint::ChatEndpoint;
use super::error::{ProviderError, UpstreamError};
use super::resume::Prefill;
use super::stream::{ChunkStream, chunk_stream};
use super::upstream::{Response, Upstream, error_chain};
use super::{ChatProvider, stream};
use crate::secret::Secret;
use crate::wire::{ChatCompletion, ChatRequest, StreamOptions};

/// How much of an error body is read: enough for any provider's message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A whole answer larger than this is refused rather than buffered.
const MAX_ANSWER_BODY: usize = 32 * 1024 * 1024;

pub struct OpenAiProvider {
    endpoint: ChatEndpoint,
    prefill: Prefill,
    /// Where a request with a DeepSeek prefix goes.
    prefix_endpoint: Option<ChatEndpoint>,
    headers: HeaderMap,
    /// `headers` plus `accept: text/event-stream`.
    stream_headers: HeaderMap,
    request_usage: bool,
    http: Upstream,
}

impl OpenAiProvider {
    /// Each provider has its own connection pools, with its own connect deadline.
    pub fn new(config: &ProviderConfig) -> Result<Self, String> {
        let endpoint = config
            .base_url
            .clone()
            .ok_or("an openai provider needs a base_url")?;
        let http = Upstream::new(config.deadlines.connect)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("ragway/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &config.headers {
            // Validated with the config; a bad pair cannot reach here.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        if let Some(value) = config.api_key.as_ref().and_then(bearer) {
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut stream_headers = headers.clone();
        stream_headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        Ok(OpenAiProvider {
            endpoint,
            prefill: config.prefill,
            prefix_endpoint: config.prefill_base_url.clone(),
            headers,
            stream_headers,
            request_usage: config.request_usage,
            http,
        })
    }

    async fn send(
        &self,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Response, UpstreamError> {
        let stream_options = stream.then(|| {
            let mut options = request.stream_options.clone().unwrap_or_default();
            if self.request_usage {
                options.include_usage = Some(true);
            }
            options
        });
        let body = serde_json::to_vec(&Outgoing {
            model,
            stream,
            stream_options,
            request,
        })
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode request: {e}")))?;
        let endpoint = match &self.prefix_endpoint {
            Some(beta) if is_prefix_completion(request) => beta,
            _ => &self.endpoint,
        };
        let uri = endpoint.url_for(model).map_err(UpstreamError::Connect)?;
        let headers = match stream {
            true => &self.stream_headers,
            false => &self.headers,
        };
        let response = self.http.post(uri, headers, body).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_response(response).await)
        }
    }
}

/// The request as sent upstream: the client's fields, with the upstream model name.
#[derive(Serialize)]
struct Outgoing<'a> {
    model: &'a str,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    request: &'a ChatRequest,
}

#[async_trait]
impl ChatProvider for OpenAiProvider {
    async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<ChatCompletion, UpstreamError> {
        let response = self.send(model, request, false).await?;
        let status = response.status().as_u16();
        let body = read_capped(response, MAX_ANSWER_BODY, Overflow::Refuse).await?;
        let mut completion: ChatCompletion = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("malformed completion: {e}")))?;
        if let Some(error) = completion.extra.remove("error").filter(|e| !e.is_null()) {
            return Err(UpstreamError::in_body(status, error));
        }
        if completion.choices.is_empty() {
            return Err(UpstreamError::Protocol(
                "completion has no choices".to_owned(),
            ));
        }
        if take_blocked(&mut completion) {
            for choice in &mut completion.choices {
                choice.finish_reason = Some("content_filter".to_owned());
            }
        }
        Ok(completion)
    }

    async fn stream(
        &self,
        model: &str,
        request: &ChatRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let response = self.send(model, request, true).await?;
        Ok(chunk_stream(
            response.into_body().into_data_stream(),
            request.n.unwrap_or(1),
        ))
    }

    fn prefill(&self) -> Prefill {
        self.prefill
    }

    async fn post_json(
        &self,
        model: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, UpstreamError> {
        let uri = self
            .endpoint
            .url_at(model, path)
            .map_err(UpstreamError::Connect)?;
        let body = serde_json::to_vec(body)
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode request: {e}")))?;
        let response = self.http.post(uri, &self.headers, body).await?;
        if !response.status().is_success() {
            return Err(error_response(response).await);
        }
        let status = response.status().as_u16();
        let body = read_capped(response, MAX_ANSWER_BODY, Overflow::Refuse).await?;
        let mut answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("malformed answer: {e}")))?;
        match answer.get_mut("error").map(serde_json::Value::take) {
            Some(error) if !error.is_null() => Err(UpstreamError::in_body(status, error)),
            _ => Ok(answer),
        }
    }

    async fn open_socket(
        &self,
        model: &str,
        path: &str,
    ) -> Result<super::live::ProviderSocket, UpstreamError> {
        let uri = self
            .endpoint
            .url_at(model, path)
            .map_err(UpstreamError::Connect)?;
        let stream = self.http.connect_raw(&uri).await?;
        let mut headers = self.headers.clone();
        crate::telemetry::traces::propagate(&mut headers);
        headers.remove(header::CONTENT_TYPE);
        super::live::ProviderSocket::open(stream, &socket_url(&uri), &headers).await
    }
}

/// `uri` as a WebSocket address: `ws://` for `http://`, `wss://` for `https://`.
fn socket_url(uri: &hyper::Uri) -> String {
    let text = uri.to_string();
    match text.strip_prefix("http") {
        Some(rest) => format!("ws{rest}"),
        None => text,
    }
}

/// A DeepSeek prefix completion: its final assistant message says `prefix`.
fn is_prefix_completion(request: &ChatRequest) -> bool {
    request
        .messages
        .last()
        .is_some_and(|m| m.extra.get("prefix").and_then(serde_json::Value::as_bool) == Some(true))
}

/// Removes the moderation flag from a whole answer; true if it was set.
fn take_blocked(completion: &mut ChatCompletion) -> bool {
    let mut blocked = stream::is_true(completion.extra.remove("blocked"));
    for choice in &mut completion.choices {
        blocked |= stream::is_true(choice.extra.remove("blocked"));
    }
    blocked
}

fn bearer(key: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

async fn error_response(response: Response) -> UpstreamError {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let detail = match read_capped(response, MAX_ERROR_BODY, Overflow::Truncate).await {
        Ok(body) => ProviderError::from_body(&body),
        Err(e) => ProviderError {
            message: format!("error body unreadable: {e}"),
            ..Default::default()
        },
    };
    UpstreamError::Status {
        status,
        detail,
        retry_after,
    }
}

/// What to do with the part of a body past its cap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// An error body is read only for its message: keep the start.
    Truncate,
    /// A whole answer larger than the cap is refused rather than buffered.
    Refuse,
}

async fn read_capped(
    response: Response,
    cap: usize,
    overflow: Overflow,
) -> Result<Bytes, UpstreamError> {
    let mut body = Vec::new();
    let mut stream = response.into_body().into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| UpstreamError::Interrupted(error_chain(&*e)))?;
        let room = cap - body.len();
        if piece.len() > room {
            if overflow == Overflow::Refuse {
                return Err(UpstreamError::Protocol(format!(
                    "answer larger than {cap} bytes"
                )));
            }
            body.extend_from_slice(&piece[..room]);
            break;
        }
        body.extend_from_slice(&piece);
    }
    Ok(Bytes::from(body))
}

/// The longest pause a provider may ask for; anything longer is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let seconds = |secs: f64| {
        (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER))
            .map(|d| d.min(MAX_RETRY_AFTER))
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let when = httpdate(value)?;
    let wait = when.duration_since(SystemTime::now()).unwrap_or_default();
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Parses the IMF-fixdate form of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Out-of-range fields are not a date (and would overflow the arithmetic).
    let in_range = (1970..=9999).contains(&year)
        && (1..=31).contains(&day)
        && (0..24).contains(h)
        && (0..60).contains(m)
        && (0..=60).contains(s);
    if !in_range {
        return None;
    }
    // Days since the epoch, from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        // Absurd values are capped or refused, never a panic.
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 99999999999999 99:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after-ms", HeaderValue::from_static("NaN"));
        assert_eq!(retry_after(&h), None);
    }
}
