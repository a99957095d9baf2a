//! A tokenizer built from a GGUF file's own metadata — no `tokenizer.json` to fetch.
//!
//! `tokenizer.ggml.model = "gpt2"` is byte-level BPE (tokens + merges), with the
//! pre-tokenizer chosen by `tokenizer.ggml.pre` as llama.cpp does; `"llama"` is
//! SentencePiece (tokens + scores, byte fallback). Control and user-defined tokens
//! (types 3 and 4) are special: they are recognised in the chat template's own text,
//! and never in a user's — see [`GgufTokenizer::encode_text`].

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace as ReplaceNormalizer, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::EngineError;

/// Tokens that end a turn besides EOS.
const TURN_ENDS: [&str; 5] = [
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
];
/// Tokens that open a turn or name its speaker.
const TURN_STARTS: [&str; 5] = [
    "<|im_start|>",
    "<start_of_turn>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|user|>",
];

/// Never read from a user's text, whatever type the file gives it.
fn marks_a_turn(token: &str) -> bool {
    TURN_ENDS.contains(&token) || TURN_STARTS.contains(&token)
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// GPT-4-style split used by llama-3 and qwen2 byte-level BPE vocabularies.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct GgufTokenizer {
    /// Parses special tokens: for the template's own text.
    template: Tokenizer,
    /// Treats special tokens as plain text: for anything a user wrote.
    plain: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    /// Whether the model expects BOS at the start of a prompt.
    pub add_bos: bool,
    /// Ids that end a turn besides EOS (`<|im_end|>`, `<end_of_turn>`, …).
    pub end_of_turn: Vec<u32>,
    id_of: HashMap<String, u32>,
}

impl GgufTokenizer {
    pub fn from_gguf(content: &Content) -> Result<Self, EngineError> {
        let md = |key: &str| content.metadata.get(key);
        let text = |key: &str| md(key).and_then(|v| v.to_string().ok()).cloned();
        let tokens: Vec<String> = strings(md("tokenizer.ggml.tokens")).ok_or_else(|| {
            EngineError::Tokenizer("the GGUF has no tokenizer.ggml.tokens".into())
        })?;
        let types: Vec<i32> = match md("tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let model = text("tokenizer.ggml.model").unwrap_or_else(|| "gpt2".into());
        let mut tokenizer = match model.as_str() {
            "gpt2" => byte_level_bpe(
                &tokens,
                md("tokenizer.ggml.merges"),
                text("tokenizer.ggml.pre").as_deref(),
            )?,
            "llama" => sentencepiece(
                &tokens,
                &types,
                md("tokenizer.ggml.scores"),
                md("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()),
            )?,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "unsupported tokenizer model `{other}`"
                )));
            }
        };
        // Control tokens count only in a template's own text. User-defined ones
        // (Gemma's runs of spaces and newlines, …) are matched in any text, as
        // llama.cpp matches them — except anything that marks a turn.
        let (specials, ordinary): (Vec<_>, Vec<_>) = tokens
            .iter()
            .zip(&types)
            .filter(|(_, kind)| matches!(**kind, CONTROL | USER_DEFINED))
            .partition(|(token, kind)| **kind == CONTROL || marks_a_turn(token));
        let specials: Vec<AddedToken> = specials
            .into_iter()
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        let ordinary: Vec<AddedToken> = ordinary
            .into_iter()
            .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer
            .add_tokens(ordinary)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);
        let id = |key: &str| md(key).and_then(|v| v.to_u32().ok());
        let eos = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| EngineError::Tokenizer("the GGUF has no eos_token_id".into()))?;
        let id_of: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let end_of_turn = TURN_ENDS
            .iter()
            .filter_map(|t| id_of.get(*t).copied())
            .collect();
        let add_bos = md("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(GgufTokenizer {
            template: tokenizer,
            plain,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            add_bos,
            end_of_turn,
            id_of,
        })
    }

    /// Encodes text a chat template produced: special tokens in it are controls.
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        encode(&self.template, text)
    }

    /// Encodes text from a user (or a document): `<|im_end|>` written by a user is
    /// plain text, so it can neither end a turn nor forge one.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        encode(&self.plain, text)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.template
            .decode(ids, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.id_of.get(token).copied()
    }

    pub fn is_end(&self, id: u32) -> bool {
        id == self.eos || self.end_of_turn.contains(&id)
    }
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, EngineError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| EngineError::Tokenizer(e.to_string()))
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::Array(values) => values.iter().map(|v| v.to_string().ok().cloned()).collect(),
        _ => None,
    }
}

fn byte_level_bpe(
    tokens: &[String],
    merges: Option<&Value>,
    pre: Option<&str>,
) -> Result<Tokenizer, EngineError> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = strings(merges)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.unwrap_or("default") {
        // SmolLM: single digits, then GPT-2's byte-level split.
        "smollm" | "starcoder" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama3" | "llama-bpe" | "qwen2" | "deepseek-r1-qwen" | "deepseek-llm" | "deepseek-v3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        _ => byte_level.into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::default())));
    Ok(tokenizer)
}

/// SentencePiece's BPE (Llama 2, Gemma): the pair whose merged piece scores
/// highest merges first, and characters outside the vocabulary fall back to byte
/// tokens — llama.cpp's algorithm. The merges are derived from the scores as
/// Hugging Face's converter derives them: every split of a piece into two pieces,
/// ranked by the whole piece's score. Only normal pieces merge, so no text can
/// merge into a control token.
fn sentencepiece(
    tokens: &[String],
    types: &[i32],
    scores: Option<&Value>,
    add_space_prefix: Option<bool>,
) -> Result<Tokenizer, EngineError> {
    let error = |e: &dyn std::fmt::Display| EngineError::Tokenizer(e.to_string());
    let scores: Vec<f32> = match scores {
        Some(Value::Array(values)) => values.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        _ => {
            return Err(EngineError::Tokenizer(
                "the GGUF has no tokenizer.ggml.scores".into(),
            ));
        }
    };
    let normal: HashMap<&str, u32> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, kind))| **kind == NORMAL)
        .map(|(i, (t, _))| (t.as_str(), i as u32))
        .collect();
    let mut merges: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (piece, &id) in &normal {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (normal.get(left), normal.get(right)) {
                merges.push((scores[id as usize], l, r, left, right));
            }
        }
    }
    // Highest score first; ties by the pieces' ids, as the converter orders them.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .build()
        .map_err(|e| error(&e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let replace = ReplaceNormalizer::new(" ", "▁").map_err(|e| error(&e))?;
    let normalizer: NormalizerWrapper = if add_space_prefix.unwrap_or(true) {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| error(&e))?;
    let decoder = DecoderSequence::new(vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            tokenizers::normalizers::replace::Replace::new("▁", " ").map_err(|e| error(&e))?,
        ),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ]);
    tokenizer.with_decoder(Some(DecoderWrapper::from(decoder)));
    Ok(tokenizer)
}
