//! Chat templates: the GGUF's own `tokenizer.chat_template` (Jinja, rendered by
//! minijinja with Python string methods, as Hugging Face renders it), or a named
//! fallback — ChatML, or Gemma's turns — for files that carry none.
//!
//! Message contents never pass through the template as text: each is rendered as a
//! sentinel and encoded separately with special tokens off, so a user who writes
//! `<|im_end|>` cannot end or forge a turn.

use minijinja::{Environment, context};

use crate::tokenizer::GgufTokenizer;
use crate::{EngineError, Message};

const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% if message.role == 'system' %}{% set role = 'user' %}{% elif message.role == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message.role %}{% endif %}<start_of_turn>{{ role }}\n{{ message.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// Marks where message `i` goes: private-use characters no template produces.
fn sentinel(i: usize) -> String {
    format!("\u{E000}{i}\u{E001}")
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for logs and errors.
    pub source: &'static str,
}

impl ChatTemplate {
    /// The file's own template, or the named fallback for its architecture.
    pub fn new(gguf_template: Option<String>, architecture: &str) -> Result<Self, EngineError> {
        let (text, source) = match gguf_template {
            Some(text) if !text.trim().is_empty() => (text, "gguf"),
            _ if architecture.starts_with("gemma") => (GEMMA.to_owned(), "gemma"),
            _ => (CHATML.to_owned(), "chatml"),
        };
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", text)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate { env, source })
    }

    /// The prompt's token ids: template text with its special tokens, and each
    /// message's content encoded as plain text.
    pub fn encode(
        &self,
        messages: &[Message],
        tokenizer: &GgufTokenizer,
    ) -> Result<Vec<u32>, EngineError> {
        let placeholders: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(m.role.clone(), sentinel(i)))
            .collect();
        let bos = tokenizer
            .bos
            .and_then(|id| tokenizer.decode(&[id]).ok())
            .unwrap_or_default();
        let eos = tokenizer.decode(&[tokenizer.eos]).unwrap_or_default();
        let rendered = self
            .env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => placeholders,
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let mut ids = Vec::new();
        if tokenizer.add_bos && !rendered.starts_with(&bos) {
            ids.extend(tokenizer.bos);
        }
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find('\u{E000}') {
            ids.extend(tokenizer.encode_template(&rest[..start])?);
            let after = &rest[start + '\u{E000}'.len_utf8()..];
            let end = after.find('\u{E001}').ok_or_else(|| {
                EngineError::Template("a message marker was cut by the template".into())
            })?;
            let index: usize = after[..end].parse().map_err(|_| {
                EngineError::Template("a message marker was altered by the template".into())
            })?;
            let content = messages
                .get(index)
                .ok_or_else(|| EngineError::Template("unknown message marker".into()))?;
            ids.extend(tokenizer.encode_text(&content.content)?);
            rest = &after[end + '\u{E001}'.len_utf8()..];
        }
        ids.extend(tokenizer.encode_template(rest)?);
        Ok(ids)
    }
}
