//! Cutting a document into chunks for retrieval, along its own structure: Markdown
//! sections first (a chunk never spans two headings), then paragraphs, then sentences
//! — Chinese sentence ends (。！？；) as well as Western ones — to a target size in
//! tokens, with a small overlap between neighbouring chunks of one section. Each
//! chunk keeps the path of headings above it.
//!
//! Token counts come from the caller (the embedder's own tokenizer), so a chunk fits
//! the model that embeds it.

/// One piece of a document, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the document, from 0.
    pub index: u32,
    pub text: String,
    /// The headings above the chunk, outermost first.
    pub headings: Vec<String>,
}

/// How big chunks are, in tokens.
#[derive(Debug, Clone, Copy)]
pub struct ChunkSize {
    pub target: usize,
    /// Tokens of the previous chunk's end repeated at the start of the next one in
    /// the same section, so a fact cut at a boundary is still whole in one chunk.
    pub overlap: usize,
}

impl Default for ChunkSize {
    fn default() -> Self {
        // MiniLM reads 256 word pieces at most; 200 leaves room for the heading path.
        ChunkSize {
            target: 200,
            overlap: 30,
        }
    }
}

/// Cuts `text` (Markdown or plain text) into chunks of about `size.target` tokens
/// as `count` measures them.
pub fn chunk(text: &str, size: ChunkSize, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let target = size.target.max(1);
    let mut chunks = Vec::new();
    for section in sections(text) {
        let sentences: Vec<String> = section
            .paragraphs
            .iter()
            .flat_map(|p| sentences(p, target, count))
            .collect();
        for text in pack(&sentences, target, size.overlap, count) {
            chunks.push(Chunk {
                index: chunks.len() as u32,
                text,
                headings: section.headings.clone(),
            });
        }
    }
    chunks
}

/// The longest heading kept in a path.
const MAX_HEADING_CHARS: usize = 200;

/// The text under one heading path, as paragraphs.
struct Section {
    headings: Vec<String>,
    paragraphs: Vec<String>,
}

/// Splits Markdown at its headings (ATX `#` style) and paragraphs at blank lines; a
/// fenced code block stays one paragraph.
fn sections(text: &str) -> Vec<Section> {
    let mut out = vec![Section {
        headings: Vec::new(),
        paragraphs: Vec::new(),
    }];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut paragraph = String::new();
    let mut in_fence = false;
    let flush = |paragraph: &mut String, out: &mut Vec<Section>| {
        let trimmed = paragraph.trim();
        if !trimmed.is_empty()
            && let Some(section) = out.last_mut()
        {
            section.paragraphs.push(trimmed.to_owned());
        }
        paragraph.clear();
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence && let Some((level, title)) = heading(line) {
            flush(&mut paragraph, &mut out);
            path.retain(|(l, _)| *l < level);
            // Every chunk below carries the path: a runaway heading line is cut short.
            path.push((level, title.chars().take(MAX_HEADING_CHARS).collect()));
            out.push(Section {
                headings: path.iter().map(|(_, t)| t.clone()).collect(),
                paragraphs: Vec::new(),
            });
        } else if !in_fence && line.trim().is_empty() {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.push_str(line);
            paragraph.push('\n');
        }
    }
    flush(&mut paragraph, &mut out);
    out.retain(|s| !s.paragraphs.is_empty());
    out
}

/// `# Title` → (1, "Title").
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    let rest = &line[level..];
    let valid = (1..=6).contains(&level) && (rest.is_empty() || rest.starts_with(' '));
    valid.then(|| (level, rest.trim().trim_end_matches('#').trim()))
}

/// A paragraph as sentences, each at most `target` tokens (a longer one is cut
/// where the count allows). A paragraph's end is also a sentence end.
fn sentences(paragraph: &str, target: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = paragraph.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let ends = match c {
            '。' | '！' | '？' | '；' | '…' => true,
            '.' | '!' | '?' | ';' => next.is_none_or(char::is_whitespace),
            '\n' => next == Some('\n'),
            _ => false,
        };
        if ends {
            let end = i + c.len_utf8();
            push_sentence(&paragraph[start..end], target, count, &mut out);
            start = end;
        }
    }
    push_sentence(&paragraph[start..], target, count, &mut out);
    out
}

/// Appends `text` as sentences of at most `target` tokens: whole when it fits,
/// otherwise cut into the longest pieces that fit, preferably after a comma, a line
/// end or a space. Only a window of the text is ever measured, so a run of any
/// length without a sentence end costs time in proportion to its length.
fn push_sentence(text: &str, target: usize, count: &dyn Fn(&str) -> usize, out: &mut Vec<String>) {
    let mut rest = text.trim();
    while !rest.is_empty() {
        // The cut is searched within a window of about eight characters per token:
        // a piece that fits lies inside it (or is the window itself, for text whose
        // tokens are longer still).
        let window_end = rest
            .char_indices()
            .nth(target.saturating_mul(8))
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..window_end];
        if window_end == rest.len() && count(rest) <= target {
            out.push(rest.to_owned());
            return;
        }
        let bounds: Vec<usize> = window
            .char_indices()
            .map(|(i, _)| i)
            .skip(1)
            .chain([window.len()])
            .collect();
        let fits = bounds
            .partition_point(|&end| count(&window[..end]) <= target)
            .max(1);
        let mut cut = bounds[fits - 1];
        if cut < rest.len()
            && let Some((at, c)) = rest[..cut]
                .char_indices()
                .rev()
                .find(|&(_, c)| weak_break(c))
            && at + c.len_utf8() >= cut * 2 / 3
        {
            cut = at + c.len_utf8();
        }
        let piece = rest[..cut].trim();
        if !piece.is_empty() {
            out.push(piece.to_owned());
        }
        rest = rest[cut..].trim_start();
    }
}

/// Where a sentence too long for one chunk is best cut.
fn weak_break(c: char) -> bool {
    matches!(c, '，' | '、' | '：' | ',' | ':' | '\n') || c.is_whitespace()
}

/// Packs sentences into chunks of at most `target` tokens; each chunk after the
/// first starts with the last sentences of the one before, up to `overlap` tokens.
fn pack(
    sentences: &[String],
    target: usize,
    overlap: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut tokens = 0;
    let mut fresh = 0; // sentences in `current` that no earlier chunk holds
    for sentence in sentences {
        let n = count(sentence);
        if fresh > 0 && tokens + n > target {
            chunks.push(join(&current));
            // Carry the tail over, as much as the overlap and the new sentence allow.
            let mut carried = Vec::new();
            let mut carried_tokens = 0;
            for s in current.iter().rev() {
                let m = count(s);
                if carried_tokens + m > overlap || carried_tokens + m + n > target {
                    break;
                }
                carried.push(*s);
                carried_tokens += m;
            }
            carried.reverse();
            current = carried;
            tokens = carried_tokens;
            fresh = 0;
        }
        current.push(sentence);
        tokens += n;
        fresh += 1;
    }
    if fresh > 0 {
        chunks.push(join(&current));
    }
    chunks
}

/// Sentences back into text: Chinese sentences run on, others take a space.
fn join(sentences: &[&str]) -> String {
    let mut out = String::new();
    for s in sentences {
        let cjk_boundary = out.chars().next_back().is_some_and(|c| !c.is_ascii())
            && s.chars().next().is_some_and(|c| !c.is_ascii());
        if !out.is_empty() && !cjk_boundary {
            out.push(' ');
        }
        out.push_str(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per CJK character, one per ASCII word: close to a WordPiece count.
    fn count(text: &str) -> usize {
        let cjk = text.chars().filter(|c| !c.is_ascii()).count();
        cjk + text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .count()
    }

    fn size(target: usize, overlap: usize) -> ChunkSize {
        ChunkSize { target, overlap }
    }

    #[test]
    fn chinese_text_is_cut_at_sentence_ends_only() {
        let text = "退货需在签收后七天内申请。商品须保持完好！运费由谁承担？质量问题由商家承担；其他情况由买家承担。";
        let chunks = chunk(text, size(16, 0), &count);
        assert!(chunks.len() > 1, "{chunks:?}");
        for c in &chunks {
            assert!(count(&c.text) <= 16, "{c:?}");
            let last = c.text.chars().last().unwrap();
            assert!("。！？；".contains(last), "cut mid-sentence: {:?}", c.text);
        }
        let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(joined, text, "nothing lost or repeated without overlap");
    }

    #[test]
    fn sections_keep_their_heading_path_and_never_mix() {
        let text = "# 用户手册\n\n简介。\n\n## 安装\n\n下载安装包。\n\n```\n# not a heading\n```\n\n## 卸载\n\n删除目录。\n";
        let chunks = chunk(text, size(100, 10), &count);
        let paths: Vec<(Vec<String>, &str)> = chunks
            .iter()
            .map(|c| (c.headings.clone(), c.text.as_str()))
            .collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert_eq!(paths[0], (vec!["用户手册".to_owned()], "简介。"));
        assert_eq!(paths[1].0, ["用户手册", "安装"]);
        assert!(
            paths[1].1.contains("# not a heading"),
            "code stays in its section"
        );
        assert_eq!(
            paths[2],
            (vec!["用户手册".to_owned(), "卸载".to_owned()], "删除目录。")
        );
        assert_eq!(
            chunks.iter().map(|c| c.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn neighbours_overlap_and_long_sentences_are_cut_to_size() {
        let text = "One two three. Four five six. Seven eight nine. Ten eleven twelve.";
        let chunks = chunk(text, size(6, 3), &count);
        assert_eq!(chunks[0].text, "One two three. Four five six.");
        assert_eq!(chunks[1].text, "Four five six. Seven eight nine.");
        let long = "word ".repeat(25);
        for c in chunk(&long, size(10, 0), &count) {
            assert!(count(&c.text) <= 10, "{c:?}");
        }
    }

    #[test]
    fn a_huge_run_without_sentence_ends_is_cut_at_commas() {
        let text = "退款原路退回，".repeat(30_000);
        let chunks = chunk(&text, size(50, 0), &count);
        assert!(chunks.len() > 3000, "{}", chunks.len());
        for c in &chunks {
            assert!(count(&c.text) <= 50, "{c:?}");
            assert!(c.text.ends_with('，'), "{c:?}");
        }
    }
}
