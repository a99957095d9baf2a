//! Token ids in OpenAI's `cl100k_base` vocabulary, turned back into text.
//!
//! OpenAI's embeddings API takes token ids as well as text, and some clients send
//! nothing else: LangChain's `OpenAIEmbeddings` tokenizes with tiktoken and sends
//! the ids (falling back to `cl100k_base` for a model it does not know). Our
//! embedder has its own tokenizer, so the ids are decoded to the text they stand
//! for and embedded like any other input: the vector is the one the text would get.
//!
//! The vocabulary file is tiktoken's own (`cl100k_base.tiktoken`: one
//! `base64-of-bytes rank` pair per line), fetched with the model files.

use std::path::Path;

use base64::Engine as _;

/// The bytes of every token, indexed by id.
pub struct Vocabulary {
    tokens: Vec<Box<[u8]>>,
}

#[derive(Debug, thiserror::Error)]
pub enum VocabularyError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    #[error("token id {0} is not in the cl100k_base vocabulary")]
    UnknownId(u64),
}

impl Vocabulary {
    pub fn load(path: &Path) -> Result<Vocabulary, VocabularyError> {
        let fail = |reason: String| VocabularyError::Load {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Vocabulary::parse(&text).map_err(fail)
    }

    fn parse(text: &str) -> Result<Vocabulary, String> {
        let mut tokens: Vec<Box<[u8]>> = Vec::with_capacity(100_256);
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let bad = || format!("line {}: not `base64 rank`", n + 1);
            let (encoded, rank) = line.split_once(' ').ok_or_else(bad)?;
            let rank: usize = rank.parse().map_err(|_| bad())?;
            // Ranks are 0, 1, 2 … in order in tiktoken's files; anything else is
            // not such a file.
            if rank != tokens.len() {
                return Err(format!("line {}: rank {rank} out of order", n + 1));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| bad())?;
            tokens.push(bytes.into_boxed_slice());
        }
        if tokens.is_empty() {
            return Err("no tokens".to_owned());
        }
        Ok(Vocabulary { tokens })
    }

    /// The text `ids` stand for. A token may end inside a character (the input was
    /// cut into pieces by token count): such bytes become U+FFFD, as tiktoken's own
    /// decoder does.
    pub fn decode(&self, ids: &[u64]) -> Result<String, VocabularyError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token = usize::try_from(id)
                .ok()
                .and_then(|i| self.tokens.get(i))
                .ok_or(VocabularyError::UnknownId(id))?;
            bytes.extend_from_slice(token);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // "Hello" = SGVsbG8=, " world" = IHdvcmxk, "é" split over two tokens.
    const SMALL: &str = "SGVsbG8= 0\nIHdvcmxk 1\nww== 2\nqQ== 3\n";

    #[test]
    fn decodes_ids_to_text() {
        let vocabulary = Vocabulary::parse(SMALL).unwrap();
        assert_eq!(vocabulary.decode(&[0, 1]).unwrap(), "Hello world");
        assert_eq!(vocabulary.decode(&[2, 3]).unwrap(), "é");
        assert_eq!(vocabulary.decode(&[0, 2]).unwrap(), "Hello\u{fffd}");
    }

    #[test]
    fn refuses_unknown_ids_and_malformed_files() {
        let vocabulary = Vocabulary::parse(SMALL).unwrap();
        assert!(matches!(
            vocabulary.decode(&[4]),
            Err(VocabularyError::UnknownId(4))
        ));
        assert!(Vocabulary::parse("SGVsbG8= 1\n").is_err());
        assert!(Vocabulary::parse("not base64! 0\n").is_err());
        assert!(Vocabulary::parse("").is_err());
    }
}
