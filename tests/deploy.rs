//! The operator's files under `deploy/`: every metric the Grafana dashboard and the
//! alert rules query is one the gateway really exports.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, ask_stream, config_over};

fn read(path: &str) -> String {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exprs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs_in(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs_in(v, out)),
        _ => {}
    }
}

/// The metric families a query names (a histogram's `_bucket`, `_sum` and `_count`
/// series belong to its family).
fn families(exprs: &[String]) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bragway_[a-z0-9_]+").unwrap();
    exprs
        .iter()
        .flat_map(|e| name.find_iter(e).map(|m| m.as_str().to_owned()))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).map(str::to_owned))
                .unwrap_or(n)
        })
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/ragway.json")).unwrap();
    let mut exprs = Vec::new();
    exprs_in(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let alerts: Vec<String> = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_owned()))
        .collect();
    assert_eq!(alerts.len(), 4, "breaker, spool, error rate, p99");
    exprs.extend(alerts);
    let wanted = families(&exprs);
    assert!(wanted.len() >= 15, "{wanted:?}");

    // A gateway that has failed over, cached, streamed, masked and recorded.
    let fake = FakeProvider::start().await;
    let dir = std::env::temp_dir().join(format!("ragway-deploy-{}", uuid::Uuid::new_v4()));
    let config = format!(
        "{}\n[cache]\n[audit]\ndatabase = \"sqlite://{}\"\nspool_dir = \"{}\"\n",
        config_over(&fake, &[("chat", &["status-503#deploy", "ok"])]),
        dir.join("audit.db").display(),
        dir.join("spool").display()
    );
    let gw = Gateway::start(&config).await;
    let question = json!({"model": "chat", "temperature": 0,
        "messages": [{"role": "user", "content": "call 13812345678"}]});
    for _ in 0..2 {
        assert_eq!(gw.chat(question.clone()).await.status(), 200);
    }
    let stream = gw.chat(ask_stream("chat", "stream")).await;
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    gw.state.finish_audit().await;

    let exported = gw.get("/metrics").await.text().await.unwrap();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !exported.contains(&format!("# TYPE {name} ")))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}
