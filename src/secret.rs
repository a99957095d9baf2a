//! Keeping credentials out of every text that leaves the process: responses, log
//! lines, audit rows.
//!
//! A provider, or a proxy in front of it, may echo the request's `Authorization`
//! header in its error body; a misconfigured one may print its own key. So every
//! secret the config reads is registered here (see `config::Secret::new`) and
//! [`scrub`] replaces it byte for byte, and also anything shaped like a credential:
//! an `Authorization` header, a bearer token, `api_key=…`, `password: …`, and the
//! common key shapes (`sk-…`, `AKIA…`, `ghp_…`, JWTs).

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Captures, Regex};

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not registered: redacting every "abc" in a text would hide
/// more than it protects, and no real key is that short.
const MIN_SECRET_LEN: usize = 8;

#[derive(Default)]
struct Known {
    secrets: Vec<String>,
    matcher: Option<AhoCorasick>,
}

fn known() -> &'static RwLock<Known> {
    static KNOWN: OnceLock<RwLock<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| RwLock::new(Known::default()))
}

/// Remembers `secret` so that [`scrub`] removes it from now on. Registering is
/// for the life of the process: a secret once configured stays hidden.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let Ok(mut known) = known().write() else {
        return;
    };
    if known.secrets.iter().any(|s| s == secret) {
        return;
    }
    known.secrets.push(secret.to_owned());
    // Longest first where two overlap, so a key that holds another is hidden whole.
    known.matcher = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&known.secrets)
        .ok();
}

/// `text` without registered secrets or credential-shaped values. Borrows when
/// there was nothing to hide (the common case costs one automaton pass and one
/// regex search).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let known = match known().read() {
        Ok(known) => known
            .matcher
            .as_ref()
            .filter(|m| m.is_match(text))
            .map(|m| m.replace_all(text, &vec![REDACTED; known.secrets.len()])),
        // A writer panicked mid-update: hide everything rather than risk a leak.
        Err(_) => Some(REDACTED.to_owned()),
    };
    match known {
        Some(owned) => Cow::Owned(shapes(&owned).into_owned()),
        None => shapes(text),
    }
}

fn shapes(text: &str) -> Cow<'_, str> {
    shape_pattern().replace_all(text, |caps: &Captures| match caps.name("label") {
        Some(label) => format!("{}{REDACTED}", label.as_str()),
        None => REDACTED.to_owned(),
    })
}

/// Credential shapes. `label` (kept) is the name before a value; the rest of the
/// match is the value (replaced).
fn shape_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let patterns = [
            // `Authorization: Bearer x`, `"authorization":"Basic x"`, `api-key=x`,
            // `password: x`: the name is kept, the value (and its scheme) goes.
            r#"(?P<label>(?i:\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key|\baccess[-_]?token|\brefresh[-_]?token|\bclient[-_]?secret|\bsecret[-_]?key|\bpassword|\bpasswd|\bsecret|\btoken)["']?\s*[:=]\s*["']?)(?i:(?:bearer|basic|token|apikey)\s+)?[^\s"',;}&<>]+"#,
            r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{6,}",
            r"\bsk-[A-Za-z0-9_-]{12,}",
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            r"\b(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}",
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        ];
        Regex::new(&patterns.join("|")).expect("the credential patterns compile")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_replaced_byte_for_byte() {
        register("pk-live-0000-registered-key");
        let text = "upstream said: you sent pk-live-0000-registered-key, twice: pk-live-0000-registered-key!";
        let clean = scrub(text);
        assert!(!clean.contains("registered-key"), "{clean}");
        assert_eq!(clean.matches(REDACTED).count(), 2, "{clean}");
        // Too short to register: left alone.
        register("abc");
        assert_eq!(scrub("abc abc"), "abc abc");
    }

    #[test]
    fn credential_shapes_are_hidden_and_their_names_kept() {
        for (text, gone) in [
            (
                r#"{"headers":{"Authorization":"Bearer zz-9f8e7d6c5b4a"}}"#,
                "9f8e7d6c5b4a",
            ),
            ("authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("bad request: api_key=abcdef123456&x=1", "abcdef123456"),
            ("X-Api-Key: q1w2e3r4t5", "q1w2e3r4t5"),
            ("password: hunter2hunter2", "hunter2hunter2"),
            ("key sk-proj-AbCdEf1234567890 rejected", "AbCdEf1234567890"),
            ("aws AKIAIOSFODNN7EXAMPLE denied", "IOSFODNN7EXAMPLE"),
            (
                "the token bearer abcdef.ghijkl.mn was refused",
                "abcdef.ghijkl",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlMTIz",
                "eyJzdWIiOiIxMjM0In0",
            ),
        ] {
            let clean = scrub(text);
            assert!(!clean.contains(gone), "{text} → {clean}");
            assert!(clean.contains(REDACTED), "{text} → {clean}");
        }
        let header = scrub("Authorization: Bearer zz-9f8e7d6c5b4a");
        assert_eq!(header, format!("Authorization: {REDACTED}"));
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in [
            "the price of the model is not set (model: deepseek-v3)",
            "This model's maximum context length is 8192 tokens",
            "max_tokens: 512, tokens used: 20",
            "rate limited, retry after 2 s",
            "模型超时，请稍后再试",
        ] {
            assert!(matches!(scrub(text), Cow::Borrowed(_)), "{text}");
        }
    }
}

/// A secret read from the environment. Its `Debug` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Also registers the value with this module's registry, so that it never leaves
    /// the process in a response, a log line or an audit row.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}
