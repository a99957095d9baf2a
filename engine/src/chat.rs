//! A GGUF chat model on candle: quantized llama (SmolLM2, Llama, Mistral-style) or
//! gemma3, chosen by the
//! file's `general.architecture`, with its tokenizer and chat template taken from the
//! same file.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_gemma3, quantized_llama};

use crate::template::ChatTemplate;
use crate::text::{StopScanner, Utf8Tokens};
use crate::tokenizer::GgufTokenizer;
use crate::{EngineError, Message};

/// candle's RoPE tables stop at 4096 positions whatever the file says.
const MAX_POSITIONS: usize = 4096;

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

#[derive(Clone)]
enum Weights {
    Llama(quantized_llama::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
}

impl Weights {
    fn forward(&mut self, input: &Tensor, position: usize) -> candle_core::Result<Tensor> {
        match self {
            Weights::Llama(m) => m.forward(input, position),
            Weights::Gemma3(m) => m.forward(input, position),
        }
    }
}

pub struct ChatModel {
    /// Never run directly: each answer starts from a clone (shared weights, fresh
    /// caches), since the models' attention-mask caches grow with every prompt.
    weights: Weights,
    pub tokenizer: GgufTokenizer,
    template: ChatTemplate,
    device: Device,
    pub architecture: String,
    /// The longest prompt plus answer, in tokens.
    pub context: usize,
}

/// Weight types candle has no fast CPU kernel for, re-quantised to Q8_0 at load.
const SLOW_ON_CPU: [GgmlDType; 2] = [GgmlDType::Q4_0, GgmlDType::Q4_1];

impl ChatModel {
    /// Loads a GGUF file. With `requantize`, weights of a type candle runs slowly on
    /// the CPU (Q4_0, Q4_1) are converted to Q8_0 first.
    pub fn load(path: &Path, device: &Device, requantize: bool) -> Result<Self, EngineError> {
        let load = |e: candle_core::Error| EngineError::Load(format!("{}: {e}", path.display()));
        let mut file =
            File::open(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(load)?;
        let slow = content
            .tensor_infos
            .values()
            .any(|t| SLOW_ON_CPU.contains(&t.ggml_dtype));
        if requantize && slow && device.is_cpu() {
            let started = std::time::Instant::now();
            let bytes = requantized(&content, &mut file).map_err(load)?;
            tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "weights re-quantised to Q8_0");
            let mut memory = std::io::Cursor::new(bytes);
            let content = gguf_file::Content::read(&mut memory).map_err(load)?;
            return Self::from_content(path, content, &mut memory, device);
        }
        Self::from_content(path, content, &mut file, device)
    }

    fn from_content<R: std::io::Read + std::io::Seek>(
        path: &Path,
        content: gguf_file::Content,
        file: &mut R,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let load = |e: candle_core::Error| EngineError::Load(format!("{}: {e}", path.display()));
        let md_text = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_string().ok())
                .cloned()
        };
        let architecture = md_text("general.architecture").unwrap_or_default();
        let context = content
            .metadata
            .get(&format!("{architecture}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_POSITIONS, |n| (n as usize).min(MAX_POSITIONS));
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let template = ChatTemplate::new(md_text("tokenizer.chat_template"), &architecture)?;
        let weights = match architecture.as_str() {
            "llama" => Weights::Llama(
                quantized_llama::ModelWeights::from_gguf(content, file, device).map_err(load)?,
            ),
            "gemma3" => Weights::Gemma3(
                quantized_gemma3::ModelWeights::from_gguf(content, file, device).map_err(load)?,
            ),
            other => {
                return Err(EngineError::Load(format!(
                    "unsupported architecture `{other}` (supported: llama, gemma3)"
                )));
            }
        };
        tracing::info!(path = %path.display(), %architecture, context, template = template.source, "chat model loaded");
        Ok(ChatModel {
            weights,
            tokenizer,
            template,
            device: device.clone(),
            architecture,
            context,
        })
    }

    /// The prompt for these messages, as token ids.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, EngineError> {
        self.template.encode(messages, &self.tokenizer)
    }

    /// The prompt, cut to leave `reserve` tokens of the context for the answer:
    /// the oldest turns go first; system messages and the last message (the
    /// question) are never dropped. Returns the prompt and how many turns were cut.
    pub fn fitted_prompt(
        &self,
        messages: &[Message],
        reserve: usize,
    ) -> Result<(Vec<u32>, usize), EngineError> {
        let budget = self.context.saturating_sub(reserve.min(self.context / 2));
        let mut kept: Vec<Message> = messages.to_vec();
        let mut dropped = 0;
        loop {
            let prompt = self.prompt(&kept)?;
            if prompt.len() <= budget {
                return Ok((prompt, dropped));
            }
            let last = kept.len().saturating_sub(1);
            let Some(oldest) = kept
                .iter()
                .enumerate()
                .position(|(i, m)| i < last && m.role != "system")
            else {
                return Err(EngineError::Input(format!(
                    "the prompt needs {} tokens; the model's context holds {}",
                    prompt.len(),
                    self.context
                )));
            };
            kept.remove(oldest);
            dropped += 1;
        }
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
        if prompt.is_empty() || prompt.len() >= self.context {
            return Err(EngineError::Input(format!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                self.context
            )));
        }
        let mut model = self.weights.clone();
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling(params));
        let budget = params.max_tokens.min(self.context - prompt.len());
        let mut text = Utf8Tokens::default();
        let mut stops = StopScanner::new(&params.stop);
        let mut history: Vec<u32> = prompt.to_vec();
        let mut input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(infer)?;
        let mut position = 0;
        let mut generated = 0;
        let finish = loop {
            if generated == budget {
                break Finish::Length;
            }
            let logits = model.forward(&input, position).map_err(infer)?;
            let logits = logits.squeeze(0).map_err(infer)?;
            let logits = if params.repeat_penalty == 1.0 {
                logits
            } else {
                let start = history.len().saturating_sub(params.repeat_last_n);
                candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    params.repeat_penalty,
                    &history[start..],
                )
                .map_err(infer)?
            };
            let next = sampler.sample(&logits).map_err(infer)?;
            position += input.dim(1).map_err(infer)?;
            generated += 1;
            if self.tokenizer.is_end(next) {
                break Finish::Stop;
            }
            history.push(next);
            let piece = text.push(next, &self.tokenizer)?;
            let (out, stopped) = stops.push(&piece);
            if !out.is_empty() && !emit(&out) {
                break Finish::Cancelled;
            }
            if stopped {
                break Finish::Stop;
            }
            input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(infer)?;
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

/// The same GGUF, in memory, with slow weight types re-quantised to Q8_0.
fn requantized(content: &gguf_file::Content, file: &mut File) -> candle_core::Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(file, name, &Device::Cpu)?;
        let tensor = if SLOW_ON_CPU.contains(&tensor.dtype()) {
            QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
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
