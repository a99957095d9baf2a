//! The forms rows leave in: JSON (one object per row, for JSON lines and the query
//! endpoint) and CSV.

use serde_json::{Map, Value};

use super::row::Chained;
use super::time;

/// The row as a JSON object: `at` as UTC text first, JSON fields as JSON, hashes
/// as hex.
pub fn json(row: &Chained) -> Value {
    let mut object = Map::new();
    object.insert("at".to_owned(), Value::String(time::format(row.row.at_us)));
    if let Ok(Value::Object(fields)) = serde_json::to_value(row) {
        object.extend(fields);
    }
    Value::Object(object)
}

/// The CSV columns, in order.
pub const CSV_HEADER: &[&str] = &[
    "at",
    "instance",
    "seq",
    "request_id",
    "tenant",
    "client_key",
    "end_user",
    "route",
    "alias",
    "target",
    "attempts",
    "cache",
    "local_fallback",
    "stream",
    "status",
    "outcome",
    "error",
    "latency_us",
    "ttft_us",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "pii",
    "prompt",
    "answer",
    "passages",
    "client_ip",
    "user_agent",
    "prev_hash",
    "row_hash",
];

/// One CSV record (RFC 4180: fields holding commas, quotes or line breaks are
/// quoted, quotes doubled), ending in CRLF.
pub fn csv_line(c: &Chained) -> String {
    let r = &c.row;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        time::format(r.at_us),
        c.instance.clone(),
        c.seq.to_string(),
        r.request_id.clone(),
        opt(&r.tenant),
        opt(&r.client_key),
        opt(&r.end_user),
        r.route.clone(),
        opt(&r.alias),
        opt(&r.target),
        r.attempts.get().to_owned(),
        opt(&r.cache),
        r.local_fallback.to_string(),
        r.stream.to_string(),
        r.status.to_string(),
        r.outcome.clone(),
        opt(&r.error),
        r.latency_us.to_string(),
        num(r.ttft_us),
        num(r.prompt_tokens),
        num(r.completion_tokens),
        r.cost.map(|c| c.to_string()).unwrap_or_default(),
        r.pii.get().to_owned(),
        opt(&r.prompt),
        opt(&r.answer),
        r.passages.get().to_owned(),
        opt(&r.client_ip),
        opt(&r.user_agent),
        crate::encode::hex(&c.prev_hash),
        crate::encode::hex(&c.row_hash),
    ];
    let mut line = fields
        .iter()
        .map(|f| quote(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

pub fn csv_header() -> String {
    format!("{}\r\n", CSV_HEADER.join(","))
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{Head, link};
    use crate::audit::row::tests::sample;

    #[test]
    fn csv_quotes_what_needs_it_and_matches_the_header() {
        let mut row = sample("r1");
        row.answer = Some("line one\nsaid \"hi\", then left".into());
        let (chained, _) = link("gw", Head::EMPTY, &[row]);
        let line = csv_line(&chained[0]);
        assert!(
            line.contains("\"line one\nsaid \"\"hi\"\", then left\""),
            "{line}"
        );
        assert!(line.ends_with("\r\n"));
        let json = json(&chained[0]);
        assert_eq!(json["at"], "2026-11-18T11:06:40.000000Z");
        assert_eq!(json["seq"], 1);
        assert_eq!(json["attempts"], serde_json::json!([]));
        assert_eq!(CSV_HEADER.len(), 30);
    }
}
