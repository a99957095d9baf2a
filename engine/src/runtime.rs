//! Which code runs a model's forward pass. On the CPU, ragway's own decoder
//! (`decoder/`: llama, qwen2, gemma3); on a GPU, candle's quantised models.

use std::io::{Read, Seek};
use std::sync::{Mutex, MutexGuard};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_gemma3, quantized_llama, quantized_qwen2};

use crate::EngineError;
use crate::decoder::{self, Decoder};

/// Which implementation runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// The decoder on the CPU, candle on a GPU.
    #[default]
    Auto,
    /// candle's models only: what a GPU runs, and the reference the decoder is
    /// tested against (for llama and qwen2; candle's gemma3 gates its feed-forward
    /// with SiLU where Gemma uses GELU).
    Candle,
}

/// Weight types candle has no fast CPU kernel for, re-quantised to Q8_0 at load
/// when candle runs a model on the CPU.
const SLOW_ON_CANDLE_CPU: [GgmlDType; 2] = [GgmlDType::Q4_0, GgmlDType::Q4_1];

/// Longest context a model is given, whatever its file claims: bounds the KV
/// memory one answer can take.
pub const MAX_CONTEXT: usize = 32_768;

pub enum Weights {
    Decoder(Decoder),
    Llama(quantized_llama::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
    /// Not `Clone`: one instance, its cache cleared before each answer.
    Qwen2(Mutex<quantized_qwen2::ModelWeights>),
}

impl Weights {
    pub fn load<R: Read + Seek>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
        runtime: Runtime,
        requantize: bool,
    ) -> Result<Self, EngineError> {
        let load = |e: candle_core::Error| EngineError::Load(e.to_string());
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if runtime == Runtime::Auto && device.is_cpu() && decoder::supports(&architecture) {
            return Ok(Weights::Decoder(decoder::load(
                &content, reader, requantize,
            )?));
        }
        let slow = content
            .tensor_infos
            .values()
            .any(|t| SLOW_ON_CANDLE_CPU.contains(&t.ggml_dtype));
        if requantize && slow && device.is_cpu() {
            let bytes = requantized(&content, reader).map_err(load)?;
            let mut memory = std::io::Cursor::new(bytes);
            let content = gguf_file::Content::read(&mut memory).map_err(load)?;
            return Self::load(content, &mut memory, device, Runtime::Candle, false);
        }
        Ok(match architecture.as_str() {
            "llama" => Weights::Llama(
                quantized_llama::ModelWeights::from_gguf(content, reader, device).map_err(load)?,
            ),
            "qwen2" => Weights::Qwen2(Mutex::new(
                quantized_qwen2::ModelWeights::from_gguf(content, reader, device).map_err(load)?,
            )),
            "gemma3" => Weights::Gemma3(
                quantized_gemma3::ModelWeights::from_gguf(content, reader, device).map_err(load)?,
            ),
            other => {
                return Err(EngineError::Load(format!(
                    "unsupported architecture `{other}` (supported: llama, qwen2, gemma3)"
                )));
            }
        })
    }

    /// The longest sequence this runtime is given: [`MAX_CONTEXT`], or 4096 for
    /// candle's llama, which builds its rotary tables for that many positions
    /// whatever the file says.
    pub fn max_positions(&self) -> usize {
        match self {
            Weights::Llama(_) => 4096,
            _ => MAX_CONTEXT,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Weights::Decoder(_) => "decoder",
            _ => "candle",
        }
    }

    /// A fresh state for one answer of at most `capacity` positions.
    pub fn session(&self, capacity: usize) -> Session<'_> {
        match self {
            Weights::Decoder(d) => Session::Decoder(d, d.cache(capacity)),
            // Clones share the weights; each starts with empty caches.
            Weights::Llama(m) => Session::Llama(m.clone(), 0),
            Weights::Gemma3(m) => Session::Gemma3(m.clone(), 0),
            Weights::Qwen2(m) => {
                // A panic mid-answer leaves nothing a cleared cache does not fix.
                let mut m = m.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                m.clear_kv_cache();
                Session::Qwen2(m, 0)
            }
        }
    }
}

/// One answer's model state: the KV cache and the position reached.
pub enum Session<'a> {
    Decoder(&'a Decoder, decoder::Cache),
    Llama(quantized_llama::ModelWeights, usize),
    Gemma3(quantized_gemma3::ModelWeights, usize),
    Qwen2(MutexGuard<'a, quantized_qwen2::ModelWeights>, usize),
}

/// candle's qwen2 keeps one causal mask per (new tokens, cached tokens) pair it
/// meets, for good. Prompts go in chunks of this size — the last few tokens one by
/// one, which needs no mask — so the masks it keeps are bounded.
const QWEN2_CHUNK: usize = 64;

impl Session<'_> {
    /// Runs `tokens` after those seen so far; the logits that follow the last one.
    pub fn forward(&mut self, tokens: &[u32], device: &Device) -> Result<Vec<f32>, EngineError> {
        let infer = |e: candle_core::Error| EngineError::Inference(e.to_string());
        let logits = match self {
            Session::Decoder(d, cache) => return d.forward(cache, tokens),
            Session::Llama(m, position) => step(tokens, device, position, |x, p| m.forward(x, p)),
            Session::Gemma3(m, position) => step(tokens, device, position, |x, p| m.forward(x, p)),
            Session::Qwen2(m, position) => {
                let whole = tokens.len() / QWEN2_CHUNK * QWEN2_CHUNK;
                let (chunks, rest) = tokens.split_at(whole);
                let pieces = chunks.chunks(QWEN2_CHUNK).chain(rest.chunks(1));
                let mut last = None;
                for piece in pieces {
                    last = Some(step(piece, device, position, |x, p| m.forward(x, p))?);
                }
                last.ok_or_else(|| EngineError::Input("no tokens to run".into()))
            }
        }?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_dtype(candle_core::DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(infer)
    }
}

fn step(
    tokens: &[u32],
    device: &Device,
    position: &mut usize,
    forward: impl FnOnce(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Result<Tensor, EngineError> {
    let infer = |e: candle_core::Error| EngineError::Inference(e.to_string());
    let input = Tensor::new(tokens, device)
        .and_then(|t| t.unsqueeze(0))
        .map_err(infer)?;
    let logits = forward(&input, *position).map_err(infer)?;
    *position += tokens.len();
    Ok(logits)
}

/// The same GGUF, in memory, with slow weight types re-quantised to Q8_0.
fn requantized<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
) -> candle_core::Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(reader, name, &Device::Cpu)?;
        let tensor = if SLOW_ON_CANDLE_CPU.contains(&tensor.dtype()) {
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
