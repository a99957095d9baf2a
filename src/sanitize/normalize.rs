//! Reading text as a person reads it before looking for personal data: full-width
//! digits (`１３９…`) are digits and zero-width characters are nothing, so neither
//! can disguise or split a value. The detectors look at the folded text; each range
//! they report is mapped back, so a placeholder replaces exactly what the user wrote
//! (the full-width and invisible characters inside it included) and restoring gives
//! back the text byte for byte.
//!
//! Every folded character is two or three bytes of UTF-8 led by 0xC2, 0xE2, 0xE3
//! or 0xEF. Text without one (nearly all text) is found so by one scan of its bytes
//! and is not copied; the scan compares whole sequences in blocks the compiler
//! vectorises (about 3 GB/s on Chinese text, whose punctuation shares those lead
//! bytes; `regex-automata`'s multi-literal prefilter measured 2 GB/s there).

use std::borrow::Cow;

/// Each folded character and what it reads as (`""`: nothing).
const FOLDS: &[(char, &str)] = &[
    ('\u{FF10}', "0"),
    ('\u{FF11}', "1"),
    ('\u{FF12}', "2"),
    ('\u{FF13}', "3"),
    ('\u{FF14}', "4"),
    ('\u{FF15}', "5"),
    ('\u{FF16}', "6"),
    ('\u{FF17}', "7"),
    ('\u{FF18}', "8"),
    ('\u{FF19}', "9"),
    // The check character of an ID number, in full width.
    ('\u{FF38}', "X"),
    ('\u{FF58}', "x"),
    ('\u{FF0B}', "+"),
    ('\u{FF0D}', "-"),
    // The ideographic space, between groups of full-width digits.
    ('\u{3000}', " "),
    // Invisible: zero-width space, non-joiner, joiner, word joiner, byte-order mark
    // (zero-width no-break space), soft hyphen.
    ('\u{200B}', ""),
    ('\u{200C}', ""),
    ('\u{200D}', ""),
    ('\u{2060}', ""),
    ('\u{FEFF}', ""),
    ('\u{00AD}', ""),
];

fn reads_as(c: char) -> Option<&'static str> {
    FOLDS.iter().find(|&&(f, _)| f == c).map(|&(_, s)| s)
}

/// Whether the bytes at a place begin the UTF-8 of one of [`FOLDS`]. Branch-free,
/// so that a block of places is tested at once.
#[inline(always)]
fn folds_at(b0: u8, b1: u8, b2: u8) -> bool {
    let full_width = (b0 == 0xEF)
        & (((b1 == 0xBC)
            & ((b2.wrapping_sub(0x90) < 10) | (b2 == 0x8B) | (b2 == 0x8D) | (b2 == 0xB8)))
            | ((b1 == 0xBD) & (b2 == 0x98))
            | ((b1 == 0xBB) & (b2 == 0xBF)));
    let space = (b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80);
    let zero_width = (b0 == 0xE2)
        & (((b1 == 0x80) & (b2.wrapping_sub(0x8B) < 3)) | ((b1 == 0x81) & (b2 == 0xA0)));
    let soft_hyphen = (b0 == 0xC2) & (b1 == 0xAD);
    full_width | space | zero_width | soft_hyphen
}

/// The next folded character at or after `from`: where it starts, its width, what
/// it reads as.
fn next_fold(text: &str, from: usize) -> Option<(usize, usize, &'static str)> {
    const BLOCK: usize = 32;
    let bytes = text.as_bytes();
    let mut at = from;
    let mut found = None;
    while found.is_none() && at + BLOCK + 2 <= bytes.len() {
        let window = &bytes[at..at + BLOCK + 2];
        let mut any = false;
        for i in 0..BLOCK {
            any |= folds_at(window[i], window[i + 1], window[i + 2]);
        }
        if any {
            found = (at..at + BLOCK).find(|&i| folds_at(bytes[i], bytes[i + 1], bytes[i + 2]));
        }
        at += BLOCK;
    }
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let start = found
        .or_else(|| (at..bytes.len()).find(|&i| folds_at(byte(i), byte(i + 1), byte(i + 2))))?;
    // A lead byte begins a character; the test above matches only whole sequences.
    let c = text.get(start..)?.chars().next()?;
    Some((start, c.len_utf8(), reads_as(c)?))
}

/// A text with its folded characters replaced, and the way back to the original.
#[derive(Debug)]
pub struct Folded {
    pub text: String,
    /// After each folded character: its end in `text` and in the original. Between
    /// two marks the texts agree byte for byte.
    marks: Vec<(usize, usize)>,
}

/// `text` folded, or `None` when it holds nothing to fold.
pub fn fold_text(text: &str) -> Option<Folded> {
    let mut next = next_fold(text, 0)?;
    let mut out = String::with_capacity(text.len());
    let mut marks = Vec::new();
    let mut last = 0;
    loop {
        let (start, width, reads) = next;
        out.push_str(&text[last..start]);
        out.push_str(reads);
        last = start + width;
        marks.push((out.len(), last));
        match next_fold(text, last) {
            Some(found) => next = found,
            None => break,
        }
    }
    out.push_str(&text[last..]);
    Some(Folded { text: out, marks })
}

/// A value as it reads: what `mask` and `hash` work on, so that `１３９…` is starred
/// like `139…` and hashes alike.
pub fn fold(value: &str) -> Cow<'_, str> {
    fold_text(value).map_or(Cow::Borrowed(value), |f| Cow::Owned(f.text))
}

impl Folded {
    /// Where the character at `at` in the folded text begins in the original (past
    /// any invisible characters right before it).
    pub fn start(&self, at: usize) -> usize {
        match self.marks.partition_point(|&(folded, _)| folded <= at) {
            0 => at,
            n => {
                let (folded, original) = self.marks[n - 1];
                original + (at - folded)
            }
        }
    }

    /// Where the character that ends at `at` in the folded text ends in `original`
    /// (before any invisible characters right after it).
    pub fn end(&self, original: &str, at: usize) -> usize {
        let last = self.text.get(..at).and_then(|s| s.chars().next_back());
        let Some(last) = last else {
            return self.start(at);
        };
        let from = self.start(at - last.len_utf8());
        let width = original
            .get(from..)
            .and_then(|s| s.chars().next())
            .map_or(0, char::len_utf8);
        from + width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original text of a range of the folded one.
    fn back<'a>(original: &'a str, folded: &Folded, range: std::ops::Range<usize>) -> &'a str {
        &original[folded.start(range.start)..folded.end(original, range.end)]
    }

    #[test]
    fn the_byte_test_matches_exactly_the_folded_characters() {
        let mut seen = 0;
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let mut utf8 = [0; 4];
            let b = c.encode_utf8(&mut utf8).as_bytes();
            let byte = |i: usize| b.get(i).copied().unwrap_or(0);
            let folds = folds_at(byte(0), byte(1), byte(2));
            assert_eq!(folds, reads_as(c).is_some(), "{c:?}");
            seen += usize::from(folds);
        }
        assert_eq!(seen, FOLDS.len());
    }

    #[test]
    fn plain_text_is_not_copied() {
        assert!(fold_text("客户手机 13812345678，请回电。“好的”…").is_none());
        assert!(matches!(fold("13812345678"), Cow::Borrowed(_)));
    }

    #[test]
    fn full_width_and_invisible_characters_fold() {
        let text = "手机\u{200B}１３９－１２３４\u{00AD}８７６５\u{FEFF}。＋８６　ｘＸ";
        let folded = fold_text(text).unwrap();
        assert_eq!(folded.text, "手机139-12348765。+86 xX");
    }

    #[test]
    fn ranges_map_back_to_exactly_what_was_written() {
        let text = "a\u{200B}１３９\u{200B}1234\u{200D}８７６５\u{200B}b";
        let folded = fold_text(text).unwrap();
        let at = folded.text.find('1').unwrap();
        assert_eq!(&folded.text[at..at + 11], "13912348765");
        // The invisible characters inside are taken, those around are left.
        assert_eq!(
            back(text, &folded, at..at + 11),
            "１３９\u{200B}1234\u{200D}８７６５"
        );
        assert_eq!(back(text, &folded, 0..1), "a");
        let b = folded.text.len() - 1;
        assert_eq!(back(text, &folded, b..b + 1), "b");
        assert_eq!(back(text, &folded, at + 3..at + 4), "1");
    }

    #[test]
    fn an_empty_range_maps_to_a_char_boundary() {
        let text = "\u{200B}\u{200B}x";
        let folded = fold_text(text).unwrap();
        assert_eq!(folded.start(0), 6);
        assert_eq!(folded.end(text, 0), 6);
    }
}
