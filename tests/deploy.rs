//! The operator's files under `deploy/`: every metric the Grafana dashboard and the
//! alert rules query is one the gateway really exports.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::{FakeProvider, Gateway, ask_stream, config_over};

/// The Qdrant server release the deploy files pin and the suite tests against.
const QDRANT_RELEASE: &str = "v1.16.3";

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
    let alerts: Vec<String> = alert_rules()
        .iter()
        .map(|rule| rule["expr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        alerts.len(),
        5,
        "breaker, spool, error rate, two of first tokens"
    );
    exprs.extend(alerts);
    let wanted = families(&exprs);
    assert!(wanted.len() >= 15, "{wanted:?}");

    // A gateway that has failed over, cached, streamed, masked and recorded.
    let fake = FakeProvider::start().await;
    let dir = std::env::temp_dir().join(format!("ragway-deploy-{}", uuid::Uuid::new_v4()));
    // Governed, with prices: spend, tokens and a budget to export; one call refused.
    let config = format!(
        "{}\n[cache]\n[audit]\ndatabase = \"sqlite://{}\"\nspool_dir = \"{}\"\n\
         [audit.prices]\n\"fake:ok\" = {{ input = 1.0, output = 2.0 }}\n\
         [auth]\nadmin_key_env = \"ADMIN\"\n[governance]\ndatabase = \"sqlite://{}\"\n",
        config_over(&fake, &[("chat", &["status-503#deploy", "ok"])]),
        dir.join("audit.db").display(),
        dir.join("spool").display(),
        dir.join("keys.db").display(),
    );
    let gw = Gateway::start_with_env(&config, &[("ADMIN", "adm")]).await;
    let put = gw
        .http()
        .put(format!("{}/admin/tenants/ops", gw.url))
        .bearer_auth("adm")
        .json(&json!({"budget": {"amount": 100, "period": "month"}, "limits": {"rpm": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let created: Value = gw
        .http()
        .post(format!("{}/admin/keys", gw.url))
        .bearer_auth("adm")
        .json(&json!({"tenant": "ops"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    while gw.state.client_keys.tenant_grant("ops").is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let send = |body: Value| {
        gw.http()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let question = json!({"model": "chat", "temperature": 0,
        "messages": [{"role": "user", "content": "call 13812345678"}]});
    for _ in 0..2 {
        assert_eq!(send(question.clone()).await.unwrap().status(), 200);
    }
    let stream = send(ask_stream("chat", "stream")).await.unwrap();
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    assert_eq!(send(question.clone()).await.unwrap().status(), 429);
    gw.idle().await;
    gw.state
        .finish_audit(std::time::Duration::from_secs(30))
        .await;

    let exported = gw.get("/metrics").await.text().await.unwrap();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !exported.contains(&format!("# TYPE {name} ")))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

/// `host:port` of a URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap();
    let (host, port) = authority.split_once(':').expect("a port in the URL");
    (host.to_owned(), port.parse().unwrap())
}

/// The services of `docker-compose config` output, each with its lines.
fn services(normalised: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in normalised.lines() {
        if !line.starts_with(' ') {
            inside = line == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        match line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            Some(name) if !name.starts_with(' ') => out.push((name.to_owned(), String::new())),
            _ => {
                let (_, body) = out.last_mut().expect("a service before its lines");
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

#[test]
fn the_compose_file_is_valid_and_matches_the_config_it_mounts() {
    let root = env!("CARGO_MANIFEST_DIR");
    // As an operator would run it: the file beside a `.env` made from the example.
    let dir = std::env::temp_dir().join(format!("ragway-compose-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        format!("{root}/docker-compose.yml"),
        dir.join("docker-compose.yml"),
    )
    .unwrap();
    std::fs::copy(format!("{root}/.env.example"), dir.join(".env")).unwrap();
    let output = std::process::Command::new("docker-compose")
        .arg("config")
        .current_dir(&dir)
        .output()
        .expect("docker-compose (make test installs it)");
    let normalised = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let services = services(&normalised);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "ragway",
        "postgres",
        "redis",
        "qdrant",
        "prometheus",
        "grafana",
        "vllm",
    ] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    for (name, body) in &services {
        assert!(body.contains("healthcheck:"), "{name} has no health check");
        assert!(body.contains("mem_limit:"), "{name} has no memory limit");
    }
    let body_of = |name: &str| &services.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(body_of("qdrant").contains(&format!("image: qdrant/qdrant:{QDRANT_RELEASE}")));
    // Prometheus evaluates the shipped rules and scrapes ragway where it listens;
    // Grafana is provisioned with it and the shipped dashboard.
    let prometheus = body_of("prometheus");
    assert!(prometheus.contains("deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"));
    assert!(prometheus.contains("deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    let scrape = &yaml_documents("deploy/compose/prometheus.yml")[0];
    assert_eq!(scrape["rule_files"][0], "/etc/prometheus/alerts.yml");
    let compose_port = toml::from_str::<toml::Table>(&read("deploy/compose/ragway.toml")).unwrap()
        ["server"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        scrape["scrape_configs"][0]["static_configs"][0]["targets"][0],
        format!("ragway:{compose_port}")
    );
    let grafana = body_of("grafana");
    assert!(
        grafana.contains("deploy/grafana/ragway.json:/var/lib/grafana/dashboards/ragway.json:ro")
    );
    let dashboards = &yaml_documents("deploy/compose/grafana/dashboards.yml")[0];
    assert_eq!(
        dashboards["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let sources = &yaml_documents("deploy/compose/grafana/datasources.yml")[0];
    assert_eq!(sources["datasources"][0]["url"], "http://prometheus:9090");
    let ragway = &services.iter().find(|(n, _)| n == "ragway").unwrap().1;
    assert!(
        ragway.contains("deploy/compose/ragway.toml:/etc/ragway/ragway.toml:ro"),
        "the config is mounted:\n{ragway}"
    );
    assert!(
        ragway.contains("RAGWAY_CONFIG: /etc/ragway/ragway.toml"),
        "{ragway}"
    );
    assert!(
        ragway.contains("/models:/models:ro"),
        "model files are mounted, not baked in"
    );

    // The config it mounts names those services, on the ports their images serve.
    let toml_text = read("deploy/compose/ragway.toml");
    let config: toml::Table = toml::from_str(&toml_text).unwrap();
    let env: Vec<(String, String)> = read(".env.example")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    // Compose builds the audit URL from the Postgres password.
    let audit_url = ragway
        .lines()
        .find_map(|l| l.trim().strip_prefix("RAGWAY_AUDIT_DATABASE_URL: "))
        .expect("ragway gets the audit database's URL")
        .to_owned();
    assert_eq!(
        audit_url,
        "postgres://ragway:change-me@postgres:5432/ragway"
    );
    let reached = [
        host_port(config["cache"]["redis_url"].as_str().unwrap()),
        host_port(config["retrieval"]["url"].as_str().unwrap()),
        host_port(config["providers"]["vllm"]["base_url"].as_str().unwrap()),
        host_port(&audit_url),
    ];
    let image_ports = [
        ("redis", 6379),
        ("qdrant", 6334),
        ("vllm", 8000),
        ("postgres", 5432),
    ];
    for (host, port) in reached {
        assert!(
            names.contains(&host.as_str()),
            "{host} is not a compose service"
        );
        assert!(
            image_ports.contains(&(host.as_str(), port)),
            "{host}:{port}"
        );
    }
    // And it is a valid ragway config (model paths as mounted, here under models/).
    let local = toml_text.replace("\"/models/", &format!("\"{root}/models/"));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("RAGWAY_AUDIT_DATABASE_URL", &audit_url));
    ragway::config::Config::from_toml(&local, &ragway::config::Env::from_pairs(env))
        .unwrap_or_else(|e| panic!("deploy/compose/ragway.toml: {e}"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every document of a YAML file, as JSON (Debian's python3-yaml, which `make test`
/// installs with docker-compose, does the parsing).
fn yaml_documents(path: &str) -> Vec<Value> {
    let output = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            &match path.starts_with('/') {
                true => path.to_owned(),
                false => format!("{}/{path}", env!("CARGO_MANIFEST_DIR")),
            },
        ])
        .output()
        .expect("python3 with yaml");
    assert!(
        output.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The rules of deploy/prometheus/alerts.yml.
fn alert_rules() -> Vec<Value> {
    let alerts = yaml_documents("deploy/prometheus/alerts.yml");
    alerts[0]["groups"][0]["rules"].as_array().unwrap().clone()
}

/// What `kubectl apply -k deploy/k8s` applies: kustomize's rendering, by the
/// kubectl on the machine; without one, the resources as they are and the
/// ConfigMap the generator would make (a notice says so).
fn kustomized() -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let rendered = std::process::Command::new("kubectl")
        .args(["kustomize", &format!("{root}/deploy/k8s")])
        .output();
    match rendered {
        Ok(output) if output.status.success() => {
            let path =
                std::env::temp_dir().join(format!("ragway-k8s-{}.yaml", uuid::Uuid::new_v4()));
            std::fs::write(&path, &output.stdout).unwrap();
            let docs = yaml_documents(path.to_str().unwrap());
            std::fs::remove_file(path).unwrap();
            docs
        }
        _ => {
            eprintln!(
                "no kubectl: the manifests are checked as written, not as kustomize renders them"
            );
            let kustomization = &yaml_documents("deploy/k8s/kustomization.yaml")[0];
            let mut docs: Vec<Value> = kustomization["resources"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| yaml_documents(&format!("deploy/k8s/{}", r.as_str().unwrap())))
                .collect();
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ragway-config"},
                "data": {"ragway.toml": read("deploy/k8s/ragway.toml")},
            }));
            docs
        }
    }
}

/// The restricted Pod Security standard's checks of a pod template.
fn assert_restricted(pod: &Value, name: &str) {
    let spec = &pod["spec"];
    let context = &spec["securityContext"];
    assert_eq!(context["runAsNonRoot"], true, "{name}");
    assert!(context["runAsUser"].as_u64().unwrap() > 0, "{name}");
    assert_eq!(
        context["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(spec.get(key).is_none_or(|v| v == false), "{name}: {key}");
    }
    for volume in spec["volumes"].as_array().unwrap() {
        assert!(volume.get("hostPath").is_none(), "{name}: {volume}");
    }
    for container in spec["containers"].as_array().unwrap() {
        let context = &container["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            context["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert!(
            context.get("privileged").is_none_or(|p| p == false),
            "{name}"
        );
        assert!(
            container["startupProbe"].is_object(),
            "{name} has a startup probe"
        );
    }
}

#[test]
fn the_kubernetes_manifests_meet_the_restricted_standard_and_roll_on_a_config_change() {
    let docs = kustomized();
    let deployment = of_kind(&docs, "Deployment", "ragway");
    let pod = &deployment["spec"]["template"];
    assert_restricted(pod, "ragway");
    assert_restricted(
        &of_kind(
            &yaml_documents("deploy/k8s/vllm.yaml"),
            "Deployment",
            "vllm",
        )["spec"]["template"],
        "vllm",
    );
    // A read-only root: what ragway writes has a volume of its own.
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let toml: toml::Table = toml::from_str(&read("deploy/k8s/ragway.toml")).unwrap();
    let spool = toml["audit"]["spool_dir"].as_str().unwrap();
    for writable in [spool, "/tmp"] {
        assert!(
            mounts.iter().any(|m| writable.starts_with(m) && *m != "/"),
            "{writable} is not on a volume: {mounts:?}"
        );
    }
    // Spread over zones and nodes.
    let keys: Vec<&str> = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    // The config's ConfigMap is the one the pods mount (with kustomize, named by
    // its content's hash: a change makes a new name, and the pods roll).
    let mounted = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .unwrap();
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the generated ConfigMap");
    assert_eq!(config_map["metadata"]["name"], mounted);
    assert!(mounted.starts_with("ragway-config"), "{mounted}");
    assert_eq!(
        config_map["data"]["ragway.toml"].as_str().unwrap(),
        read("deploy/k8s/ragway.toml")
    );
    // The Operator's objects: the ServiceMonitor finds the Service and its port;
    // the PrometheusRule says what alerts.yml says.
    let service = of_kind(&docs, "Service", "ragway");
    let monitor = of_kind(&docs, "ServiceMonitor", "ragway");
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][label], value, "{label}");
    }
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port)
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let rule = of_kind(&docs, "PrometheusRule", "ragway");
    assert_eq!(
        rule["spec"]["groups"][0]["rules"],
        Value::Array(alert_rules())
    );
    // Time to the first token is judged per alias, not against one global figure.
    let rules = alert_rules();
    let first_token: Vec<&Value> = rules
        .iter()
        .filter(|r| {
            r["expr"]
                .as_str()
                .unwrap()
                .contains("ragway_time_to_first_token")
        })
        .collect();
    assert_eq!(first_token.len(), 2);
    for rule in first_token {
        let expr = rule["expr"].as_str().unwrap();
        assert!(expr.contains("sum by (model, le)"), "{expr}");
        assert!(!expr.contains("> 0.5"), "{expr}");
    }
}

#[test]
fn the_kubernetes_manifests_parse_and_agree_with_each_other() {
    let ragway = kustomized();
    let vllm = yaml_documents("deploy/k8s/vllm.yaml");
    let secrets = yaml_documents("deploy/k8s/secret.example.yaml");
    assert!(
        ragway.iter().all(|d| d["kind"] != "Secret"),
        "applying the manifests must not overwrite the operator's secret"
    );
    let claim = of_kind(&ragway, "PersistentVolumeClaim", "ragway-models");
    assert!(
        claim["spec"]["accessModes"][0]
            .as_str()
            .unwrap()
            .ends_with("Many"),
        "shared by replicas"
    );
    for doc in ragway.iter().chain(&vllm).chain(&secrets) {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{doc}"
        );
        assert!(doc["metadata"]["name"].is_string(), "{doc}");
    }
    let values = yaml_documents("deploy/k8s/qdrant-values.yaml");
    assert_eq!(values[0]["replicaCount"], 3);
    // One Qdrant release everywhere: the one the suite's server runs.
    assert_eq!(values[0]["image"]["tag"], QDRANT_RELEASE);
    assert!(read("docker-compose.yml").contains(&format!("image: qdrant/qdrant:{QDRANT_RELEASE}")));
    assert!(read("scripts/qdrant-server.sh").contains(&format!("qdrant-{QDRANT_RELEASE}")));

    // The config the Deployment mounts validates, with the Secret's values.
    let config_text = read("deploy/k8s/ragway.toml").replace(
        "\"/models/",
        &format!("\"{}/models/", env!("CARGO_MANIFEST_DIR")),
    );
    let secret = of_kind(&secrets, "Secret", "ragway-secrets")["stringData"]
        .as_object()
        .unwrap();
    let env: Vec<(&str, &str)> = secret
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let config =
        ragway::config::Config::from_toml(&config_text, &ragway::config::Env::from_pairs(env))
            .unwrap_or_else(|e| panic!("the ConfigMap's ragway.toml: {e}"));

    let deployment = of_kind(&ragway, "Deployment", "ragway");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], config.server.listen.port());
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    // Each replica its own chain: the instance is the pod's name.
    let instance = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "RAGWAY__AUDIT__INSTANCE")
        .expect("the audit instance is set per pod");
    assert_eq!(
        instance["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Draining fits in the pod's grace period: the preStop pause, then the whole
    // exit (open streams and the audit writer), which the shutdown grace bounds.
    let needed = 5 + config.server.shutdown_grace.as_secs() + 1;
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            >= needed,
        "grace period shorter than the drain ({needed} s)"
    );
    let service = of_kind(&ragway, "Service", "ragway");
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);

    // The providers and stores the config names are the Services that serve them.
    let toml: toml::Table = toml::from_str(&config_text).unwrap();
    let (host, vllm_port) = host_port(toml["providers"]["vllm"]["base_url"].as_str().unwrap());
    let vllm_service = of_kind(&vllm, "Service", &host);
    assert_eq!(vllm_service["spec"]["ports"][0]["port"], vllm_port);
    // The chart's gRPC port, not overridden by the values.
    assert!(values[0].get("service").is_none());
    let (_, grpc_port) = host_port(toml["retrieval"]["url"].as_str().unwrap());
    assert_eq!(grpc_port, 6334);
}

/// The licence the manifest declares is the one shipped beside the code.
#[test]
fn the_license_file_is_the_one_the_manifest_declares() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""), "{manifest}");
    let license = read("LICENSE");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0"
    );
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}
