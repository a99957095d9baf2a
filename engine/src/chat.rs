//! A GGUF chat model — llama, qwen2 or gemma3, chosen by the file's
//! `general.architecture` — with its tokenizer and chat template taken from the
//! same file, and the generation loop: sampling, stop sequences, whole characters.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::runtime::{Runtime, Weights};
use crate::template::ChatTemplate;
use crate::text::{StopScanner, Utf8Tokens};
use crate::tokenizer::GgufTokenizer;
use crate::{EngineError, Message};

/// Sampling and limits for one answer.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Applied to the last `repeat_last_n` tokens; 1.0 is off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 299_792_458,
            stop: Vec::new(),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn, or a stop sequence was met.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller stopped listening.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Generated {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub struct ChatModel {
    /// Each answer runs in a fresh [`Session`](crate::runtime::Session).
    weights: Weights,
    pub tokenizer: GgufTokenizer,
    template: ChatTemplate,
    device: Device,
    pub architecture: String,
    /// The longest prompt plus answer, in tokens.
    pub context: usize,
}

impl ChatModel {
    /// Loads a GGUF file on the default runtime (see [`Runtime`]). With
    /// `requantize`, weights of a type without a fast kernel on the CPU become
    /// Q8_0 at load: Q5_0, Q5_1, F16 and F32 on the decoder; Q4_0 and Q4_1 on
    /// candle's models (run on a CPU only when asked for).
    pub fn load(path: &Path, device: &Device, requantize: bool) -> Result<Self, EngineError> {
        Self::load_on(path, device, requantize, Runtime::Auto)
    }

    /// Loads a GGUF file on the given runtime.
    pub fn load_on(
        path: &Path,
        device: &Device,
        requantize: bool,
        runtime: Runtime,
    ) -> Result<Self, EngineError> {
        let load =
            |e: &dyn std::fmt::Display| EngineError::Load(format!("{}: {e}", path.display()));
        let started = std::time::Instant::now();
        let mut file = File::open(path).map_err(|e| load(&e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| load(&e))?;
        let md_text = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_string().ok())
                .cloned()
        };
        let architecture = md_text("general.architecture").unwrap_or_default();
        let trained = content
            .metadata
            .get(&format!("{architecture}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(4096, |n| n as usize);
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let template = ChatTemplate::new(md_text("tokenizer.chat_template"), &architecture)?;
        let weights =
            Weights::load(content, &mut file, device, runtime, requantize).map_err(|e| load(&e))?;
        let context = trained.min(weights.max_positions());
        tracing::info!(
            path = %path.display(), %architecture, context, runtime = weights.name(),
            template = template.source, elapsed = ?started.elapsed(), "chat model loaded"
        );
        if let Some(warning) = base_model_warning(template.source) {
            tracing::warn!(path = %path.display(), "{warning}");
        }
        Ok(ChatModel {
            weights,
            tokenizer,
            template,
            device: device.clone(),
            architecture,
            context,
        })
    }

    /// Why this model may not be fit to chat, when the file suggests so.
    pub fn chat_warning(&self) -> Option<&'static str> {
        base_model_warning(self.template.source)
    }

    /// The prompt for these messages, as token ids.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, EngineError> {
        self.template.encode(messages, &self.tokenizer)
    }

    /// The start of an answer already given, as tokens to put after a prompt
    /// (which ends by opening the assistant's turn) so that generation continues
    /// it. It is plain text: it cannot close the turn or forge another.
    pub fn answer_tokens(&self, answer: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer.encode_text(answer)
    }

    /// The prompt, cut to leave `reserve` tokens of the context for the answer:
    /// retrieved passages go first, then the oldest turns (a question with its
    /// answers, so roles still alternate); system messages and the last message
    /// (the question) are never dropped. Returns the prompt and how many messages
    /// were cut.
    pub fn fitted_prompt(
        &self,
        messages: &[Message],
        reserve: usize,
    ) -> Result<(Vec<u32>, usize), EngineError> {
        let budget = self.context.saturating_sub(reserve.min(self.context / 2));
        let mut kept: Vec<Message> = messages.to_vec();
        loop {
            let prompt = self.prompt(&kept)?;
            if prompt.len() <= budget {
                return Ok((prompt, messages.len() - kept.len()));
            }
            if !drop_least_needed(&mut kept) {
                return Err(EngineError::Input(format!(
                    "the prompt needs {} tokens; the model's context holds {}",
                    prompt.len(),
                    self.context
                )));
            }
        }
    }

    /// A prompt must leave room in the context for at least one more token.
    fn check(&self, prompt: &[u32]) -> Result<(), EngineError> {
        if prompt.is_empty() || prompt.len() >= self.context {
            return Err(EngineError::Input(format!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                self.context
            )));
        }
        Ok(())
    }

    /// The logits for the token after `prompt` (the model's raw scores, before
    /// sampling).
    pub fn next_token_logits(&self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check(prompt)?;
        self.weights
            .session(prompt.len())
            .forward(prompt, &self.device)
    }

    /// Generates an answer to `prompt`, handing each piece of text (whole UTF-8
    /// characters, stop sequences held back) to `emit`, which returns `false` to stop.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated, EngineError> {
        let infer = |e: candle_core::Error| EngineError::Inference(e.to_string());
        self.check(prompt)?;
        let budget = params.max_tokens.min(self.context - prompt.len());
        let mut session = self.weights.session(prompt.len() + budget);
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling(params));
        let mut text = Utf8Tokens::default();
        let mut stops = StopScanner::new(&params.stop);
        let mut history: Vec<u32> = prompt.to_vec();
        let mut input: &[u32] = prompt;
        let mut next;
        let mut generated = 0;
        let finish = loop {
            if generated == budget {
                break Finish::Length;
            }
            let logits = session.forward(input, &self.device)?;
            let vocab = logits.len();
            let mut logits = Tensor::from_vec(logits, vocab, &Device::Cpu).map_err(infer)?;
            if params.repeat_penalty != 1.0 {
                let start = history.len().saturating_sub(params.repeat_last_n);
                logits = candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    params.repeat_penalty,
                    &history[start..],
                )
                .map_err(infer)?;
            }
            next = [sampler.sample(&logits).map_err(infer)?];
            generated += 1;
            if self.tokenizer.is_end(next[0]) {
                break Finish::Stop;
            }
            history.push(next[0]);
            let piece = text.push(next[0], &self.tokenizer)?;
            let (out, stopped) = stops.push(&piece);
            if !out.is_empty() && !emit(&out) {
                break Finish::Cancelled;
            }
            if stopped {
                break Finish::Stop;
            }
            input = &next;
        };
        if finish != Finish::Cancelled {
            let rest = stops.finish(&text.finish(&self.tokenizer)?);
            if !rest.is_empty() {
                emit(&rest);
            }
        }
        Ok(Generated {
            finish,
            prompt_tokens: prompt.len(),
            completion_tokens: generated,
        })
    }
}

/// Drops what a cut prompt misses least: the last passage, else the oldest turn.
/// False when only system messages and the question are left.
fn drop_least_needed(kept: &mut Vec<Message>) -> bool {
    let Some(last) = kept.len().checked_sub(1) else {
        return false;
    };
    if let Some(i) = kept[..last].iter().rposition(|m| m.passage) {
        kept.remove(i);
        return true;
    }
    let Some(start) = kept[..last].iter().position(|m| m.role != "system") else {
        return false;
    };
    let mut end = start + 1;
    while end < last && !matches!(kept[end].role.as_str(), "user" | "system") {
        end += 1;
    }
    kept.drain(start..end);
    true
}

fn sampling(params: &GenerateParams) -> Sampling {
    let temperature = params.temperature;
    if temperature <= 0.0 {
        return Sampling::ArgMax;
    }
    match (params.top_k, params.top_p) {
        (None, None) => Sampling::All { temperature },
        (Some(k), None) => Sampling::TopK { k, temperature },
        (None, Some(p)) => Sampling::TopP { p, temperature },
        (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
    }
}

/// Instruction-tuned GGUF files carry the chat template they were tuned on; a file
/// without one is almost always a base (pre-trained) model, which continues text
/// instead of answering (asked a question, it tends to ask more). The fallback
/// template lets it run, but the operator should know.
fn base_model_warning(template_source: &str) -> Option<&'static str> {
    (template_source != "gguf").then_some(
        "the GGUF has no chat template: it is most likely a base model, not an instruction-tuned one, and will continue text rather than answer; a fallback template is used",
    )
}
