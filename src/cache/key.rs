//! The cache key: SHA-256 over a canonical encoding of everything that shapes an
//! answer — tenant, model alias, what retrieval would ground it in (corpus
//! generation and template version), and the sanitised request with its sampling
//! fields, tools and any extra field. What cannot change the answer is left out:
//! `stream` and `stream_options` (a hit is replayed in either shape), `user` (the
//! end user's id), and the request's own `model` (the alias stands for it).

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::CacheKey;
use crate::wire::ChatRequest;

/// Fields that do not change the answer.
const IGNORED: [&str; 4] = ["model", "stream", "stream_options", "user"];

/// `None` when the request cannot be encoded (then it is not cached).
/// `purged` is the tenant's purge generation: a purge changes every key.
pub fn key(
    tenant: &str,
    alias: &str,
    corpus: Option<&str>,
    purged: u64,
    prompt: &ChatRequest,
) -> Option<CacheKey> {
    let mut request = serde_json::to_value(prompt).ok()?;
    if let Value::Object(fields) = &mut request {
        for field in IGNORED {
            fields.remove(field);
        }
    }
    let mut hash = Sha256::new();
    // Length-prefixed parts: no two different inputs encode alike.
    for part in [tenant, alias, corpus.unwrap_or("")] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.update([u8::from(corpus.is_some())]);
    hash.update(purged.to_le_bytes());
    let mut canonical = String::new();
    write_canonical(&request, &mut canonical);
    hash.update(canonical.as_bytes());
    Some(CacheKey {
        tenant: tenant.into(),
        hash: hash.finalize().into(),
    })
}

/// JSON with object keys sorted at every level (the order a client sent them in
/// must not matter).
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn what_shapes_the_answer_changes_the_key() {
        let base =
            request(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let k = key("t", "chat", Some("1/abc"), 0, &base).unwrap();
        assert_eq!(k, key("t", "chat", Some("1/abc"), 0, &base).unwrap());
        assert_ne!(k, key("u", "chat", Some("1/abc"), 0, &base).unwrap());
        assert_ne!(k, key("t", "other", Some("1/abc"), 0, &base).unwrap());
        assert_ne!(k, key("t", "chat", Some("2/abc"), 0, &base).unwrap());
        assert_ne!(k, key("t", "chat", None, 0, &base).unwrap());
        assert_ne!(k, key("t", "chat", Some("1/abc"), 1, &base).unwrap());
        for changed in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"seed":1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stop":["x"]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"enable_thinking":true}"#,
        ] {
            assert_ne!(
                k,
                key("t", "chat", Some("1/abc"), 0, &request(changed)).unwrap(),
                "{changed}"
            );
        }
    }

    #[test]
    fn what_does_not_shape_it_leaves_the_key() {
        let base =
            request(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let k = key("t", "chat", None, 0, &base).unwrap();
        for same in [
            r#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"alice"}"#,
            r#"{"model":"other","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        ] {
            assert_eq!(
                k,
                key("t", "chat", None, 0, &request(same)).unwrap(),
                "{same}"
            );
        }
    }
}
