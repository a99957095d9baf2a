//! `[pii]` and `[guard]`: what happens to personal data, what the local model is
//! given, and the content guard's list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use super::{Env, Secret, as_duration};
use crate::sanitize::guard::GuardAction;
use crate::sanitize::{Action, Kind, Policy};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    /// Kind → `placeholder` | `mask` | `hash` | `block` | `allow`.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// The environment variable holding the key of the `hash` action.
    pub hash_key_env: Option<String>,
    /// What the local model is given: `sanitised` (the default) or `raw`.
    pub local_input: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub file: String,
    pub action: Option<String>,
    pub check_every: Option<String>,
}

/// What happens to personal data (see `sanitize`).
#[derive(Debug, Clone, Serialize)]
pub struct PiiConfig {
    pub actions: Policy,
    pub hash_key_env: Option<String>,
    /// The key of the `hash` action; without one, a random key per process (hashes
    /// then match only within one run).
    pub hash_key: Option<Secret>,
    pub local_input: LocalInput,
}

/// What the in-process model is given. Remote providers always get sanitised text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalInput {
    /// Placeholders, as remote providers see them.
    Sanitised,
    /// The user's own text: the data never leaves the process anyway, and a small
    /// model answers better about a number it can read.
    Raw,
}

/// The content guard's list and what a match does.
#[derive(Debug, Clone, Serialize)]
pub struct GuardConfig {
    pub file: PathBuf,
    pub action: GuardAction,
    #[serde(serialize_with = "as_duration")]
    pub check_every: Duration,
}

pub(super) fn pii(raw: RawPii, env: &Env, problems: &mut Problems) -> PiiConfig {
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

pub(super) fn guard(raw: RawGuard, problems: &mut Problems) -> Option<GuardConfig> {
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
