//! The content guard: an operator's list of sensitive words and patterns, applied to
//! what users send and to what models answer. A match is refused (`block`) or
//! starred out (`mask`). The list is a file, re-read when it changes.
//!
//! File format: one entry per line; `#` starts a comment line; a line starting with
//! `re:` is a regular expression, any other line a word. Matching ignores case.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use regex::Regex;
use serde::Serialize;

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    Block,
    Mask,
}

/// A stream holds back at most this many bytes for a pattern with no length bound.
const UNBOUNDED_HOLD: usize = 64;

/// One version of the list, compiled, with what a match does.
#[derive(Debug)]
pub struct GuardList {
    action: GuardAction,
    regex: Option<Regex>,
    /// The words, lower-cased, to hold back a stream's tail that could begin one.
    words: Vec<String>,
    /// For patterns: the longest tail that could begin a match.
    pattern_hold: usize,
}

impl GuardList {
    /// A list that matches nothing.
    pub fn empty() -> GuardList {
        GuardList {
            action: GuardAction::Block,
            regex: None,
            words: Vec::new(),
            pattern_hold: 0,
        }
    }

    pub fn parse(text: &str, action: GuardAction) -> Result<GuardList, String> {
        let mut alternatives = Vec::new();
        let mut words = Vec::new();
        let mut pattern_hold = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(pattern) = line.strip_prefix("re:") {
                let hir =
                    regex_syntax::parse(pattern).map_err(|e| format!("line {}: {e}", n + 1))?;
                let longest = hir.properties().maximum_len().unwrap_or(UNBOUNDED_HOLD + 1);
                pattern_hold = pattern_hold.max(longest.saturating_sub(1).min(UNBOUNDED_HOLD));
                alternatives.push(format!("(?:{pattern})"));
            } else {
                alternatives.push(regex::escape(line));
                words.push(line.to_lowercase());
            }
        }
        let regex = if alternatives.is_empty() {
            None
        } else {
            let joined = format!("(?i){}", alternatives.join("|"));
            Some(Regex::new(&joined).map_err(|e| e.to_string())?)
        };
        Ok(GuardList {
            action,
            regex,
            words,
            pattern_hold,
        })
    }

    pub fn check(&self, text: &str) -> Verdict {
        match self.action {
            GuardAction::Block => match self.first(text) {
                Some((start, _)) => Verdict::Blocked(text[..start].to_owned()),
                None => Verdict::Pass,
            },
            GuardAction::Mask => self.masked(text).map_or(Verdict::Pass, Verdict::Masked),
        }
    }

    /// A guard for one streamed text field.
    pub fn stream(self: &Arc<Self>) -> GuardStream {
        GuardStream {
            list: Arc::clone(self),
            held: String::new(),
        }
    }

    /// The first match in `text`.
    fn first(&self, text: &str) -> Option<(usize, usize)> {
        let m = self.regex.as_ref()?.find(text)?;
        Some((m.start(), m.end()))
    }

    /// `text` with every match starred out, or `None` when nothing matched.
    fn masked(&self, text: &str) -> Option<String> {
        let regex = self.regex.as_ref()?;
        regex.find(text)?;
        Some(
            regex
                .replace_all(text, |c: &regex::Captures<'_>| {
                    "*".repeat(c[0].chars().count())
                })
                .into_owned(),
        )
    }

    /// Where the tail of `text` that could still begin a match starts.
    fn hold_from(&self, text: &str) -> usize {
        let mut from = text.len();
        if self.words.is_empty() && self.pattern_hold == 0 {
            return from;
        }
        if self.pattern_hold > 0 {
            let mut at = text.len().saturating_sub(self.pattern_hold);
            while !text.is_char_boundary(at) {
                at += 1;
            }
            from = at;
        }
        let lower = text.to_lowercase();
        // Lower-casing can change byte lengths outside ASCII; then hold by patterns only.
        if lower.len() == text.len() {
            for word in &self.words {
                // The longest prefix first: `abab` must hold four bytes for `ababc`.
                for (cut, _) in word.char_indices().rev().filter(|&(i, _)| i > 0) {
                    if lower.ends_with(&word[..cut]) {
                        from = from.min(text.len() - cut);
                        break;
                    }
                }
            }
        }
        from
    }
}

/// The guard as the pipeline holds it: the current list, and where it comes from.
pub struct ContentGuard {
    source: Option<Source>,
    list: RwLock<Arc<GuardList>>,
}

struct Source {
    path: PathBuf,
    check_every: Duration,
    action: GuardAction,
    /// When the file was last looked at, and its modification time and length then.
    seen: Mutex<(Instant, Option<(SystemTime, u64)>)>,
}

/// What the guard made of a text.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Some of it starred out: the new text.
    Masked(String),
    /// Refused: the text before the first match.
    Blocked(String),
}

impl ContentGuard {
    /// A guard with nothing to guard against.
    pub fn disabled() -> ContentGuard {
        ContentGuard {
            source: None,
            list: RwLock::new(Arc::new(GuardList::empty())),
        }
    }

    /// Reads the list from `path`, then re-reads it when it changes (looked at
    /// no more often than `check_every`, on the request path: a `stat` call).
    pub fn from_file(
        path: &Path,
        action: GuardAction,
        check_every: Duration,
    ) -> Result<ContentGuard, String> {
        let (list, stamp) = read(path, action)?;
        Ok(ContentGuard {
            source: Some(Source {
                path: path.to_owned(),
                check_every,
                action,
                seen: Mutex::new((Instant::now(), stamp)),
            }),
            list: RwLock::new(Arc::new(list)),
        })
    }

    /// The current list (re-read first if the file changed).
    pub fn list(&self) -> Arc<GuardList> {
        self.reload_if_changed();
        Arc::clone(&self.list.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn reload_if_changed(&self) {
        let Some(source) = &self.source else {
            return;
        };
        // Another request is already looking: serve with the current list.
        let Ok(mut seen) = source.seen.try_lock() else {
            return;
        };
        if seen.0.elapsed() < source.check_every {
            return;
        }
        seen.0 = Instant::now();
        let stamp = stamp(&source.path);
        if stamp == seen.1 {
            return;
        }
        match read(&source.path, source.action) {
            Ok((list, stamp)) => {
                seen.1 = stamp;
                *self.list.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
                tracing::info!(path = %source.path.display(), "content guard list reloaded");
            }
            Err(error) => {
                // Keep guarding with the last good list; say so once per change.
                seen.1 = stamp;
                tracing::error!(path = %source.path.display(), %error, "content guard list not reloaded");
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(
    path: &Path,
    action: GuardAction,
) -> Result<(GuardList, Option<(SystemTime, u64)>), String> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = GuardList::parse(&text, action).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((list, stamp))
}

/// Guards one streamed text field. The tail that could begin a match is held back
/// until the next piece decides it.
pub struct GuardStream {
    list: Arc<GuardList>,
    held: String,
}

impl GuardStream {
    /// What can be sent of `piece` now, and whether the answer must end here.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.list.regex.is_none() {
            return (piece.to_owned(), false); // an empty list holds nothing back
        }
        self.held.push_str(piece);
        let text = std::mem::take(&mut self.held);
        match self.list.action {
            GuardAction::Block => {
                if let Some((start, _)) = self.list.first(&text) {
                    return (text[..start].to_owned(), true);
                }
                let keep = self.list.hold_from(&text);
                self.held = text[keep..].to_owned();
                (text[..keep].to_owned(), false)
            }
            GuardAction::Mask => {
                // Matches wholly before the held tail are final; one that reaches
                // into the tail is held with it.
                let mut keep = self.list.hold_from(&text);
                if let Some(regex) = &self.list.regex {
                    for m in regex.find_iter(&text) {
                        if m.start() < keep && m.end() > keep {
                            keep = m.start();
                        }
                    }
                }
                let (ready, tail) = text.split_at(keep);
                self.held = tail.to_owned();
                (
                    self.list.masked(ready).unwrap_or_else(|| ready.to_owned()),
                    false,
                )
            }
        }
    }

    /// The held tail, at the end of the stream.
    pub fn finish(&mut self) -> (String, bool) {
        let text = std::mem::take(&mut self.held);
        match self.list.action {
            GuardAction::Block => match self.list.first(&text) {
                Some((start, _)) => (text[..start].to_owned(), true),
                None => (text, false),
            },
            GuardAction::Mask => (self.list.masked(&text).unwrap_or(text), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(action: GuardAction, text: &str) -> Arc<GuardList> {
        Arc::new(GuardList::parse(text, action).unwrap())
    }

    #[test]
    fn words_and_patterns_block_or_mask() {
        let g = list(GuardAction::Block, "# words\n机密\nre:project-[0-9]+\n");
        assert_eq!(g.check("这是机密文件"), Verdict::Blocked("这是".into()));
        assert_eq!(
            g.check("see PROJECT-42 notes"),
            Verdict::Blocked("see ".into())
        );
        assert_eq!(g.check("nothing here"), Verdict::Pass);
        let g = list(GuardAction::Mask, "机密\n");
        assert_eq!(g.check("机密文件"), Verdict::Masked("**文件".into()));
    }

    #[test]
    fn a_word_split_across_chunks_is_still_caught() {
        let mut stream = list(GuardAction::Block, "forbidden\n").stream();
        assert_eq!(stream.push("this is for"), ("this is ".to_owned(), false));
        assert_eq!(stream.push("bid"), (String::new(), false));
        assert_eq!(stream.push("den text"), (String::new(), true));
        let mut stream = list(GuardAction::Mask, "forbidden\n").stream();
        assert_eq!(stream.push("a forb"), ("a ".to_owned(), false));
        assert_eq!(stream.push("idden b"), ("********* b".to_owned(), false));
        assert_eq!(stream.finish(), (String::new(), false));
    }

    #[test]
    fn a_pattern_match_reaching_into_the_held_tail_is_held_whole() {
        let mut stream = list(GuardAction::Mask, "re:ab[0-9]{3}\n").stream();
        let (sent, _) = stream.push("xxab123");
        assert_eq!(sent, "xx");
        assert_eq!(stream.finish(), ("*****".to_owned(), false));
    }
}
