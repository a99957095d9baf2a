//! A request's tokens, counted before it is sent, for its reservation. The
//! providers' vocabularies differ, so this is the usual average rather than any
//! one tokenizer: a CJK character is about one token, other text about four bytes
//! per token, and each message a few for the chat template around it. The
//! reservation is corrected to the provider's own count when the call ends.

use crate::wire::{ChatRequest, Content, ContentPart};

/// Tokens of a chat template's wrapping of one message (role, separators).
const PER_MESSAGE: u64 = 4;

/// Tokens an image part is taken to cost (the providers' low-detail price).
const PER_IMAGE: u64 = 85;

pub fn prompt_tokens(request: &ChatRequest) -> u64 {
    let mut tokens = 0;
    for message in &request.messages {
        tokens += PER_MESSAGE;
        match &message.content {
            Some(Content::Text(text)) => tokens += text_tokens(text),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    tokens += match part {
                        ContentPart::Text { text } => text_tokens(text),
                        ContentPart::ImageUrl { .. } => PER_IMAGE,
                        ContentPart::InputAudio { input_audio: v }
                        | ContentPart::File { file: v } => text_tokens(&v.to_string()),
                    };
                }
            }
            None => {}
        }
        if let Some(calls) = &message.tool_calls {
            tokens += calls
                .iter()
                .map(|c| text_tokens(&c.to_string()))
                .sum::<u64>();
        }
    }
    if let Some(tools) = &request.tools {
        tokens += tools
            .iter()
            .map(|t| text_tokens(&t.to_string()))
            .sum::<u64>();
    }
    tokens
}

/// CJK characters one token each, the rest of the text one per four bytes.
pub fn text_tokens(text: &str) -> u64 {
    let (mut cjk, mut other_bytes) = (0u64, 0u64);
    for c in text.chars() {
        match is_cjk(c) {
            true => cjk += 1,
            false => other_bytes += c.len_utf8() as u64,
        }
    }
    cjk + other_bytes.div_ceil(4)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // kana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xFF00..=0xFFEF    // full-width forms
        | 0x20000..=0x2FFFF) // extensions B and later
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_the_usual_averages() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("hello world!"), 3);
        assert_eq!(text_tokens("你好，世界"), 5);
        assert_eq!(text_tokens("GPU 显存"), 2 + 1);
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "你好"}]}
            ]
        }))
        .unwrap();
        assert_eq!(prompt_tokens(&request), 4 + 3 + 4 + 2);
    }
}
