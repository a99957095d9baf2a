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
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::{Anchored, Input};
use serde::Serialize;

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    Block,
    Mask,
}

/// How far back in a stream's text a match may begin, for a pattern with no length
/// bound (a longer match can stream out; words and bounded patterns are exact).
const UNBOUNDED_LOOKBACK: usize = 4096;

/// One version of the list, compiled, with what a match does.
#[derive(Debug)]
pub struct GuardList {
    action: GuardAction,
    regex: Option<Regex>,
    /// The same entries as a lazy DFA, asked in streams whether a match could still
    /// begin at a place once more text arrives — exact under case folding and any
    /// script, where comparing lower-cased prefixes is not.
    dfa: Option<DFA>,
    /// The longest match in bytes (case folds included): no match that could still
    /// grow begins further back than this from the end of the text.
    lookback: usize,
}

impl GuardList {
    /// A list that matches nothing.
    pub fn empty() -> GuardList {
        GuardList {
            action: GuardAction::Block,
            regex: None,
            dfa: None,
            lookback: 0,
        }
    }

    pub fn parse(text: &str, action: GuardAction) -> Result<GuardList, String> {
        let mut alternatives = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let alternative = match line.strip_prefix("re:") {
                Some(pattern) => format!("(?:{pattern})"),
                None => regex::escape(line),
            };
            let hir =
                regex_syntax::parse(&alternative).map_err(|e| format!("line {}: {e}", n + 1))?;
            if hir.properties().minimum_len() == Some(0) {
                return Err(format!("line {}: the entry matches empty text", n + 1));
            }
            alternatives.push(alternative);
        }
        if alternatives.is_empty() {
            return Ok(GuardList {
                action,
                ..GuardList::empty()
            });
        }
        let joined = format!("(?i){}", alternatives.join("|"));
        let longest = regex_syntax::parse(&joined)
            .map_err(|e| e.to_string())?
            .properties()
            .maximum_len();
        Ok(GuardList {
            action,
            regex: Some(Regex::new(&joined).map_err(|e| e.to_string())?),
            dfa: Some(DFA::new(&joined).map_err(|e| e.to_string())?),
            lookback: longest.map_or(UNBOUNDED_LOOKBACK, |n| n.min(UNBOUNDED_LOOKBACK)),
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
            cache: self.dfa.as_ref().map(DFA::create_cache),
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

    /// Where the tail of `text` that could still begin a match starts: the earliest
    /// place, within the longest match from the end, from which the automaton is
    /// not yet dead at the end of the text.
    fn hold_from(&self, cache: &mut Cache, text: &str) -> usize {
        let Some(dfa) = &self.dfa else {
            return text.len();
        };
        let mut from = text.len().saturating_sub(self.lookback);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        (from..text.len())
            .filter(|&start| text.is_char_boundary(start))
            .find(|&start| could_begin(dfa, cache, text, start))
            .unwrap_or(text.len())
    }
}

/// Whether a match anchored at `start` is still possible at the end of `text`. An
/// automaton that gives up (a cache failure, a Unicode word boundary) says yes:
/// holding back too much is safe, too little is not.
fn could_begin(dfa: &DFA, cache: &mut Cache, text: &str, start: usize) -> bool {
    let input = Input::new(text).range(start..).anchored(Anchored::Yes);
    let Ok(mut state) = dfa.start_state_forward(cache, &input) else {
        return true;
    };
    for &byte in &text.as_bytes()[start..] {
        match dfa.next_state(cache, state, byte) {
            Ok(next) if next.is_dead() => return false,
            Ok(next) if next.is_quit() => return true,
            Ok(next) => state = next,
            Err(_) => return true,
        }
    }
    true
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
    /// The lazy DFA's working memory, one per stream.
    cache: Option<Cache>,
    held: String,
}

impl GuardStream {
    /// What can be sent of `piece` now, and whether the answer must end here.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        let Some(cache) = &mut self.cache else {
            return (piece.to_owned(), false); // an empty list holds nothing back
        };
        self.held.push_str(piece);
        let text = std::mem::take(&mut self.held);
        match self.list.action {
            GuardAction::Block => {
                if let Some((start, _)) = self.list.first(&text) {
                    return (text[..start].to_owned(), true);
                }
                let keep = self.list.hold_from(cache, &text);
                self.held = text[keep..].to_owned();
                (text[..keep].to_owned(), false)
            }
            GuardAction::Mask => {
                // Matches wholly before the held tail are final; one that reaches
                // into the tail is held with it.
                let mut keep = self.list.hold_from(cache, &text);
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
    fn case_folding_outside_ascii_neither_leaks_nor_panics() {
        // U+2126 OHM SIGN lower-cases to a shorter ω: the word must still be held.
        let mut stream = list(GuardAction::Block, "forbidden\n").stream();
        assert_eq!(stream.push("10 kΩ for"), ("10 kΩ ".to_owned(), false));
        assert_eq!(stream.push("bidden"), (String::new(), true));
        // U+212A KELVIN SIGN folds to k.
        let mut stream = list(GuardAction::Mask, "kb\n").stream();
        let (sent, _) = stream.push("İİ\u{212A}");
        assert_eq!(sent, "İİ");
        assert_eq!(stream.push("B!"), ("**!".to_owned(), false));
    }

    #[test]
    fn an_entry_that_matches_empty_text_is_refused() {
        assert!(GuardList::parse("re:a*\n", GuardAction::Block).is_err());
    }

    #[test]
    fn a_pattern_match_reaching_into_the_held_tail_is_held_whole() {
        let mut stream = list(GuardAction::Mask, "re:ab[0-9]{3}\n").stream();
        let (sent, _) = stream.push("xxab123");
        assert_eq!(sent, "xx");
        assert_eq!(stream.finish(), ("*****".to_owned(), false));
    }
}
