//! `[providers.NAME]`: each upstream API or the local model, with its deadlines,
//! retry and breaker (the settings types are the generate stage's own).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::validate::Problems;
use super::{Env, LocalModelConfig, ProviderConfig, ProviderKind};
use crate::generate::Deadlines;
use crate::generate::endpoint::ChatEndpoint;
use crate::generate::resume::Prefill;
use crate::resilience::{BreakerPolicy, RetryPolicy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub request_usage: Option<bool>,
    /// Ask for a stream even when the client wants a whole answer, and assemble it:
    /// then the first-token and idle deadlines can tell a silent provider from a
    /// slow answer.
    pub stream_upstream: Option<bool>,
    /// How it continues an answer another target began: `none`, `deepseek`,
    /// `vllm` or `assistant`.
    pub prefill: Option<String>,
    /// DeepSeek's beta base URL, for `prefill = "deepseek"` (by default the
    /// base_url with `/beta` in place of a final `/v1`).
    pub prefill_base_url: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_token_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub breaker: RawBreaker,
    /// The provider's own quota, over all its models: `{ rpm, tpm, tpd,
    /// concurrency }`.
    pub limits: Option<crate::quota::Limits>,
    /// Each model's own quota (SiliconFlow limits calls per model).
    #[serde(default)]
    pub model_limits: BTreeMap<String, crate::quota::Limits>,
    // kind = "local" only:
    /// The GGUF file.
    pub model: Option<String>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub queue: Option<usize>,
    pub system_prompt: Option<String>,
    pub max_tokens: Option<usize>,
    pub repeat_penalty: Option<f32>,
    pub requantize: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub base: Option<String>,
    pub cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub open_for: Option<String>,
    pub max_open_for: Option<String>,
}

pub(super) fn provider(
    name: &str,
    raw: RawProvider,
    env: &Env,
    problems: &mut Problems,
) -> Option<ProviderConfig> {
    let at = format!("providers.{name}");
    let before = problems.count();
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
    let (prefill, prefill_base_url) = prefill(&at, kind, &raw, problems);
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
    if problems.count() > before {
        return None;
    }
    let limit_problems = raw
        .limits
        .iter()
        .map(|l| l.check(&format!("{at}.limits")))
        .chain(
            raw.model_limits
                .iter()
                .map(|(model, l)| l.check(&format!("{at}.model_limits.{model}"))),
        );
    for invalid in limit_problems.filter_map(Result::err) {
        problems.add(invalid.field, invalid.message);
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
        prefill,
        prefill_base_url,
        deadlines,
        retry,
        breaker,
        limits: raw.limits,
        model_limits: raw.model_limits,
    })
}

/// The prefill dialect and, for DeepSeek's, where prefix completions go.
fn prefill(
    at: &str,
    kind: Option<ProviderKind>,
    raw: &RawProvider,
    problems: &mut Problems,
) -> (Prefill, Option<ChatEndpoint>) {
    let dialect = match raw
        .prefill
        .as_deref()
        .map(|name| (name, Prefill::parse(name)))
    {
        None => Prefill::None,
        Some((_, Some(dialect))) => dialect,
        Some((name, None)) => {
            problems.add(
                format!("{at}.prefill"),
                format!("`{name}` is not one of: none, deepseek, vllm, assistant"),
            );
            Prefill::None
        }
    };
    if dialect != Prefill::None && kind == Some(ProviderKind::Local) {
        problems.add(
            format!("{at}.prefill"),
            "is only for kind = \"openai\" (the local model continues an answer natively)",
        );
    }
    let beta = match (
        dialect,
        raw.prefill_base_url.as_deref(),
        raw.base_url.as_deref(),
    ) {
        (Prefill::Deepseek, Some(url), _) => Some(url.to_owned()),
        (Prefill::Deepseek, None, Some(base)) => {
            let base = base.trim().trim_end_matches('/');
            Some(format!("{}/beta", base.strip_suffix("/v1").unwrap_or(base)))
        }
        (_, Some(_), _) => {
            problems.add(
                format!("{at}.prefill_base_url"),
                "is only for prefill = \"deepseek\"",
            );
            None
        }
        _ => None,
    };
    let beta = beta.and_then(|url| {
        ChatEndpoint::parse(&url)
            .map_err(|e| problems.add(format!("{at}.prefill_base_url"), e))
            .ok()
    });
    (dialect, beta)
}

pub(super) fn local_model(
    at: &str,
    raw: &RawProvider,
    problems: &mut Problems,
) -> Option<LocalModelConfig> {
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
pub(super) fn only_local(at: &str, raw: &RawProvider, problems: &mut Problems) {
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

pub(super) fn retry(at: &str, raw: RawRetry, problems: &mut Problems) -> RetryPolicy {
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

pub(super) fn breaker(at: &str, raw: RawBreaker, problems: &mut Problems) -> BreakerPolicy {
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
