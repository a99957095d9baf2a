//! A record as the audit table stores it: names and numbers, JSON for the lists,
//! and the text kept as `audit.text` says. The same shape goes to the spool, the
//! table, exports and the query endpoint.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::CallRecord;
use super::time;
use crate::encode::hex;

/// How much of the prompt and answer the record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextMode {
    /// The sanitised text (placeholders, never raw values).
    Full,
    /// The SHA-256 of the sanitised text: proves what was said without keeping it.
    Hash,
    /// Nothing.
    None,
}

/// A price per million tokens, in the operator's currency.
pub use crate::call::Price;

/// One call, ready to store. Not yet on a chain (see [`Chained`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub at_us: i64,
    pub request_id: String,
    pub tenant: Option<String>,
    pub client_key: Option<String>,
    pub end_user: Option<String>,
    pub route: String,
    pub alias: Option<String>,
    pub target: Option<String>,
    pub attempts: Box<RawValue>,
    pub cache: Option<String>,
    pub local_fallback: bool,
    pub stream: bool,
    pub status: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub latency_us: i64,
    pub ttft_us: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// Prompt tokens the provider served from its cache, when it reported any.
    /// Rows written before this field existed have none (and hash as they did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<i64>,
    pub cost: Option<f64>,
    pub pii: Box<RawValue>,
    pub prompt: Option<String>,
    pub answer: Option<String>,
    pub passages: Box<RawValue>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A row with its place on its instance's chain.
#[derive(Debug, Clone, Serialize)]
pub struct Chained {
    pub instance: String,
    pub seq: i64,
    #[serde(flatten)]
    pub row: Row,
    #[serde(serialize_with = "as_hex")]
    pub prev_hash: [u8; 32],
    #[serde(serialize_with = "as_hex")]
    pub row_hash: [u8; 32],
}

fn as_hex<S: serde::Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

/// Turns records into rows: applies the text mode and the prices, and redacts the
/// text columns that come from the client or a provider rather than through the
/// sanitize stage.
#[derive(Clone)]
pub struct RowBuilder {
    pub text: TextMode,
    /// By target id (`provider:model`).
    pub prices: HashMap<String, Price>,
    pub redact: std::sync::Arc<dyn super::Redact>,
}

impl RowBuilder {
    pub fn row(&self, r: CallRecord) -> Row {
        let attempts: Vec<_> = r
            .attempts
            .iter()
            .map(|a| {
                let mut attempt = serde_json::json!({
                    "target": &*a.target,
                    "outcome": a.failure.as_ref().map_or("ok", |f| f.class),
                    "http_status": a.failure.as_ref().and_then(|f| f.status),
                    "error": a.failure.as_ref().map(|f| self.redacted(crate::encode::truncate(&f.message, 500))),
                    "latency_ms": round3(a.latency.as_secs_f64() * 1000.0),
                });
                // Only where it is one: earlier rows' attempts read the same.
                if let Some(kind) = a.kind.name() {
                    attempt["kind"] = kind.into();
                }
                attempt
            })
            .collect();
        let pii: serde_json::Map<_, _> = r
            .pii
            .iter()
            .map(|(kind, n)| ((*kind).to_owned(), (*n).into()))
            .collect();
        let passages: Vec<_> = r
            .passages
            .iter()
            .map(|p| serde_json::json!({"doc_id": self.redacted(&p.doc_id), "chunk": p.chunk, "score": p.score}))
            .collect();
        let cost = match (&r.target, r.usage) {
            (Some(target), Some(usage)) => self.prices.get(target).map(|p| {
                p.cost(
                    usage.prompt_tokens,
                    usage.cached_tokens(),
                    usage.completion_tokens,
                )
            }),
            _ => None,
        };
        Row {
            at_us: time::micros(r.at),
            request_id: match r.origin.request_id_is_ours {
                true => r.request_id,
                false => self.redacted(&r.request_id),
            },
            tenant: r.tenant,
            client_key: r.key_id,
            // Sanitised with the request (placeholders numbered with its prompt's).
            end_user: r.user.as_deref().map(clean),
            route: r.origin.route.to_string(),
            alias: r.alias.as_deref().map(|a| self.redacted(a)),
            target: r.target,
            attempts: raw(&attempts),
            cache: r.cache.map(|c| c.as_str().to_owned()),
            local_fallback: r.local,
            stream: r.stream,
            status: i64::from(r.status),
            outcome: r.outcome.as_str().to_owned(),
            error: r.error.map(str::to_owned),
            latency_us: micros(r.latency),
            ttft_us: r.time_to_first_token.map(micros),
            prompt_tokens: r.usage.map(|u| u.prompt_tokens as i64),
            completion_tokens: r.usage.map(|u| u.completion_tokens as i64),
            cached_tokens: r
                .usage
                .map(|u| u.cached_tokens())
                .filter(|n| *n > 0)
                .map(|n| n as i64),
            cost,
            pii: raw(&pii),
            prompt: self.text(&r.prompt),
            answer: self.text(&r.answer),
            passages: raw(&passages),
            client_ip: r.origin.client_ip.map(|ip| ip.to_string()),
            user_agent: r.origin.user_agent.as_deref().map(|ua| self.redacted(ua)),
        }
    }

    fn redacted(&self, text: &str) -> String {
        clean(&self.redact.redact(text))
    }

    fn text(&self, text: &str) -> Option<String> {
        match self.text {
            _ if text.is_empty() => None,
            TextMode::Full => Some(clean(text)),
            TextMode::Hash => Some(hex(&Sha256::digest(text.as_bytes()))),
            TextMode::None => None,
        }
    }
}

/// Text as every database can store it: a NUL (which Postgres refuses) becomes
/// U+FFFD.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn raw<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| empty_json())
}

fn empty_json() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("`null` is JSON")
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// SHA-256 over a canonical encoding of the row, its place on the chain and the
/// previous row's hash: every field in a fixed order, each either absent (one 0
/// byte) or present (a 1 byte, its length as 8 bytes, its bytes). Names are hashed
/// as names, not as the ids a database gave them, so a chain verifies wherever its
/// rows are copied.
pub fn row_hash(instance: &str, seq: i64, row: &Row, prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Canonical(Sha256::new());
    h.0.update(b"ragway-audit-1");
    h.text(Some(instance));
    h.int(Some(seq));
    h.int(Some(row.at_us));
    h.text(Some(&row.request_id));
    h.text(row.tenant.as_deref());
    h.text(row.client_key.as_deref());
    h.text(row.end_user.as_deref());
    h.text(Some(&row.route));
    h.text(row.alias.as_deref());
    h.text(row.target.as_deref());
    h.text(Some(row.attempts.get()));
    h.text(row.cache.as_deref());
    h.int(Some(i64::from(row.local_fallback)));
    h.int(Some(i64::from(row.stream)));
    h.int(Some(row.status));
    h.text(Some(&row.outcome));
    h.text(row.error.as_deref());
    h.int(Some(row.latency_us));
    h.int(row.ttft_us);
    h.int(row.prompt_tokens);
    h.int(row.completion_tokens);
    h.bytes(
        row.cost
            .map(|c| c.to_bits().to_be_bytes())
            .as_ref()
            .map(|b| &b[..]),
    );
    h.text(Some(row.pii.get()));
    h.text(row.prompt.as_deref());
    h.text(row.answer.as_deref());
    h.text(Some(row.passages.get()));
    h.text(row.client_ip.as_deref());
    h.text(row.user_agent.as_deref());
    h.bytes(Some(prev_hash));
    // Fields added after the first version: hashed only when present, each under
    // its name, so every row written before keeps its hash.
    if let Some(cached) = row.cached_tokens {
        h.text(Some("cached_tokens"));
        h.int(Some(cached));
    }
    h.0.finalize().into()
}

struct Canonical(Sha256);

impl Canonical {
    fn bytes(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.0.update([0]),
            Some(b) => {
                self.0.update([1]);
                self.0.update((b.len() as u64).to_be_bytes());
                self.0.update(b);
            }
        }
    }

    fn text(&mut self, value: Option<&str>) {
        self.bytes(value.map(str::as_bytes));
    }

    fn int(&mut self, value: Option<i64>) {
        self.bytes(value.map(|v| v.to_be_bytes()).as_ref().map(|b| &b[..]));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(request_id: &str) -> Row {
        Row {
            at_us: 1_795_000_000_000_000,
            request_id: request_id.to_owned(),
            tenant: Some("acme".into()),
            client_key: Some("k1".into()),
            end_user: None,
            route: "/v1/chat/completions".into(),
            alias: Some("chat".into()),
            target: Some("p:m".into()),
            attempts: RawValue::from_string("[]".into()).unwrap(),
            cache: Some("miss".into()),
            local_fallback: false,
            stream: false,
            status: 200,
            outcome: "ok".into(),
            error: None,
            latency_us: 1234,
            ttft_us: None,
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cached_tokens: None,
            cost: Some(0.5),
            pii: RawValue::from_string("{}".into()).unwrap(),
            prompt: Some("[]".into()),
            answer: Some("hi".into()),
            passages: RawValue::from_string("[]".into()).unwrap(),
            client_ip: Some("127.0.0.1".into()),
            user_agent: None,
        }
    }

    #[test]
    fn every_field_is_in_the_hash() {
        let base = sample("r1");
        let h = row_hash("i", 1, &base, &[0; 32]);
        let mut changed = Vec::new();
        let mut check = |f: &dyn Fn(&mut Row)| {
            let mut r = base.clone();
            f(&mut r);
            changed.push(row_hash("i", 1, &r, &[0; 32]) != h);
        };
        check(&|r| r.at_us += 1);
        check(&|r| r.tenant = None);
        check(&|r| r.end_user = Some(String::new()));
        check(&|r| r.answer = Some("hi!".into()));
        check(&|r| r.cost = Some(0.5000001));
        check(&|r| r.pii = RawValue::from_string("{\"phone\":1}".into()).unwrap());
        check(&|r| r.status = 500);
        check(&|r| r.stream = true);
        check(&|r| r.cached_tokens = Some(0));
        assert!(changed.iter().all(|c| *c), "{changed:?}");
        assert_ne!(row_hash("j", 1, &base, &[0; 32]), h);
        assert_ne!(row_hash("i", 2, &base, &[0; 32]), h);
        assert_ne!(row_hash("i", 1, &base, &[1; 32]), h);
    }

    /// A row as the first version hashed it (no field added since), pinned: a
    /// change to the encoding would break every stored chain.
    #[test]
    fn a_row_without_later_fields_hashes_as_the_first_version_did() {
        let h = row_hash("i", 1, &sample("r1"), &[0; 32]);
        assert_eq!(hex(&h), FIRST_VERSION_HASH);
    }

    const FIRST_VERSION_HASH: &str =
        "c8370de356a544e05d4c63ffa1052895ae8c5f7f56a45b82fa64c3b110e123e3";

    #[test]
    fn neighbouring_fields_cannot_trade_bytes() {
        let mut a = sample("r1");
        let mut b = sample("r1");
        a.tenant = Some("ab".into());
        a.client_key = Some("c".into());
        b.tenant = Some("a".into());
        b.client_key = Some("bc".into());
        assert_ne!(
            row_hash("i", 1, &a, &[0; 32]),
            row_hash("i", 1, &b, &[0; 32])
        );
    }

    /// Marks whatever passes through it.
    struct Marked;

    impl crate::audit::Redact for Marked {
        fn redact(&self, text: &str) -> String {
            format!("[{text}]")
        }
    }

    #[test]
    fn a_request_id_the_gateway_made_is_kept_as_made_and_a_clients_is_redacted() {
        let builder = RowBuilder {
            text: TextMode::Full,
            prices: HashMap::new(),
            redact: std::sync::Arc::new(Marked),
        };
        let mut origin = crate::audit::Origin::internal("/v1/chat/completions");
        origin.user_agent = Some("agent".into());
        let from_client = CallRecord::refused("id-1", origin.clone(), 400, None);
        let row = builder.row(from_client);
        assert_eq!(
            (row.request_id.as_str(), row.user_agent.as_deref()),
            ("[id-1]", Some("[agent]"))
        );
        origin.request_id_is_ours = true;
        let ours = builder.row(CallRecord::refused("id-2", origin, 400, None));
        assert_eq!(
            (ours.request_id.as_str(), ours.user_agent.as_deref()),
            ("id-2", Some("[agent]"))
        );
    }
}
