//! Tokens counted before text is sent: for a call's reservation against its
//! limits, and for the passages' budget in a grounded prompt. The providers'
//! vocabularies differ, so this is the usual average rather than any one
//! tokenizer: a CJK character is about one token, other text about four characters
//! per token, and each message a few for the chat template around it. A
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

/// CJK characters one token each, other characters one per four.
pub fn text_tokens(text: &str) -> u64 {
    let (cjk, other) = text.chars().fold((0u64, 0u64), |(cjk, other), c| {
        if ('\u{2e80}'..='\u{9fff}').contains(&c) || ('\u{f900}'..='\u{faff}').contains(&c) {
            (cjk + 1, other)
        } else {
            (cjk, other + 1)
        }
    });
    cjk + other.div_ceil(4)
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
