//! Turning generated tokens into text safely: whole UTF-8 characters only, and stop
//! sequences caught even when split across tokens.

use crate::EngineError;
use crate::tokenizer::GgufTokenizer;

/// The longest run of tokens one character may need (a 4-byte character, byte by byte).
const MAX_PENDING: usize = 8;

/// Decodes tokens as they come, holding back those that end inside a multi-byte
/// character (they decode to U+FFFD until the rest arrives). Invalid bytes a model
/// produces are dropped: a client never sees U+FFFD from ragway.
#[derive(Default)]
pub struct Utf8Tokens {
    pending: Vec<u32>,
}

impl Utf8Tokens {
    pub fn push(&mut self, id: u32, tokenizer: &GgufTokenizer) -> Result<String, EngineError> {
        self.pending.push(id);
        let text = tokenizer.decode(&self.pending)?;
        if text.ends_with('\u{FFFD}') && self.pending.len() < MAX_PENDING {
            return Ok(String::new());
        }
        self.pending.clear();
        // What is still a replacement character is a byte sequence the model got
        // wrong, not a split character: it is dropped rather than shown.
        Ok(text.replace('\u{FFFD}', ""))
    }

    /// What is left when generation ends. A character cut off by the token limit is
    /// dropped rather than sent as a replacement character.
    pub fn finish(&mut self, tokenizer: &GgufTokenizer) -> Result<String, EngineError> {
        let text = tokenizer.decode(&self.pending)?;
        self.pending.clear();
        Ok(text.trim_end_matches('\u{FFFD}').to_owned())
    }
}

/// Finds stop sequences in streamed text. Holds back only the tail that could
/// still become one.
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        StopScanner {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Returns the text that is safe to emit, and whether a stop sequence was met
    /// (the text is then cut just before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&k| stop.is_char_boundary(k))
                    .map(move |k| &stop[..k])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// Releases what was held (and `rest`), cut at a stop sequence if one is there.
    pub fn finish(&mut self, rest: &str) -> String {
        let (out, stopped) = self.push(rest);
        if stopped {
            return out;
        }
        out + &std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_split_across_pieces_is_caught_and_nothing_else_is_delayed() {
        let mut s = StopScanner::new(&["\n\nUser:".to_owned()]);
        assert_eq!(s.push("Hello"), ("Hello".to_owned(), false));
        assert_eq!(
            s.push(" there\n"),
            (" there".to_owned(), false),
            "holds back only the newline"
        );
        assert_eq!(s.push("\nUs"), (String::new(), false));
        assert_eq!(s.push("er: hi"), (String::new(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut s = StopScanner::new(&["END".to_owned()]);
        assert_eq!(s.push("the EN"), ("the ".to_owned(), false));
        assert_eq!(s.push("D? no, ENV"), (String::new(), true));
        let mut s = StopScanner::new(&["END".to_owned()]);
        assert_eq!(s.push("EN"), (String::new(), false));
        assert_eq!(s.push("VY"), ("ENVY".to_owned(), false));
        assert_eq!(s.finish("E"), "E");
    }

    #[test]
    fn multibyte_stops_hold_whole_characters() {
        let mut s = StopScanner::new(&["。结束".to_owned()]);
        assert_eq!(s.push("你好。"), ("你好".to_owned(), false));
        assert_eq!(s.push("结"), (String::new(), false));
        assert_eq!(s.finish(""), "。结");
    }
}
