//! The per-request vault: which placeholder stands for which value, and the
//! restoring of placeholders in the answer — whole, or chunk by chunk in a stream.

use std::collections::HashMap;
use std::sync::Arc;

use super::kind::{Action, Kind};

const ACTIONS: usize = 5;

/// Lives as long as one request; never shared between requests, never stored.
#[derive(Debug, Default, Clone)]
pub struct Vault {
    /// Placeholder → the value it stands for.
    originals: HashMap<String, String>,
    /// Value → its placeholder, so a repeated value gets the same one.
    placeholders: HashMap<String, String>,
    next: [u32; Kind::COUNT],
    detections: [[u32; ACTIONS]; Kind::COUNT],
}

impl Vault {
    pub fn new() -> Vault {
        Vault::default()
    }

    /// The placeholder for `value`, numbered per kind in order of first appearance.
    pub fn placeholder(&mut self, kind: Kind, value: &str) -> &str {
        if !self.placeholders.contains_key(value) {
            let n = &mut self.next[kind.index()];
            *n += 1;
            let placeholder = format!("<{}_{}>", kind.tag(), n);
            self.originals.insert(placeholder.clone(), value.to_owned());
            self.placeholders.insert(value.to_owned(), placeholder);
        }
        &self.placeholders[value]
    }

    pub(super) fn count(&mut self, kind: Kind, action: Action) {
        self.detections[kind.index()][action as usize] += 1;
    }

    /// How many values of each kind were found, and what was done with them.
    pub fn detections(&self) -> impl Iterator<Item = (Kind, Action, u32)> + '_ {
        const ALL: [Action; ACTIONS] = [
            Action::Placeholder,
            Action::Mask,
            Action::Hash,
            Action::Block,
            Action::Allow,
        ];
        Kind::PII.into_iter().flat_map(move |kind| {
            ALL.into_iter().filter_map(move |action| {
                let n = self.detections[kind.index()][action as usize];
                (n > 0).then_some((kind, action, n))
            })
        })
    }

    /// Detections per kind, whatever was done with them.
    pub fn counts(&self) -> Vec<(Kind, u32)> {
        Kind::PII
            .into_iter()
            .map(|k| (k, self.detections[k.index()].iter().sum()))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Every placeholder given out so far.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.originals.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// `text` with every placeholder of this request replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        self.restore_into(text, &mut out, Escape::None);
        out
    }

    /// Like [`Vault::restore`], for text that is JSON (a tool call's `arguments`):
    /// values are escaped as inside a JSON string, where placeholders stand.
    pub fn restore_json(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        self.restore_into(text, &mut out, Escape::Json);
        out
    }

    fn restore_into(&self, text: &str, out: &mut String, escape: Escape) {
        if self.originals.is_empty() {
            out.push_str(text);
            return;
        }
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            out.push_str(&rest[..open]);
            let candidate = &rest[open..];
            match candidate.find('>').map(|close| &candidate[..=close]) {
                Some(token) if self.originals.contains_key(token) => {
                    let value = &self.originals[token];
                    match escape {
                        Escape::None => out.push_str(value),
                        Escape::Json => {
                            let quoted = serde_json::Value::from(value.as_str()).to_string();
                            out.push_str(&quoted[1..quoted.len() - 1]);
                        }
                    }
                    rest = &candidate[token.len()..];
                }
                _ => {
                    out.push('<');
                    rest = &candidate[1..];
                }
            }
        }
        out.push_str(rest);
    }

    /// Whether `tail` (starting with `<`) could still grow into one of the
    /// placeholders: only then is it held back in a stream.
    fn could_become_placeholder(&self, tail: &str) -> bool {
        !tail.contains('>') && self.originals.keys().any(|p| p.starts_with(tail))
    }
}

#[derive(Debug, Clone, Copy)]
enum Escape {
    None,
    Json,
}

/// Restores one streamed text field. A placeholder may arrive split across chunks
/// (`<PHO` + `NE_1>`): the shortest tail that could still become a placeholder is
/// held back until the next piece decides it, and nothing else is delayed.
pub struct StreamRestorer {
    vault: Arc<Vault>,
    held: String,
    escape: Escape,
}

impl StreamRestorer {
    pub fn new(vault: Arc<Vault>) -> StreamRestorer {
        StreamRestorer {
            vault,
            held: String::new(),
            escape: Escape::None,
        }
    }

    /// For a streamed tool call's `arguments` (see [`Vault::restore_json`]).
    pub fn for_json(vault: Arc<Vault>) -> StreamRestorer {
        StreamRestorer {
            escape: Escape::Json,
            ..StreamRestorer::new(vault)
        }
    }

    /// What can be sent of `piece` now.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        let keep = match self.held.rfind('<') {
            Some(open) if self.vault.could_become_placeholder(&self.held[open..]) => open,
            _ => self.held.len(),
        };
        let mut out = String::with_capacity(keep);
        self.vault
            .restore_into(&self.held[..keep], &mut out, self.escape);
        self.held.drain(..keep);
        out
    }

    /// Releases what was held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        let mut out = String::with_capacity(held.len());
        self.vault.restore_into(&held, &mut out, self.escape);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_same_placeholder_numbered_per_kind() {
        let mut vault = Vault::new();
        assert_eq!(vault.placeholder(Kind::Mobile, "13812345678"), "<PHONE_1>");
        assert_eq!(vault.placeholder(Kind::Email, "a@b.cn"), "<EMAIL_1>");
        assert_eq!(vault.placeholder(Kind::Mobile, "13912345678"), "<PHONE_2>");
        assert_eq!(vault.placeholder(Kind::Mobile, "13812345678"), "<PHONE_1>");
        assert_eq!(
            vault.restore("call <PHONE_2> or <PHONE_1>, not <PHONE_3> <"),
            "call 13912345678 or 13812345678, not <PHONE_3> <"
        );
    }

    #[test]
    fn values_restored_into_json_are_escaped() {
        let mut vault = Vault::new();
        vault.placeholder(Kind::Secret, "pa\"ss\\");
        let arguments = r#"{"password": "<SECRET_1>"}"#;
        let restored = vault.restore_json(arguments);
        let parsed: serde_json::Value = serde_json::from_str(&restored).unwrap();
        assert_eq!(parsed["password"], "pa\"ss\\");
    }

    #[test]
    fn a_stream_holds_back_only_a_possible_placeholder() {
        let mut vault = Vault::new();
        vault.placeholder(Kind::Mobile, "13812345678");
        let mut stream = StreamRestorer::new(Arc::new(vault));
        assert_eq!(stream.push("a < b, call <PH"), "a < b, call ");
        assert_eq!(stream.push("ONE_1"), "");
        assert_eq!(stream.push("> now <X"), "13812345678 now <X");
        assert_eq!(stream.push("<PHONE_"), "");
        assert_eq!(stream.finish(), "<PHONE_");
    }
}
