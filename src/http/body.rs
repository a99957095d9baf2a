//! Reading a JSON body with errors a client can act on: the wrong content type
//! (415), too large (413), not UTF-8, not JSON, or a field of the wrong shape — named
//! by its path (`messages[0].role`).

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::GatewayError;

pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, GatewayError> {
    if !is_json(headers) {
        return Err(GatewayError::UnsupportedMediaType(
            "Content-Type must be application/json".to_owned(),
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::PayloadTooLarge { limit }
        } else if super::limits::timed_out(&rejection) {
            GatewayError::RequestTimeout
        } else {
            GatewayError::invalid(format!("cannot read the request body: {rejection}"), None)
        }
    })?;
    if body.is_empty() {
        return Err(GatewayError::invalid("the request body is empty", None));
    }
    if let Err(e) = std::str::from_utf8(&body) {
        return Err(GatewayError::invalid(
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&body);
    // The plain parse first; a body it refuses is read again, tracking the path, to
    // say which field was wrong (tracking costs on every request otherwise).
    let value = match T::deserialize(&mut de) {
        Ok(value) => value,
        Err(_) => {
            let mut again = serde_json::Deserializer::from_slice(&body);
            return Err(match serde_path_to_error::deserialize::<_, T>(&mut again) {
                Err(error) => describe(error),
                // Cannot happen: the same bytes, the same type.
                Ok(_) => GatewayError::invalid("the request body is not valid JSON", None),
            });
        }
    };
    // One JSON value and nothing after it but whitespace: `{…}GARBAGE` is refused,
    // as OpenAI refuses it, rather than read as its first value.
    de.end().map_err(|e| {
        GatewayError::invalid(
            format!(
                "the request body is not valid JSON: {}",
                strip_position(&e.to_string())
            ),
            None,
        )
    })?;
    Ok(value)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> GatewayError {
    use serde_json::error::Category;
    let inner = error.inner();
    if matches!(
        inner.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return GatewayError::invalid(format!("the request body is not valid JSON: {inner}"), None);
    }
    let path = error.path().to_string();
    let mut param = (path != ".").then_some(path);
    let message = strip_position(&inner.to_string());
    // "missing field `messages`" at the top level: name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        param = Some(match param {
            Some(parent) => format!("{parent}.{field}"),
            None => field.to_owned(),
        });
    }
    let message = match &param {
        Some(param) => format!("invalid `{param}`: {message}"),
        None => format!("invalid request: {message}"),
    };
    GatewayError::invalid(message, param)
}

/// serde_json appends " at line 1 column 42"; the path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// A 400 naming the request's field `param`.
pub fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message, Some(param.to_owned()))
}

/// Refuses the first member of `asked` that is not in `known`, by name (`what`
/// says what the object is: "a rerank request").
pub fn only_known(
    asked: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    what: &str,
) -> Result<(), GatewayError> {
    match asked.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(
            unknown,
            format!("`{unknown}`: not a field of {what}"),
        )),
        None => Ok(()),
    }
}
