//! Raw config → [`Config`], collecting every problem instead of stopping at the first,
//! so an operator fixes a file in one round.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use std::path::PathBuf;

use super::raw::{
    RawAuth, RawBreaker, RawConfig, RawEmbeddings, RawGuard, RawLog, RawModel, RawPii, RawProvider,
    RawRetry, RawServer,
};
use super::{
    AuthConfig, ClientKey, Config, EmbeddingsConfig, Env, GuardConfig, LocalInput,
    LocalModelConfig, LogConfig, LogFormat, ModelConfig, PiiConfig, Problem, ProviderConfig,
    ProviderKind, RagSettings, Secret, ServerConfig, TargetRef, parse_duration,
};
use crate::generate::Deadlines;
use crate::generate::endpoint::ChatEndpoint;
use crate::resilience::{BreakerPolicy, RetryPolicy};
use crate::sanitize::guard::GuardAction;
use crate::sanitize::{Action, Kind, Policy};

/// tiktoken's vocabulary file, looked for beside the embedding model's directory.
const DEFAULT_TOKEN_VOCABULARY: &str = "cl100k_base.tiktoken";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: u64 = 4 * 1024 * 1024;
const MAX_BODY_CEILING: u64 = 256 * 1024 * 1024;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// No deadline or breaker period is longer than a day.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Collects problems while validation goes on.
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A positive duration at `key`, or `default` when it is not set.
    pub(super) fn duration(
        &mut self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_DURATION => d,
            Some(Ok(_)) => {
                self.add(key, "must be longer than zero and at most 24h");
                default
            }
            Some(Err(e)) => {
                self.add(key, e);
                default
            }
        }
    }

    /// The secret in the environment variable `var` names, which must be set.
    pub(super) fn secret(&mut self, key: &str, var: &str, env: &Env) -> Option<Secret> {
        match env.get(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                self.add(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }
}

/// The config, and every problem found in it (the caller decides which matter).
pub(super) fn validate(raw: RawConfig, env: &Env) -> (Config, Vec<Problem>) {
    let mut problems = Problems(Vec::new());
    let server = server(raw.server, &mut problems);
    let log = log(raw.log, &mut problems);
    let auth = auth(raw.auth, env, &mut problems);
    // Routes are checked against every declared provider, so a provider with a bad
    // key is reported once, not again by every route that uses it.
    let declared: BTreeSet<String> = raw.providers.keys().cloned().collect();
    let locals: BTreeSet<String> = raw
        .providers
        .iter()
        .filter(|(_, p)| p.kind == "local")
        .map(|(name, _)| name.clone())
        .collect();
    if locals.len() > 1 {
        problems.add(
            "providers",
            "at most one provider may be of kind = \"local\"",
        );
    }
    let embeddings = embeddings(raw.embeddings, &mut problems);
    let pii = pii(raw.pii, env, &mut problems);
    let guard = raw.guard.and_then(|g| guard(g, &mut problems));
    let retrieval = raw
        .retrieval
        .map(|r| super::retrieval::retrieval(r, embeddings.is_some(), env, &mut problems));
    let rag_base = retrieval.as_ref().map(|r| r.defaults.clone());
    let cache = raw
        .cache
        .map(|c| super::cache::cache(c, embeddings.is_some(), &mut problems));
    let audit = raw
        .audit
        .map(|a| super::audit::audit(a, env, &mut problems));
    let providers: BTreeMap<_, _> = raw
        .providers
        .into_iter()
        .filter_map(|(name, p)| Some((name.clone(), provider(&name, p, env, &mut problems)?)))
        .collect();
    let models = raw
        .models
        .into_iter()
        .filter_map(|(alias, m)| {
            Some((
                alias.clone(),
                model(
                    &alias,
                    m,
                    &declared,
                    &locals,
                    rag_base.as_ref(),
                    &mut problems,
                )?,
            ))
        })
        .collect();
    let config = Config {
        server,
        log,
        auth,
        providers,
        models,
        embeddings,
        pii,
        guard,
        retrieval,
        cache,
        audit,
    };
    (config, problems.0)
}

fn pii(raw: RawPii, env: &Env, problems: &mut Problems) -> PiiConfig {
    let mut actions = Policy::default();
    for (name, action) in &raw.actions {
        let key = format!("pii.actions.{name}");
        match (Kind::from_name(name), Action::from_name(action)) {
            (Some(kind), Some(action)) => actions.set(kind, action),
            (None, _) => {
                let kinds: Vec<&str> = Kind::PII.iter().map(|k| k.name()).collect();
                problems.add(key, format!("unknown kind; one of: {}", kinds.join(", ")));
            }
            (_, None) => problems.add(
                key,
                "must be \"placeholder\", \"mask\", \"hash\", \"block\" or \"allow\"",
            ),
        }
    }
    let hash_key = raw
        .hash_key_env
        .as_deref()
        .and_then(|var| problems.secret("pii.hash_key_env", var, env));
    let local_input = match raw.local_input.as_deref() {
        None | Some("sanitised" | "sanitized") => LocalInput::Sanitised,
        Some("raw") => LocalInput::Raw,
        Some(_) => {
            problems.add("pii.local_input", "must be \"sanitised\" or \"raw\"");
            LocalInput::Sanitised
        }
    };
    PiiConfig {
        actions,
        hash_key_env: raw.hash_key_env,
        hash_key,
        local_input,
    }
}

fn guard(raw: RawGuard, problems: &mut Problems) -> Option<GuardConfig> {
    let action = match raw.action.as_deref() {
        None | Some("block") => GuardAction::Block,
        Some("mask") => GuardAction::Mask,
        Some(_) => {
            problems.add("guard.action", "must be \"block\" or \"mask\"");
            return None;
        }
    };
    let check_every = problems.duration(
        "guard.check_every",
        raw.check_every.as_deref(),
        Duration::from_secs(1),
    );
    Some(GuardConfig {
        file: PathBuf::from(raw.file),
        action,
        check_every,
    })
}

fn server(raw: RawServer, problems: &mut Problems) -> ServerConfig {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|e| {
        problems.add(
            "server.listen",
            format!("`{listen_text}` is not an address: {e}"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let max_body = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 || max_body > MAX_BODY_CEILING {
        problems.add(
            "server.max_body_bytes",
            format!("must be between 1 and {MAX_BODY_CEILING}"),
        );
    }
    let mut seconds = |key: &str, value: Option<u64>, default: u64| {
        let value = value.unwrap_or(default);
        if !(1..=3600).contains(&value) {
            problems.add(format!("server.{key}"), "must be between 1 and 3600");
        }
        Duration::from_secs(value.clamp(1, 3600))
    };
    let shutdown_grace = seconds("shutdown_grace_secs", raw.shutdown_grace_secs, 10);
    let header_read_timeout = seconds("header_read_timeout_secs", raw.header_read_timeout_secs, 10);
    let body_read_timeout = seconds("body_read_timeout_secs", raw.body_read_timeout_secs, 60);
    let mut count = |key: &str, value: Option<u64>, default: u64| {
        let value = value.unwrap_or(default);
        if !(1..=1_000_000).contains(&value) {
            problems.add(format!("server.{key}"), "must be between 1 and 1000000");
        }
        value.clamp(1, 1_000_000) as usize
    };
    let max_connections = count("max_connections", raw.max_connections, 10_000);
    let max_connections_per_peer = count(
        "max_connections_per_peer",
        raw.max_connections_per_peer,
        1_000,
    );
    let metrics_listen = raw.metrics_listen.as_deref().and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|e| {
                problems.add(
                    "server.metrics_listen",
                    format!("`{text}` is not an address: {e}"),
                );
            })
            .ok()
    });
    if metrics_listen == Some(listen) {
        problems.add(
            "server.metrics_listen",
            "must differ from server.listen (leave it out to serve /metrics there)",
        );
    }
    ServerConfig {
        listen,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        shutdown_grace,
        header_read_timeout,
        body_read_timeout,
        max_connections,
        max_connections_per_peer,
        metrics_listen,
    }
}

fn log(raw: RawLog, problems: &mut Problems) -> LogConfig {
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        problems.add("log.level", format!("`{level}` is not a log filter: {e}"));
    }
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.add("log.format", format!("`{other}` is not one of: text, json"));
            LogFormat::Text
        }
    };
    LogConfig { level, format }
}

fn auth(raw: RawAuth, env: &Env, problems: &mut Problems) -> AuthConfig {
    let mut ids = BTreeSet::new();
    let mut keys = Vec::new();
    let tenants = raw.keys.iter().map(|k| k.tenant.clone()).collect();
    for (i, key) in raw.keys.into_iter().enumerate() {
        let at = format!("auth.keys[{i}]");
        if key.id.trim().is_empty() || !ids.insert(key.id.clone()) {
            problems.add(format!("{at}.id"), "must be non-empty and unique");
        }
        if key.tenant.trim().is_empty() {
            problems.add(format!("{at}.tenant"), "must not be empty");
        }
        let digest = match (&key.key_env, &key.sha256) {
            (Some(var), None) => problems
                .secret(&format!("{at}.key_env"), var, env)
                .map(|secret| Sha256::digest(secret.expose().as_bytes()).into()),
            (None, Some(hex)) => parse_sha256(hex).or_else(|| {
                problems.add(format!("{at}.sha256"), "must be 64 hex digits");
                None
            }),
            _ => {
                problems.add(&at, "set exactly one of key_env or sha256");
                None
            }
        };
        if let Some(sha256) = digest {
            keys.push(ClientKey {
                id: key.id,
                tenant: key.tenant,
                sha256,
            });
        }
    }
    let admin_key = raw
        .admin_key_env
        .as_deref()
        .and_then(|var| problems.secret("auth.admin_key_env", var, env));
    AuthConfig {
        keys,
        tenants,
        admin_key_env: raw.admin_key_env,
        admin_key,
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn provider(
    name: &str,
    raw: RawProvider,
    env: &Env,
    problems: &mut Problems,
) -> Option<ProviderConfig> {
    let at = format!("providers.{name}");
    let before = problems.0.len();
    if name.is_empty() || name.contains(':') {
        problems.add(
            &at,
            "a provider name must be non-empty and must not contain ':'",
        );
    }
    let kind = match raw.kind.as_str() {
        "openai" => Some(ProviderKind::Openai),
        "local" => Some(ProviderKind::Local),
        other => {
            problems.add(
                format!("{at}.kind"),
                format!("`{other}` is not one of: openai, local"),
            );
            None
        }
    };
    let base_url = match (kind, raw.base_url.as_deref()) {
        (Some(ProviderKind::Openai), Some(url)) => ChatEndpoint::parse(url)
            .map_err(|e| problems.add(format!("{at}.base_url"), e))
            .ok(),
        (Some(ProviderKind::Openai), None) => {
            problems.add(format!("{at}.base_url"), "is required");
            None
        }
        (_, Some(_)) => {
            problems.add(format!("{at}.base_url"), "is only for kind = \"openai\"");
            None
        }
        (_, None) => None,
    };
    let local = match kind {
        Some(ProviderKind::Local) => local_model(&at, &raw, problems),
        _ => {
            only_local(&at, &raw, problems);
            None
        }
    };
    // A model on this machine's CPU needs longer for its first token.
    let slow = kind == Some(ProviderKind::Local);
    let api_key = raw
        .api_key_env
        .as_deref()
        .and_then(|var| problems.secret(&format!("{at}.api_key_env"), var, env));
    let defaults = if slow {
        Deadlines::local()
    } else {
        Deadlines::default()
    };
    let deadlines = Deadlines {
        connect: problems.duration(
            &format!("{at}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            defaults.connect,
        ),
        first_token: problems.duration(
            &format!("{at}.first_token_timeout"),
            raw.first_token_timeout.as_deref(),
            defaults.first_token,
        ),
        idle: problems.duration(
            &format!("{at}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            defaults.idle,
        ),
    };
    let retry = retry(&at, raw.retry, problems);
    let breaker = breaker(&at, raw.breaker, problems);
    for (header, value) in &raw.headers {
        let key = format!("{at}.headers.{header}");
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            problems.add(&key, "is not a valid HTTP header");
        } else if header.eq_ignore_ascii_case("authorization") {
            problems.add(&key, "secrets belong in api_key_env, not in the file");
        }
    }
    if problems.0.len() > before {
        return None;
    }
    Some(ProviderConfig {
        kind: kind?,
        base_url,
        local,
        api_key_env: raw.api_key_env,
        api_key,
        headers: raw.headers,
        request_usage: raw.request_usage.unwrap_or(true),
        stream_upstream: raw.stream_upstream.unwrap_or(true),
        deadlines,
        retry,
        breaker,
    })
}

fn local_model(at: &str, raw: &RawProvider, problems: &mut Problems) -> Option<LocalModelConfig> {
    let Some(model) = raw.model.as_deref() else {
        problems.add(
            format!("{at}.model"),
            "is required for kind = \"local\" (a GGUF file)",
        );
        return None;
    };
    let model = PathBuf::from(model);
    if !model.is_file() {
        problems.add(
            format!("{at}.model"),
            format!(
                "{} does not exist (make models fetches the default files)",
                model.display()
            ),
        );
    }
    let device = raw.device.clone().unwrap_or_else(|| "auto".to_owned());
    if !valid_device(&device) {
        problems.add(
            format!("{at}.device"),
            format!("`{device}` is not one of: auto, cpu, cuda:N"),
        );
    }
    let threads = raw.threads.unwrap_or(1);
    if !(1..=256).contains(&threads) {
        problems.add(format!("{at}.threads"), "must be between 1 and 256");
    }
    let queue = raw.queue.unwrap_or(8);
    if !(1..=10_000).contains(&queue) {
        problems.add(format!("{at}.queue"), "must be between 1 and 10000");
    }
    let max_tokens = raw.max_tokens.unwrap_or(512);
    if max_tokens == 0 {
        problems.add(format!("{at}.max_tokens"), "must be at least 1");
    }
    let repeat_penalty = raw.repeat_penalty.unwrap_or(1.1);
    if !(1.0..=2.0).contains(&repeat_penalty) {
        problems.add(
            format!("{at}.repeat_penalty"),
            "must be between 1.0 and 2.0",
        );
    }
    Some(LocalModelConfig {
        model,
        device,
        threads,
        queue,
        system_prompt: raw.system_prompt.clone(),
        max_tokens,
        repeat_penalty,
        requantize: raw.requantize.unwrap_or(true),
    })
}

/// Keys that mean something only for a local model.
fn only_local(at: &str, raw: &RawProvider, problems: &mut Problems) {
    let set = [
        ("model", raw.model.is_some()),
        ("device", raw.device.is_some()),
        ("threads", raw.threads.is_some()),
        ("queue", raw.queue.is_some()),
        ("system_prompt", raw.system_prompt.is_some()),
        ("max_tokens", raw.max_tokens.is_some()),
        ("repeat_penalty", raw.repeat_penalty.is_some()),
        ("requantize", raw.requantize.is_some()),
    ];
    for (key, _) in set.iter().filter(|(_, is_set)| *is_set) {
        problems.add(format!("{at}.{key}"), "is only for kind = \"local\"");
    }
}

pub(super) fn valid_device(spec: &str) -> bool {
    matches!(spec, "auto" | "cpu")
        || spec
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

fn embeddings(raw: Option<RawEmbeddings>, problems: &mut Problems) -> Option<EmbeddingsConfig> {
    let raw = raw?;
    let model = PathBuf::from(&raw.model);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !model.join(file).is_file() {
            problems.add(
                "embeddings.model",
                format!(
                    "{} has no {file} (make models fetches the default files)",
                    model.display()
                ),
            );
        }
    }
    let device = raw.device.unwrap_or_else(|| "auto".to_owned());
    if !valid_device(&device) {
        problems.add(
            "embeddings.device",
            format!("`{device}` is not one of: auto, cpu, cuda:N"),
        );
    }
    // Token-id input needs OpenAI's vocabulary: the file named, or the one `make
    // models` puts beside the model directory.
    let token_vocabulary = match raw.token_vocabulary {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                problems.add(
                    "embeddings.token_vocabulary",
                    format!("{} is not a file", path.display()),
                );
            }
            Some(path)
        }
        None => model
            .parent()
            .map(|dir| dir.join(DEFAULT_TOKEN_VOCABULARY))
            .filter(|path| path.is_file()),
    };
    Some(EmbeddingsConfig {
        name: raw.name.unwrap_or_else(|| "embeddings".to_owned()),
        model,
        device,
        token_vocabulary,
    })
}

fn retry(at: &str, raw: RawRetry, problems: &mut Problems) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let attempts = raw.attempts.unwrap_or(defaults.attempts);
    if !(1..=10).contains(&attempts) {
        problems.add(format!("{at}.retry.attempts"), "must be between 1 and 10");
    }
    RetryPolicy {
        attempts,
        base: problems.duration(
            &format!("{at}.retry.base"),
            raw.base.as_deref(),
            defaults.base,
        ),
        cap: problems.duration(&format!("{at}.retry.cap"), raw.cap.as_deref(), defaults.cap),
    }
}

fn breaker(at: &str, raw: RawBreaker, problems: &mut Problems) -> BreakerPolicy {
    let defaults = BreakerPolicy::default();
    let failures = raw.failures.unwrap_or(defaults.failures);
    if failures == 0 {
        problems.add(format!("{at}.breaker.failures"), "must be at least 1");
    }
    let open_for = problems.duration(
        &format!("{at}.breaker.open_for"),
        raw.open_for.as_deref(),
        defaults.open_for,
    );
    let max_open_for = problems.duration(
        &format!("{at}.breaker.max_open_for"),
        raw.max_open_for.as_deref(),
        defaults.max_open_for.max(open_for),
    );
    if max_open_for < open_for {
        problems.add(
            format!("{at}.breaker.max_open_for"),
            "must not be shorter than open_for",
        );
    }
    BreakerPolicy {
        failures,
        open_for,
        max_open_for,
    }
}

fn model(
    alias: &str,
    raw: RawModel,
    providers: &BTreeSet<String>,
    locals: &BTreeSet<String>,
    rag_base: Option<&RagSettings>,
    problems: &mut Problems,
) -> Option<ModelConfig> {
    let at = format!("models.{alias}");
    let before = problems.0.len();
    if alias.trim().is_empty() {
        problems.add(&at, "a model alias must not be empty");
    }
    if raw.targets.is_empty() {
        problems.add(format!("{at}.targets"), "must list at least one target");
    }
    let mut targets = Vec::new();
    for (i, text) in raw.targets.iter().enumerate() {
        let key = format!("{at}.targets[{i}]");
        match text.split_once(':') {
            // A local provider serves one model: its name alone is the target.
            None if locals.contains(text.as_str()) => targets.push(TargetRef {
                provider: text.clone(),
                model: String::new(),
            }),
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                if !providers.contains(provider) {
                    problems.add(&key, format!("provider `{provider}` is not configured"));
                }
                targets.push(TargetRef {
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                });
            }
            _ => problems.add(&key, format!("`{text}` is not `provider:model`")),
        }
    }
    let request_timeout = problems.duration(
        &format!("{at}.request_timeout"),
        raw.request_timeout.as_deref(),
        DEFAULT_REQUEST_TIMEOUT,
    );
    let rag = match rag_base {
        Some(base) => Some(super::retrieval::alias_settings(
            &at, raw.rag, base, problems,
        )),
        None => {
            if raw.rag.is_some() {
                problems.add(format!("{at}.rag"), "needs a [retrieval] section");
            }
            None
        }
    };
    let cache = super::cache::policy(&at, raw.cache.as_deref(), problems);
    (problems.0.len() == before).then_some(ModelConfig {
        targets,
        description: raw.description,
        request_timeout,
        failover_on_content_filter: raw.failover_on_content_filter.unwrap_or(false),
        local_fallback: raw.local_fallback.unwrap_or(true),
        rag,
        cache,
    })
}
